"""Model architectures shipped by the plugin (each registers itself with the Auto classes on import)."""

from .momentum_gpt import (
    MomentumGPTConfig,
    MomentumGPTForCausalLM,
    MomentumGPTForSequenceClassification,
    MomentumGPTModel,
    MomentumGPTPreTrainedModel,
)

__all__ = [
    "MomentumGPTConfig",
    "MomentumGPTForCausalLM",
    "MomentumGPTForSequenceClassification",
    "MomentumGPTModel",
    "MomentumGPTPreTrainedModel",
]
