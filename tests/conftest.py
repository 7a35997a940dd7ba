"""Test factories shared by the suite: tiny models, configs and tokenizers, built one way everywhere.

They are pytest "factories as fixtures": a test asks for the factory and calls it with what it needs to differ,

    def test_something(tiny_momentum_gpt, corpus_tokenizer):
        model = tiny_momentum_gpt(vocab_size=len(corpus_tokenizer), momentum_eta=0.0)

so the defaults live here once instead of in a copy per test file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
#: ~100 KB of Gutenberg text and a held-out sample from other books (the pretraining tests' corpus).
CORPUS_SAMPLE = DATA / "corpus_sample.txt"
CORPUS_VALID_SAMPLE = DATA / "corpus_valid_sample.txt"


@pytest.fixture(scope="session")
def tiny_momentum_gpt_config() -> Callable:
    """``factory(**overrides) -> MomentumGPTConfig``: 2 layers of width 32, 4 heads, 128 positions, eta 0.6."""
    from transformers_momentum import MomentumGPTConfig

    def factory(**overrides) -> MomentumGPTConfig:
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

    return factory


@pytest.fixture(scope="session")
def tiny_momentum_gpt(tiny_momentum_gpt_config) -> Callable:
    """``factory(seed=0, **config_overrides) -> MomentumGPTForCausalLM`` in eval mode, weights fixed by ``seed``."""
    import torch

    from transformers_momentum import MomentumGPTForCausalLM

    def factory(seed: int = 0, **overrides) -> MomentumGPTForCausalLM:
        torch.manual_seed(seed)
        return MomentumGPTForCausalLM(tiny_momentum_gpt_config(**overrides)).eval()

    return factory


@pytest.fixture(scope="session")
def tiny_llama() -> Callable:
    """``factory(vocab_size=97, seed=0, attn_implementation="sdpa", **overrides)``: a 2-layer GQA (4/2 heads) Llama."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    def factory(vocab_size: int = 97, seed: int = 0, attn_implementation: str = "sdpa", **overrides):
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

    return factory


@pytest.fixture(scope="session")
def corpus_tokenizer():
    """A byte-level BPE (vocab 300, 32 positions) trained on the first 40,000 characters of the corpus sample."""
    from transformers_momentum.pretraining import iter_documents, train_bpe_tokenizer

    return train_bpe_tokenizer(
        list(iter_documents([CORPUS_SAMPLE], 40_000)), vocab_size=300, model_max_length=32
    )


@pytest.fixture(scope="session")
def word_tokenizer() -> Callable:
    """``factory(words) -> PreTrainedTokenizerFast``: whitespace/punctuation word level, ``[UNK]``=0, ``<s>``=1, ``</s>``=2.

    Token ids are predictable (sorted words after the three specials), which hand-computed expectations need.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def factory(words: Iterable[str]) -> PreTrainedTokenizerFast:
        vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
        for word in sorted(set(words)):
            vocab.setdefault(word, len(vocab))
        backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]"
        )

    return factory
