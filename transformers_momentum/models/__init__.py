"""Model architectures shipped by the plugin (each registers itself with the Auto classes on import)."""

from . import icl_regression
from .momentum_gpt import (
    MomentumGPTConfig,
    MomentumGPTForCausalLM,
    MomentumGPTForSequenceClassification,
    MomentumGPTModel,
    MomentumGPTPreTrainedModel,
)

__all__ = [
    "icl_regression",
    "MomentumGPTConfig",
    "MomentumGPTForCausalLM",
    "MomentumGPTForSequenceClassification",
    "MomentumGPTModel",
    "MomentumGPTPreTrainedModel",
]
