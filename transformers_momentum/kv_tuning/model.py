"""KVTuningModel: find every attention's K/V projections (architecture table, then detection) and wrap them."""

import re

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..architectures import KVLayout, _get, _unwrap, fused_kv_rows, get_architecture
from .config import KVTuningConfig
from .layer import KVTuningLayer


def resolve_kv_layout(config: KVTuningConfig, model: nn.Module) -> tuple[KVLayout, list[str]]:
    """The K/V layout to use and the full names of the projections to wrap (one or two per selected layer)."""
    model = _unwrap(model)
    spec = get_architecture(model) if config.key_module is None and config.fused_module is None else None
    if config.fused_module is not None:
        layout = KVLayout(fused=config.fused_module, fused_layout=config.fused_layout)
    elif config.key_module is not None:
        layout = KVLayout(key=config.key_module, value=config.value_module)
    else:
        layout = spec.kv
    if config.fused_module is None and layout.fused is None:
        names = {"kv": (layout.key, layout.value), "k": (layout.key,), "v": (layout.value,)}[config.targets]
    else:
        names = (layout.fused,)

    selected = set(config.layers_to_transform) if config.layers_to_transform is not None else None
    targets: list[str] = []
    if spec is not None:
        blocks = _get(model, spec.layers)
        for index, block in enumerate(blocks):
            if selected is not None and index not in selected:
                continue
            attention_path = f"{spec.layers}.{index}.{spec.attention}"
            for name in names:
                if not isinstance(_get(block, f"{spec.attention}.{name}"), nn.Module):
                    raise ValueError(
                        f"{attention_path} has no module {name!r}; the architecture table is out of date."
                    )
                targets.append(f"{attention_path}.{name}")
    else:  # explicit names: every module whose own name matches, in module order
        pattern = re.compile(r".*\.(\d+)\..*")
        for full_name, _ in model.named_modules():
            if full_name.rsplit(".", 1)[-1] not in names:
                continue
            match = pattern.match(full_name)
            if selected is not None and (match is None or int(match.group(1)) not in selected):
                continue
            targets.append(full_name)
    if not targets:
        raise ValueError(
            f"None of the modules {list(names)} exist in {type(model).__name__}"
            + (f" for layers {sorted(selected)}" if selected is not None else "")
            + ". Check KVTuningConfig(key_module=..., value_module=...) / (fused_module=..., fused_layout=...) "
            "against `print(model)`."
        )
    return layout, targets


class KVTuningModel(BaseTuner):
    """peft tuner for K/V-only finetuning (see `KVTuningConfig`)."""

    prefix: str = "kv_tuning_"
    tuner_layer_cls = KVTuningLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: KVTuningConfig, model_config: dict) -> KVTuningConfig:
        return peft_config  # resolved against the model itself in _prepare_model

    def _prepare_model(self, peft_config: KVTuningConfig, model: nn.Module) -> None:
        layout, targets = resolve_kv_layout(peft_config, model)
        # Record what was resolved: adapter_config.json then says exactly which modules and layout were trained.
        if layout.fused is not None:
            peft_config.fused_module, peft_config.fused_layout = layout.fused, layout.fused_layout
        else:
            peft_config.key_module, peft_config.value_module = layout.key, layout.value
        peft_config.target_modules = targets
        self._kv_layout = layout

    def _create_and_replace(
        self,
        peft_config: KVTuningConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        roles = self._roles(peft_config, target_name)
        if isinstance(target, KVTuningLayer):
            target.update_layer(adapter_name, roles, peft_config.train_bias)
            return
        new_module = KVTuningLayer(target, adapter_name, roles, peft_config.train_bias)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _roles(self, config: KVTuningConfig, target_name: str) -> list[tuple[str, torch.Tensor | None]]:
        layout = self._kv_layout
        if layout.fused is None:
            return [("k" if target_name == layout.key else "v", None)]
        k_rows, v_rows = fused_kv_rows(layout.fused_layout, _unwrap(self.model).config)
        return [(role, rows) for role, rows in (("k", k_rows), ("v", v_rows)) if role in config.targets]

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        setattr(parent, child_name, new_module)
        # keep the deltas on the base weight's device
        weight = child.weight
        for name, module in new_module.named_modules():
            if self.prefix in name or name == "":
                for parameter in module.parameters(recurse=False):
                    if parameter.device != weight.device:
                        parameter.data = parameter.data.to(weight.device)

    def _unload_and_optionally_merge(
        self, merge=True, progressbar=False, safe_merge=False, adapter_names=None
    ):
        for name, module in list(self.model.named_modules()):
            if isinstance(module, KVTuningLayer):
                if merge:
                    module.merge(safe_merge=safe_merge, adapter_names=adapter_names)
                parent_name, _, child_name = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child_name, module.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model
