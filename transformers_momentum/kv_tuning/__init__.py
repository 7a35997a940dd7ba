"""K/V-only finetuning as a peft method: `get_peft_model(model, KVTuningConfig())` trains only W_K and W_V.

Importing this package registers the method with peft (`PeftType.KV_TUNING`), so `PeftModel.from_pretrained` and
transformers' `model.load_adapter` find it in any process that imported `transformers_momentum`.
"""

import re

import torch
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method
from torch import nn

from .config import KVTuningConfig
from .layer import KVTuningLayer
from .model import KVTuningModel, kv_targets
from .peft_type import KV_TUNING

# Idempotent: a second import (or a reload) must not register twice, which peft rejects.
if KV_TUNING not in PEFT_TYPE_TO_CONFIG_MAPPING:
    register_peft_method(
        name="kv_tuning", config_cls=KVTuningConfig, model_cls=KVTuningModel, prefix="kv_tuning_"
    )

_LAYER_INDEX = re.compile(r"\.(\d+)\.")  # the first numbered segment: the block index


def _kv_layers(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, KVTuningLayer):
            match = _LAYER_INDEX.search(name)
            yield (int(match.group(1)) if match else -1), module


@torch.no_grad()
def reset_kv_deltas(model: nn.Module) -> None:
    """Zero every K/V delta in place (the model becomes the base model again, adapters still attached)."""
    for _, layer in _kv_layers(model):
        for parameters in (layer.kv_tuning_weight, layer.kv_tuning_bias):
            for parameter in parameters.values():
                parameter.zero_()


def kv_deltas(model: nn.Module, adapter_name: str | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """Per block index: {"k_weight", "k_bias", "v_weight", "v_bias"} deltas (present ones), weights [rows, in].

    Multi-head latent attention adds "k_rope_weight" (the rotary-key rows of `kv_a_proj_with_mqa`, whose input is
    the hidden state rather than the latent the other K/V rows read)."""
    result: dict[int, dict[str, torch.Tensor]] = {}
    for index, layer in _kv_layers(model):
        adapter = adapter_name or layer.active_adapters[0]
        if adapter in layer.kv_tuning_weight:
            result.setdefault(index, {}).update(layer.role_deltas(adapter))
    return result


__all__ = [
    "KV_TUNING",
    "KVTuningConfig",
    "KVTuningLayer",
    "KVTuningModel",
    "kv_deltas",
    "reset_kv_deltas",
    "kv_targets",
]
