"""MomentumGPT: registration with the Auto classes happens on import (fla-style, `exist_ok=True`)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_momentum_gpt import MomentumGPTConfig
from .modeling_momentum_gpt import (
    MomentumGPTForCausalLM,
    MomentumGPTForSequenceClassification,
    MomentumGPTModel,
    MomentumGPTPreTrainedModel,
    momentum_scan,
)

AutoConfig.register(MomentumGPTConfig.model_type, MomentumGPTConfig, exist_ok=True)
AutoModel.register(MomentumGPTConfig, MomentumGPTModel, exist_ok=True)
AutoModelForCausalLM.register(MomentumGPTConfig, MomentumGPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    MomentumGPTConfig, MomentumGPTForSequenceClassification, exist_ok=True
)

# With an `_auto_class`, save_pretrained copies the configuration/modeling files next to the weights, so the
# checkpoint also loads with `trust_remote_code=True` where the plugin is not installed.
MomentumGPTConfig.register_for_auto_class("AutoConfig")
MomentumGPTModel.register_for_auto_class("AutoModel")
MomentumGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MomentumGPTForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MomentumGPTConfig",
    "MomentumGPTForCausalLM",
    "MomentumGPTForSequenceClassification",
    "MomentumGPTModel",
    "MomentumGPTPreTrainedModel",
    "momentum_scan",
]
