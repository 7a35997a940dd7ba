"""KVTuningModel: peft's BaseTuner, targeting the key/value projections the architecture table names.

`BaseTuner` does the rest as for any peft method: matching `target_modules` (with peft's semantics), replacing
modules (device placement, the meta device), freezing the base model, merging and unloading (offloaded layers,
`_check_merge_allowed`). This class only says which modules are key/value projections and which of their output
rows are keys and values.
"""

import torch
from peft.tuners.tuners_utils import BaseTuner, _ExcludedModule, check_target_module_exists
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..architectures import ARCHITECTURES, KVLayout, get_architecture, kv_projections, refuse_encoder_only
from .config import KVTuningConfig
from .layer import KVTuningLayer


def _explicit_layout(config: KVTuningConfig) -> KVLayout | None:
    if config.fused_module is not None:
        return KVLayout.fused_projection(config.fused_module, config.fused_layout)
    if config.key_module is not None:
        return KVLayout.separate(config.key_module, config.value_module)
    return None


def kv_targets(model: nn.Module, config: KVTuningConfig) -> dict[str, dict[str, torch.Tensor | None]]:
    """Full module name -> {role: output rows} of the key/value projections `config` adapts, before peft's own
    `target_modules` / `exclude_modules` / `layers_to_transform` selection."""
    projections = kv_projections(model, _explicit_layout(config))
    selected = {}
    for name, roles in projections.items():
        roles = {role: rows for role, rows in roles.items() if role.split("_")[0] in config.targets}
        if roles:
            selected[name] = roles
    return selected


class KVTuningModel(BaseTuner):
    """peft tuner for K/V-only finetuning (see `KVTuningConfig`)."""

    prefix: str = "kv_tuning_"
    tuner_layer_cls = KVTuningLayer
    # peft's per-model_type default targets, from the architecture table; models the table does not hold are
    # detected from the model itself in `_prepare_model`.
    target_module_mapping: dict[str, list[str]] = {
        model_type: list(spec.kv.module_names) for model_type, spec in ARCHITECTURES.items()
    }

    def _prepare_adapter_config(self, peft_config: KVTuningConfig, model_config: dict) -> KVTuningConfig:
        if (
            peft_config.target_modules is None
            and model_config.get("model_type") in self.target_module_mapping
        ):
            return super()._prepare_adapter_config(peft_config, model_config)
        return peft_config  # resolved against the model itself in _prepare_model

    def _prepare_model(self, peft_config: KVTuningConfig, model: nn.Module) -> None:
        refuse_encoder_only(model)  # before peft's own AttributeError about prepare_inputs_for_generation
        if _explicit_layout(peft_config) is None:
            get_architecture(
                model
            )  # a one-line error for models without softmax attention, before peft's own
        self._kv_targets = kv_targets(model, peft_config)
        if peft_config.target_modules is None:
            peft_config.target_modules = {name.rsplit(".", 1)[-1] for name in self._kv_targets}
        matched = [n for n in self._kv_targets if self._matches(peft_config, n)]
        if not matched:
            names = sorted({name.rsplit(".", 1)[-1] for name in self._kv_targets})
            raise ValueError(
                f"target_modules={peft_config.target_modules!r} selects none of the key/value projections of "
                f"{type(model).__name__}'s attention layers (named {names or 'nothing: none found'}"
                + (f", layers {peft_config.layers_to_transform}" if peft_config.layers_to_transform else "")
                + ")."
            )
        # peft's idiom: the config says once whether the projections store their weight transposed (Conv1D).
        peft_config.fan_in_fan_out = isinstance(model.get_submodule(matched[0]), Conv1D)

    @staticmethod
    def _matches(peft_config: KVTuningConfig, key: str) -> bool:
        result = check_target_module_exists(peft_config, key)
        return bool(result) and not isinstance(result, _ExcludedModule)

    def _check_target_module_exists(self, peft_config: KVTuningConfig, key: str):
        # peft's matching, restricted to key/value projections of attention layers
        result = check_target_module_exists(peft_config, key)
        if not result or isinstance(result, _ExcludedModule):
            return result
        return key in self._kv_targets

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
        roles = self._kv_targets[current_key]
        if isinstance(target, KVTuningLayer):
            target.update_layer(adapter_name, roles, peft_config.train_bias)
            return
        new_module = KVTuningLayer(
            target, adapter_name, roles, peft_config.train_bias, fan_in_fan_out=peft_config.fan_in_fan_out
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an additional adapter is not trainable until activated
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        super()._replace_module(parent, child_name, new_module, child)
        # peft moves the new deltas to the base weight's device, which is meta for a projection accelerate offloads
        # (device_map with "cpu"/"disk" entries): bring them back to where that weight executes.
        if isinstance(new_module, KVTuningLayer):
            new_module.place_on_execution_device()
