"""The suite's tiny models, defined once. ``conftest.py`` exposes them as factory fixtures; modules that need them
at import time (parametrize tables, helpers) import them from here."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM


def momentum_gpt_config(**overrides) -> MomentumGPTConfig:
    """2 layers of width 32, 4 heads, 128 positions, eta 0.6; ``overrides`` replace any field."""
    fields = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        momentum_eta=0.6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return MomentumGPTConfig(**{**fields, **overrides})


def momentum_gpt(seed: int = 0, **overrides) -> MomentumGPTForCausalLM:
    """A :func:`momentum_gpt_config` model in eval mode, weights fixed by ``seed``."""
    torch.manual_seed(seed)
    return MomentumGPTForCausalLM(momentum_gpt_config(**overrides)).eval()


def llama(vocab_size: int = 97, seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    """A 2-layer GQA (4/2 heads) Llama in eval mode, weights fixed by ``seed``."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = LlamaConfig(**{**fields, **overrides})
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
