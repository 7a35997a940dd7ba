"""MomentumGPT configuration."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

_AUTO_MAP = {
    "AutoConfig": "configuration_momentum_gpt.MomentumGPTConfig",
    "AutoModel": "modeling_momentum_gpt.MomentumGPTModel",
    "AutoModelForCausalLM": "modeling_momentum_gpt.MomentumGPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_momentum_gpt.MomentumGPTForSequenceClassification",
}


@strict
class MomentumGPTConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MomentumGPTModel`]: a GPT-2-style pre-LayerNorm decoder (learned absolute positions, GELU
    MLP, biases, tied embeddings) whose attention adds momentum on the value vectors (Dai et al., 2023, §5):

        out_t = softmax-attention_t + sum_{i<t} eta^(t-i) v_i          (per head, before the output projection)

    Args:
        vocab_size (`int`): Size of the vocabulary.
        hidden_size (`int`): Width of the residual stream.
        num_hidden_layers (`int`): Number of decoder blocks.
        num_attention_heads (`int`): Number of attention heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*): Width of the MLP; `None` means `4 * hidden_size`.
        max_position_embeddings (`int`): Size of the learned position table (the longest sequence).
        hidden_act (`str`): MLP activation. The default `"gelu_pytorch_tanh"` is GPT-2's tanh-approximated GELU
            (`"gelu_new"`) computed by one fused PyTorch kernel: the same function within float rounding, and a few
            percent of a train step faster than `"gelu_new"`'s chain of elementwise ops.
        embd_pdrop / resid_pdrop / attn_pdrop (`float`): Dropout on embeddings, residual branches, attention probs.
        layer_norm_epsilon (`float`): LayerNorm epsilon.
        initializer_range (`float`): Std of the normal initialiser.
        momentum_eta (`float`): Momentum coefficient eta in [0, 1). `0.0` disables momentum (the model is then
            exactly a GPT-2). With `learnable_eta=True` this is the initial value of every head's eta.
        learnable_eta (`bool`): Learn one eta per head and layer (parameterised as `sigmoid(logit)`, so it stays in
            (0, 1)). Requires `momentum_eta > 0` as its starting point.
        momentum_chunk_size (`int`): Chunk length of the momentum scan. It trades the intra-chunk matmul
            (`O(T * chunk * d)`) against the number of inter-chunk scan steps; 32 measured fastest on CPU.
        use_cache (`bool`): Return the cache (keys, values and the momentum state) for fast decoding.
    """

    model_type = "momentum_gpt"
    keys_to_ignore_at_inference = ["past_key_values"]
    # GPT-2 names, so that GPT-2-minded tooling and hand-written configs work as well.
    attribute_map = {
        "n_embd": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
        "n_inner": "intermediate_size",
    }

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu_pytorch_tanh"
    embd_pdrop: float | int = 0.0
    resid_pdrop: float | int = 0.0
    attn_pdrop: float | int = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    momentum_eta: float | int = 0.5
    learnable_eta: bool = False
    momentum_chunk_size: int = 32
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            # Checkpoints describe their own code, so `trust_remote_code=True` loads every head without the plugin
            # (save_pretrained copies these two files next to the weights).
            self.auto_map = dict(_AUTO_MAP)

    @property
    def uses_momentum(self) -> bool:
        """Whether the attention adds momentum at all (`momentum_eta > 0`, or eta is learned)."""
        return bool(self.learnable_eta) or float(self.momentum_eta) > 0.0

    @property
    def layer_types(self) -> list[str]:
        # With momentum, "hybrid" cache layers hold keys/values *and* a recurrent state: the momentum carried between
        # decoding steps, which makes each step's momentum cost independent of the sequence length. Without it the
        # model is a GPT-2 and its cache plain attention layers (croppable: assisted decoding, continuous batching).
        return ["hybrid" if self.uses_momentum else "full_attention"] * self.num_hidden_layers

    @property
    def base_model_tp_plan(self) -> dict[str, str]:
        # Tensor parallelism by heads: q/k/v split their output features (whole heads) across ranks, o_proj its
        # input features. Momentum is a per-head sum of values, so each rank computes its own heads' momentum.
        plan = {
            "layers.*.attn.q_proj": "colwise",
            "layers.*.attn.k_proj": "colwise",
            "layers.*.attn.v_proj": "colwise",
            "layers.*.attn.o_proj": "rowwise",
            "layers.*.mlp.up_proj": "colwise",
            "layers.*.mlp.down_proj": "rowwise",
        }
        if self.learnable_eta:
            # One eta per head: shard it like the heads, and let the attention read its local slice.
            plan["layers.*.attn.eta_logit"] = "colwise"
            plan["layers.*.attn"] = "local_params"
        return plan

    def validate_architecture(self):
        """Run by `@strict` at construction: reject values the model cannot honour, saying what to change."""
        if not 0.0 <= float(self.momentum_eta) < 1.0:
            raise ValueError(
                f"momentum_eta must be in [0, 1) (0 disables momentum); got {self.momentum_eta}. "
                "eta >= 1 makes the unnormalised value sum grow without bound."
            )
        if self.learnable_eta and float(self.momentum_eta) == 0.0:
            raise ValueError(
                "learnable_eta=True needs a starting value momentum_eta in (0, 1), e.g. 0.5; got 0.0. "
                "Use learnable_eta=False for a model without momentum."
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); pick e.g. num_attention_heads that divides it."
            )
        if self.momentum_chunk_size < 1:
            raise ValueError(
                f"momentum_chunk_size must be a positive integer; got {self.momentum_chunk_size}."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["MomentumGPTConfig"]
