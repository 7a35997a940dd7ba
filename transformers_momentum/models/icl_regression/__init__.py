"""In-context regression models (Garg et al. 2022; von Oswald et al. 2023), registered with the Auto classes on
import (fla-style, `exist_ok=True`)."""

from transformers import AutoConfig, AutoModel

from .configuration_icl_regression import LinearSelfAttentionConfig, MomentumGPTICLRegressionConfig
from .modeling_icl_regression import (
    InContextRegressionOutput,
    LinearSelfAttentionForInContextRegression,
    MomentumGPTForInContextRegression,
    interleave_prompt,
)

AutoConfig.register(MomentumGPTICLRegressionConfig.model_type, MomentumGPTICLRegressionConfig, exist_ok=True)
AutoModel.register(MomentumGPTICLRegressionConfig, MomentumGPTForInContextRegression, exist_ok=True)
AutoConfig.register(LinearSelfAttentionConfig.model_type, LinearSelfAttentionConfig, exist_ok=True)
AutoModel.register(LinearSelfAttentionConfig, LinearSelfAttentionForInContextRegression, exist_ok=True)

__all__ = [
    "InContextRegressionOutput",
    "LinearSelfAttentionConfig",
    "LinearSelfAttentionForInContextRegression",
    "MomentumGPTForInContextRegression",
    "MomentumGPTICLRegressionConfig",
    "interleave_prompt",
]
