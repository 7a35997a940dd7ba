"""Conversion between Hugging Face GPT-2 and MomentumGPT.

At eta = 0 a MomentumGPT *is* a GPT-2 with separate q/k/v projections, so a converted model reproduces GPT-2's
logits (tested to 1e-5 in fp32); that equality anchors the whole architecture. GPT-2 stores its projections as
`Conv1D` (weight shaped [in, out]) with Q|K|V fused in `c_attn`; MomentumGPT uses `nn.Linear` ([out, in]).
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .configuration_momentum_gpt import MomentumGPTConfig
from .modeling_momentum_gpt import MomentumGPTForCausalLM

# GPT-2 options that MomentumGPT does not implement; converting a model that uses them would change its outputs.
_UNSUPPORTED_GPT2_OPTIONS = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "scale_attn_weights": True,
}


class ConversionError(ValueError):
    """A checkpoint that cannot become a MomentumGPT (not a GPT-2, or a GPT-2 option MomentumGPT lacks); the
    ``convert-gpt2`` command prints it as one line and exits with code 2."""


def _field(config, name: str):
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def describe_checkpoint(config) -> str:
    """``model_type='llama', architectures=['LlamaForCausalLM']``: what a checkpoint says it is."""
    return f"model_type={_field(config, 'model_type')!r}, architectures={_field(config, 'architectures')!r}"


def check_is_gpt2(config) -> None:
    """Refuse a config (a `PretrainedConfig` or config.json's dict) that is not GPT-2's.

    `GPT2LMHeadModel.from_pretrained` does not: given another model's checkpoint it builds a GPT-2 from the foreign
    config, reports every GPT-2 weight missing and initialises them randomly, which would then be converted without
    a word. The model type says what a checkpoint is before any weight is read."""
    if _field(config, "model_type") != "gpt2":
        raise ConversionError(
            f"not a GPT-2 checkpoint: its config says {describe_checkpoint(config)}. convert-gpt2 converts GPT-2 "
            "(model_type 'gpt2') only; give a GPT-2 checkpoint such as openai-community/gpt2."
        )


def _check_convertible(config: GPT2Config) -> None:
    check_is_gpt2(config)
    for option, supported in _UNSUPPORTED_GPT2_OPTIONS.items():
        if getattr(config, option, supported) != supported:
            raise ConversionError(
                f"Cannot convert a GPT-2 with {option}={getattr(config, option)!r}; only {supported!r}."
            )


def gpt2_config_to_momentum(config: GPT2Config, momentum_eta: float = 0.0, **overrides) -> MomentumGPTConfig:
    _check_convertible(config)
    fields = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.n_inner or 4 * config.n_embd,
        "max_position_embeddings": config.n_positions,
        # GPT-2's "gelu_new" is the tanh GELU in elementwise ops; the fused kernel computes the same function
        # (logits within ~1e-6) faster. Any other activation is kept as it is.
        "hidden_act": "gelu_pytorch_tanh"
        if config.activation_function == "gelu_new"
        else config.activation_function,
        "embd_pdrop": config.embd_pdrop,
        "resid_pdrop": config.resid_pdrop,
        "attn_pdrop": config.attn_pdrop,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "momentum_eta": momentum_eta,
    }
    fields.update(overrides)
    return MomentumGPTConfig(**fields)


@torch.no_grad()
def gpt2_to_momentum_gpt(
    gpt2: GPT2LMHeadModel, momentum_eta: float = 0.0, **config_overrides
) -> MomentumGPTForCausalLM:
    """Build a MomentumGPTForCausalLM holding `gpt2`'s weights (a copy); at eta = 0 its logits equal GPT-2's.

    Raises `ConversionError` for a model that is not a GPT-2 (say, a Llama), instead of reading attributes it lacks.
    """
    check_is_gpt2(gpt2.config)
    config = gpt2_config_to_momentum(gpt2.config, momentum_eta, **config_overrides)
    config._attn_implementation = gpt2.config._attn_implementation
    model = MomentumGPTForCausalLM(config).to(dtype=gpt2.dtype)
    source = gpt2.transformer
    model.model.embed_tokens.weight.copy_(source.wte.weight)
    model.model.embed_positions.weight.copy_(source.wpe.weight)
    model.model.norm.load_state_dict(source.ln_f.state_dict())
    hidden = config.hidden_size
    for block, gpt2_block in zip(model.model.layers, source.h, strict=True):
        block.input_layernorm.load_state_dict(gpt2_block.ln_1.state_dict())
        block.post_attention_layernorm.load_state_dict(gpt2_block.ln_2.state_dict())
        # Conv1D weight is [in, 3 * hidden] with output columns ordered Q | K | V.
        fused_weight, fused_bias = gpt2_block.attn.c_attn.weight, gpt2_block.attn.c_attn.bias
        for index, projection in enumerate((block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)):
            projection.weight.copy_(fused_weight[:, index * hidden : (index + 1) * hidden].T)
            projection.bias.copy_(fused_bias[index * hidden : (index + 1) * hidden])
        _copy_conv1d(block.attn.o_proj, gpt2_block.attn.c_proj)
        _copy_conv1d(block.mlp.up_proj, gpt2_block.mlp.c_fc)
        _copy_conv1d(block.mlp.down_proj, gpt2_block.mlp.c_proj)
    if not config.tie_word_embeddings:
        model.lm_head.weight.copy_(gpt2.lm_head.weight)
    return model.eval() if not gpt2.training else model


@torch.no_grad()
def momentum_gpt_to_gpt2(model: MomentumGPTForCausalLM) -> GPT2LMHeadModel:
    """Export a momentum-free MomentumGPT (eta = 0, not learned) as a plain GPT2LMHeadModel."""
    config = model.config
    if config.learnable_eta or float(config.momentum_eta) != 0.0:
        raise ValueError(
            f"Only a MomentumGPT without momentum (momentum_eta=0, learnable_eta=False) is a GPT-2; this one has "
            f"momentum_eta={config.momentum_eta}, learnable_eta={config.learnable_eta}. GPT-2 cannot express momentum."
        )
    gpt2_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        activation_function=config.hidden_act,
        resid_pdrop=config.resid_pdrop,
        embd_pdrop=config.embd_pdrop,
        attn_pdrop=config.attn_pdrop,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    gpt2_config._attn_implementation = config._attn_implementation
    gpt2 = GPT2LMHeadModel(gpt2_config).to(dtype=model.dtype)
    target = gpt2.transformer
    target.wte.weight.copy_(model.model.embed_tokens.weight)
    target.wpe.weight.copy_(model.model.embed_positions.weight)
    target.ln_f.load_state_dict(model.model.norm.state_dict())
    for block, gpt2_block in zip(model.model.layers, target.h, strict=True):
        gpt2_block.ln_1.load_state_dict(block.input_layernorm.state_dict())
        gpt2_block.ln_2.load_state_dict(block.post_attention_layernorm.state_dict())
        projections = (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)
        gpt2_block.attn.c_attn.weight.copy_(torch.cat([p.weight.T for p in projections], dim=1))
        gpt2_block.attn.c_attn.bias.copy_(torch.cat([p.bias for p in projections]))
        _copy_linear_to_conv1d(gpt2_block.attn.c_proj, block.attn.o_proj)
        _copy_linear_to_conv1d(gpt2_block.mlp.c_fc, block.mlp.up_proj)
        _copy_linear_to_conv1d(gpt2_block.mlp.c_proj, block.mlp.down_proj)
    if not config.tie_word_embeddings:
        gpt2.lm_head.weight.copy_(model.lm_head.weight)
    return gpt2.eval() if not model.training else gpt2


def _copy_conv1d(linear: torch.nn.Linear, conv1d) -> None:
    linear.weight.copy_(conv1d.weight.T)
    linear.bias.copy_(conv1d.bias)


def _copy_linear_to_conv1d(conv1d, linear: torch.nn.Linear) -> None:
    conv1d.weight.copy_(linear.weight.T)
    conv1d.bias.copy_(linear.bias)
