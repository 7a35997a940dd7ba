"""Configurations of the in-context regression models (a MomentumGPT with linear read-in/out, and von Oswald's LSA).

Like the modeling file beside it, this file also runs as Hub remote code: `save_pretrained` copies it, the modeling
file and MomentumGPT's two files next to the weights, and the import below then finds MomentumGPT's configuration as
a sibling.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

try:  # inside the plugin
    from transformers_momentum.models.momentum_gpt.configuration_momentum_gpt import MomentumGPTConfig
except ImportError:  # as remote code, without the plugin: MomentumGPT's file was saved beside this one
    from .configuration_momentum_gpt import MomentumGPTConfig

_REGRESSION_AUTO_MAP = {
    "AutoConfig": "configuration_icl_regression.MomentumGPTICLRegressionConfig",
    "AutoModel": "modeling_icl_regression.MomentumGPTForInContextRegression",
}
_LSA_AUTO_MAP = {
    "AutoConfig": "configuration_icl_regression.LinearSelfAttentionConfig",
    "AutoModel": "modeling_icl_regression.LinearSelfAttentionForInContextRegression",
}


@strict
class MomentumGPTICLRegressionConfig(MomentumGPTConfig):
    r"""
    Configuration of a [`MomentumGPTForInContextRegression`]: a [`MomentumGPTConfig`] backbone (every field of it
    applies) fed through `inputs_embeds` by a linear read-in of `n_dims + 1` features, with a linear read-out to one
    number (Garg et al., 2022). The prompt `(x_1, y_1, ..., x_k, y_k, x_q)` enters as alternating x- and y-tokens:
    an x-token is `(x, 0)`, a y-token `(0, ..., 0, y)`.

    Args:
        n_dims (`int`): Dimension d of the regression inputs x.
        max_points (`int`): Most (x, y) pairs in a prompt, the query included; `max_position_embeddings` defaults to
            `2 * max_points`.
    """

    model_type = "momentum_gpt_icl_regression"
    # MomentumGPTConfig registers itself for remote code; this subclass writes its own remote code (see the
    # modeling file's `save_pretrained`), so transformers must not copy the parent's files under this name.
    _auto_class = None

    n_dims: int = 5
    max_points: int = 21
    vocab_size: int = 1  # no tokens: the backbone's embedding table is unused
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    max_position_embeddings: int | None = None  # type: ignore[assignment]
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        if self.max_position_embeddings is None:
            self.max_position_embeddings = 2 * self.max_points
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(_REGRESSION_AUTO_MAP)
        super().__post_init__(**kwargs)

    def validate_prompt_size(self):
        if self.n_dims < 1 or self.max_points < 1:
            raise ValueError(
                f"n_dims and max_points must be positive; got {self.n_dims} and {self.max_points}."
            )
        if self.max_position_embeddings < 2 * self.max_points:
            raise ValueError(
                f"max_position_embeddings ({self.max_position_embeddings}) must hold 2 * max_points "
                f"({2 * self.max_points}) tokens: every (x, y) pair takes two."
            )


@strict
class LinearSelfAttentionConfig(PreTrainedConfig):
    r"""
    Configuration of a [`LinearSelfAttentionForInContextRegression`]: von Oswald et al.'s (2023) stack of linear
    self-attention layers on tokens `e_i = (x_i, y_i)` with the query `(x_q, 0)`. Each head merges its key and query
    projections into `W_KQ` and its value and output projections into `W_PV`, both `(n_dims+1) x (n_dims+1)`.

    Args:
        n_dims (`int`): Dimension d of the regression inputs x.
        num_hidden_layers (`int`): Number of LSA layers (each is one residual update of every token).
        num_attention_heads (`int`): Heads per layer; their updates add up.
        initializer_range (`float`): Std of the normal initialiser of `W_KQ` and `W_PV`.
    """

    model_type = "icl_linear_self_attention"

    n_dims: int = 10
    num_hidden_layers: int = 1
    num_attention_heads: int = 1
    initializer_range: float = 0.002

    def __post_init__(self, **kwargs):
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(_LSA_AUTO_MAP)
        super().__post_init__(**kwargs)

    def validate_sizes(self):
        if min(self.n_dims, self.num_hidden_layers, self.num_attention_heads) < 1:
            raise ValueError(
                "n_dims, num_hidden_layers and num_attention_heads must be positive; got "
                f"{self.n_dims}, {self.num_hidden_layers}, {self.num_attention_heads}."
            )


__all__ = ["LinearSelfAttentionConfig", "MomentumGPTICLRegressionConfig"]
