"""The attention geometry of one model as the analyzer uses it, read from `transformers_momentum.architectures` once.

`analysis.engine.Engine` builds one `AttentionGeometry` per model and hands it to the probe, the K/V input moments,
the candidate scorer and the finetuning loop, so none of them walks the architecture table again. Each of them still
accepts ``geometry=None`` and reads it itself, for use on its own.

`input_device` answers "where must the input ids go", which is not the device of the first parameter: with
accelerate's offloading (``device_map`` with "cpu"/"disk" entries) an offloaded weight sits on the meta device and
its module's `_hf_hook` names the device it is loaded onto for each forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import (
    ArchitectureSpec,
    attention_geometry,
    attention_modules,
    decoder_layers,
    final_norm,
    get_architecture,
    max_positions,
    query_projection,
    rotates_queries,
    text_config,
    unwrap_peft,
)
from ..kv_tuning.layer import hook_execution_device
from .errors import AnalysisInputError


def execution_device(module: nn.Module) -> torch.device | None:
    """The device `module`'s own tensors are used on: its accelerate hook's execution device when it has one (an
    offloaded module keeps its weights on meta between forwards), else the device of its first real tensor."""
    device = hook_execution_device(module)
    if device is not None:
        return device
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if tensor.device.type != "meta":
            return tensor.device
    return None


def input_device(model: nn.Module) -> torch.device:
    """Where a forward's input ids go: the execution device of the input embeddings (accelerate's hooks move them
    on from there), falling back to the first real parameter and then the CPU."""
    base = unwrap_peft(model)
    try:
        embeddings = base.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # models that do not say where their embeddings are
        embeddings = None
    device = execution_device(embeddings) if isinstance(embeddings, nn.Module) else None
    if device is not None:
        return device
    return next((p.device for p in base.parameters() if p.device.type != "meta"), torch.device("cpu"))


@dataclass(frozen=True)
class AttentionGeometry:
    """Where a model's softmax attention is and how it is shaped, as the analyzer's parts need it.

    spec: the architecture table entry (or detection) of the model.
    modules: the softmax-attention modules, in layer order.
    query_projections: per module, the query projection (before any rotary embedding) and attention's scaling of
        it; None entries where queries come out of a fused projection.
    heads / kv_heads / head_dim: of the first attention layer.
    rotates_queries: queries are rotated by position after the query projection (RoPE and its variants).
    plain_scores: scores are (query projection · scaling)(key projection)ᵀ + mask (exact rows off the interface).
    max_positions: the longest sequence the position table holds (None when the config does not say).
    blocks / final_norm: the decoder blocks and the norm before the LM head (layer-causal GD's logit lens).
    input_device: where input ids go (see `input_device`).
    """

    spec: ArchitectureSpec
    modules: tuple[nn.Module, ...]
    query_projections: tuple[tuple[nn.Module, float] | None, ...]
    heads: int
    kv_heads: int
    head_dim: int
    rotates_queries: bool
    plain_scores: bool
    max_positions: int | None
    blocks: nn.ModuleList
    final_norm: nn.Module | None
    input_device: torch.device

    @classmethod
    def of(cls, model: nn.Module) -> AttentionGeometry:
        """The geometry of `model` (a transformers causal LM or a peft model around one); a one-line
        `AnalysisInputError` when it has no softmax attention the analyzer can read."""
        base = unwrap_peft(model)
        try:
            spec = get_architecture(base)
            modules = tuple(attention_modules(base))
            blocks = decoder_layers(base)
        except (ValueError, AttributeError, TypeError) as error:
            raise AnalysisInputError(
                f"No attention modules found in {type(base).__name__}: {error}"
            ) from None
        if not modules or any(m is None for m in modules):
            raise AnalysisInputError(f"No attention modules found in {type(base).__name__}.")
        config = text_config(base)
        heads, kv_heads, head_dim = attention_geometry(modules[0], config)
        return cls(
            spec=spec,
            modules=modules,
            query_projections=tuple(query_projection(m, base.config) for m in modules),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            rotates_queries=rotates_queries(base),
            plain_scores=spec.plain_scores,
            max_positions=max_positions(base),
            blocks=blocks,
            final_norm=final_norm(base),
            input_device=input_device(base),
        )

    @property
    def num_layers(self) -> int:
        return len(self.modules)

    @property
    def separate_kv(self) -> bool:
        """Keys and values come from two projections of the same input (the K/V input moments need that)."""
        return self.spec.kv.is_separate

    def key_modules(self) -> list[nn.Module]:
        """Each attention module's key projection as it is now (a peft wrapper once the model is wrapped)."""
        return [getattr(m, self.spec.kv.key) for m in self.modules]

    def value_modules(self) -> list[nn.Module]:
        return [getattr(m, self.spec.kv.value) for m in self.modules]


__all__ = ["AttentionGeometry", "execution_device", "input_device"]
