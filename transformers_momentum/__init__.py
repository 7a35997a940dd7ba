"""transformers-momentum: momentum attention, K/V-only finetuning and an ICL-vs-finetuning analyzer.

Importing the package registers MomentumGPT with the Auto classes and the K/V-tuning method with peft.
"""

from . import architectures, compat
from .kv_tuning import KVTuningConfig, KVTuningModel, kv_deltas, reset_kv_deltas
from .models.momentum_gpt import (
    MomentumGPTConfig,
    MomentumGPTForCausalLM,
    MomentumGPTForSequenceClassification,
    MomentumGPTModel,
    MomentumGPTPreTrainedModel,
    momentum_scan,
)
from .models.momentum_gpt.convert import gpt2_to_momentum_gpt, momentum_gpt_to_gpt2
from .models.momentum_gpt.retrofit import apply_momentum_attention, momentum_eta_of, remove_momentum_attention

__version__ = "0.1.0"

# Before any model loads: transformers >= 5.25 needs `kernels` for its default hub kernels (see `compat`).
compat.switch_off_unavailable_hub_kernels()
if (_notice := compat.untested_release_notice()) is not None:
    compat.logger.warning(_notice)

__all__ = [
    "KVTuningConfig",
    "KVTuningModel",
    "architectures",
    "kv_deltas",
    "reset_kv_deltas",
    "MomentumGPTConfig",
    "MomentumGPTForCausalLM",
    "MomentumGPTForSequenceClassification",
    "MomentumGPTModel",
    "MomentumGPTPreTrainedModel",
    "apply_momentum_attention",
    "gpt2_to_momentum_gpt",
    "momentum_eta_of",
    "momentum_gpt_to_gpt2",
    "momentum_scan",
    "remove_momentum_attention",
]
