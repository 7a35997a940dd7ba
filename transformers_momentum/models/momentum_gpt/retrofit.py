"""Add momentum attention to an existing Hugging Face causal LM (for continued-pretraining experiments).

    model = AutoModelForCausalLM.from_pretrained(...)
    apply_momentum_attention(model, eta=0.5)     # out_t = attention_t + sum_{i<t} eta^(t-i) v_i, every layer/head
    ...
    remove_momentum_attention(model)             # back to the original behaviour

It works for every model whose attention goes through transformers' attention interface (GPT-2, LLaMA, Qwen2,
OPT, GPT-NeoX, Mistral, Gemma, ... ) with eager or sdpa attention and full (not sliding-window) attention layers: a
registered attention function wraps the model's own one and adds the momentum term, computed from the (cached)
values it receives. With GQA the term is computed per key/value head and shared by its query heads, exactly as the
values are.

The momentum of a query sums exactly the values its attention mask lets it see, so padding, packed sequences
(`position_ids` that restart, no mask) and static caches (a preallocated buffer whose unwritten slots the mask hides)
are exact. Without a mask (sdpa's plain causal case) the values are the valid ones and a chunked scan computes it.
Per decoding step that costs O(T) (the values are rescanned); native MomentumGPT carries the state in its cache.
"""

import torch
from transformers.cache_utils import get_layer_types_and_kwargs

from ...attention_interface import (
    base_implementation,
    original_attention_function,
    register_wrapped_attention,
)
from .modeling_momentum_gpt import allowed_keys, masked_momentum, momentum_scan

_PREFIX = "momentum:"
_STATE_ATTRIBUTE = "_momentum_retrofit"
# The attention backends whose masks the momentum can read: a 4-D mask, or none for plain causal attention.
_SUPPORTED_IMPLEMENTATIONS = ("eager", "sdpa")
# Cache layer types that keep only the most recent keys/values: momentum over them would forget older tokens.
_TRUNCATING_LAYER_TYPES = ("sliding_attention", "chunked_attention", "hybrid_sliding")


class _RetrofitState:
    """What the wrapped attention function needs: eta, the wrapped backend and the scan's chunk size."""

    def __init__(self, eta: float, original_implementation: str, chunk_size: int):
        self.eta = eta
        self.original_implementation = original_implementation
        self.chunk_size = chunk_size


def _momentum_attention(module, query, key, value, attention_mask, **kwargs):
    state: _RetrofitState | None = getattr(module, _STATE_ATTRIBUTE, None)
    if state is None:
        raise RuntimeError(
            f"{type(module).__name__} uses momentum attention but carries no momentum state; "
            "call transformers_momentum.apply_momentum_attention(model, eta) on the whole model."
        )
    original = original_attention_function(module, state.original_implementation)
    attn_output, attn_weights = original(module, query, key, value, attention_mask, **kwargs)
    if state.eta == 0.0:
        return attn_output, attn_weights
    momentum = _momentum(value, state.eta, attention_mask, query.shape[2], state.chunk_size)
    groups = query.shape[1] // momentum.shape[1]
    if groups > 1:  # grouped-query attention: a key/value head serves `groups` query heads
        momentum = momentum.repeat_interleave(groups, dim=1)
    return attn_output + momentum.transpose(1, 2).to(attn_output.dtype), attn_weights


def _momentum(
    values: torch.Tensor, eta: float, attention_mask: torch.Tensor | None, query_length: int, chunk_size: int
) -> torch.Tensor:
    """The momentum of each query, (batch, kv_heads, queries, head_dim), from the values and mask attention gets."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        return masked_momentum(values, eta, allowed_keys(attention_mask))
    if attention_mask is not None:
        raise ValueError(
            f"Momentum attention got a {type(attention_mask).__name__} attention mask it cannot read; it supports "
            f"the {' and '.join(_SUPPORTED_IMPLEMENTATIONS)} attention implementations."
        )
    # No mask: sdpa's plain causal attention. Several queries align top-left (query j is position j: a whole
    # sequence, or the prefill of an empty static cache, whose buffer is longer than what was written); a single
    # query is the newest position and sees every value (decoding with a dynamic cache).
    if query_length > 1:
        momentum, _ = momentum_scan(values[:, :, :query_length], eta, chunk_size=chunk_size)
        return momentum
    momentum, _ = momentum_scan(values, eta, chunk_size=chunk_size)
    return momentum[:, :, -1:]


def apply_momentum_attention(model: torch.nn.Module, eta: float, chunk_size: int = 32) -> torch.nn.Module:
    """Add `sum_{i<t} eta^(t-i) v_i` to every attention head's output of `model` (in place; returns `model`).

    Calling it again changes eta. eta = 0 leaves the logits unchanged.
    """
    if not 0.0 <= float(eta) < 1.0:
        raise ValueError(f"eta must be in [0, 1) (0 disables momentum); got {eta}.")
    state: _RetrofitState | None = getattr(model, _STATE_ATTRIBUTE, None)
    if state is not None:
        state.eta = float(eta)
        return model
    config = model.config
    current = config._attn_implementation or "eager"
    if current.startswith(_PREFIX):
        raise ValueError(f"{current!r} is already a momentum attention implementation.")
    if current not in _SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"Momentum attention supports the {' and '.join(_SUPPORTED_IMPLEMENTATIONS)} attention "
            f"implementations, whose masks say which values each token sees; this model uses {current!r}. Load it "
            "with attn_implementation='sdpa' (or call model.set_attn_implementation('sdpa')) first."
        )
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    truncating = sorted({kind for kind in layer_types if kind in _TRUNCATING_LAYER_TYPES})
    if truncating:
        raise ValueError(
            f"{type(model).__name__} has {', '.join(truncating)} layers, whose attention (and cache) keep only "
            "the most recent tokens, so momentum over all earlier values cannot be computed there. Momentum "
            "attention supports models whose layers all use full attention."
        )
    name = _PREFIX + current
    register_wrapped_attention(name, current, _momentum_attention)
    state = _RetrofitState(float(eta), current, chunk_size)
    # The state rides on the modules (the attention function only sees its own module), not on the config, so
    # save_pretrained never tries to serialise it.
    for module in model.modules():
        setattr(module, _STATE_ATTRIBUTE, state)
    try:
        model.set_attn_implementation(name)
    except Exception as error:
        remove_momentum_attention(model)
        raise ValueError(
            f"{type(model).__name__} does not route attention through transformers' attention interface, so "
            "momentum attention cannot be added to it. Supported: models whose attention modules call "
            "ALL_ATTENTION_FUNCTIONS (GPT-2, LLaMA, Qwen2, OPT, GPT-NeoX, Mistral, Gemma, ...)."
        ) from error
    return model


def remove_momentum_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `apply_momentum_attention`: restore the original attention implementation."""
    state: _RetrofitState | None = getattr(model, _STATE_ATTRIBUTE, None)
    if state is None:
        return model
    for module in model.modules():
        if hasattr(module, _STATE_ATTRIBUTE):
            delattr(module, _STATE_ATTRIBUTE)
    current = model.config._attn_implementation or ""
    if current.startswith(_PREFIX):
        model.set_attn_implementation(base_implementation(current, _PREFIX))
    return model


def momentum_eta_of(model: torch.nn.Module) -> float | None:
    """The eta a retrofitted model uses, or None if momentum attention was not applied."""
    state = getattr(model, _STATE_ATTRIBUTE, None)
    return None if state is None else state.eta
