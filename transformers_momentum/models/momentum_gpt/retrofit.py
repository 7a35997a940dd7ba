"""Add momentum attention to an existing Hugging Face causal LM (for continued-pretraining experiments).

    model = AutoModelForCausalLM.from_pretrained(...)
    apply_momentum_attention(model, eta=0.5)     # out_t = attention_t + sum_{i<t} eta^(t-i) v_i, every layer/head
    ...
    remove_momentum_attention(model)             # back to the original behaviour

It works for every model whose attention goes through transformers' attention interface (GPT-2, LLaMA, Qwen2,
OPT, GPT-NeoX, Mistral, Gemma, ... ): a registered attention function wraps the model's own one and adds the momentum
term, computed from the (cached) values it receives. Per decoding step that costs O(T) (the values are rescanned);
native MomentumGPT carries the state in its cache instead. With GQA the term is computed per key/value head and
shared by its query heads, exactly as the values are.
"""

import torch

from ...attention_interface import (
    base_implementation,
    original_attention_function,
    register_wrapped_attention,
)
from .modeling_momentum_gpt import momentum_scan

_PREFIX = "momentum:"
_STATE_ATTRIBUTE = "_momentum_retrofit"


class _RetrofitState:
    """What the wrapped attention function needs: eta and the current 2-D padding mask of the model's batch."""

    def __init__(self, eta: float, original_implementation: str, chunk_size: int):
        self.eta = eta
        self.original_implementation = original_implementation
        self.chunk_size = chunk_size
        # The last forward's 2-D mask is kept (not cleared after forward) so that activation-checkpointing
        # recomputation in the backward pass sees the same padding as the forward it belongs to.
        self.padding_mask: torch.Tensor | None = None
        self.hook = None


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
    values = value
    if state.padding_mask is not None and state.padding_mask.shape[0] == values.shape[0]:
        values = values * state.padding_mask[:, None, -values.shape[2] :, None].to(values.dtype)
    momentum, _ = momentum_scan(values, state.eta, chunk_size=state.chunk_size)
    momentum = momentum[:, :, -query.shape[2] :]
    groups = query.shape[1] // momentum.shape[1]
    if groups > 1:  # grouped-query attention: a key/value head serves `groups` query heads
        momentum = momentum.repeat_interleave(groups, dim=1)
    return attn_output + momentum.transpose(1, 2).to(attn_output.dtype), attn_weights


def _remember_padding_mask(model, args, kwargs):
    state: _RetrofitState = getattr(model, _STATE_ATTRIBUTE)
    mask = kwargs.get("attention_mask")
    state.padding_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def apply_momentum_attention(model: torch.nn.Module, eta: float, chunk_size: int = 32) -> torch.nn.Module:
    """Add `sum_{i<t} eta^(t-i) v_i` to every attention head's output of `model` (in place; returns `model`).

    Calling it again changes eta. eta = 0 leaves the logits unchanged.
    """
    if not 0.0 <= float(eta) < 1.0:
        raise ValueError(f"eta must be in [0, 1) (0 disables momentum); got {eta}.")
    config = model.config
    state: _RetrofitState | None = getattr(model, _STATE_ATTRIBUTE, None)
    if state is not None:
        state.eta = float(eta)
        return model
    current = config._attn_implementation or "eager"
    if current.startswith(_PREFIX):
        raise ValueError(f"{current!r} is already a momentum attention implementation.")
    name = _PREFIX + current
    register_wrapped_attention(name, current, _momentum_attention)
    state = _RetrofitState(float(eta), current, chunk_size)
    # The state rides on the modules (the attention function only sees its own module), not on the config, so
    # save_pretrained never tries to serialise it.
    for module in model.modules():
        setattr(module, _STATE_ATTRIBUTE, state)
    state.hook = model.register_forward_pre_hook(_remember_padding_mask, with_kwargs=True)
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
    if state.hook is not None:
        state.hook.remove()
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
