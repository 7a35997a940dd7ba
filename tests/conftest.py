"""Test factories shared by the suite: tiny models, configs and tokenizers, built one way everywhere.

They are pytest "factories as fixtures": a test asks for the factory and calls it with what it needs to differ,

    def test_something(tiny_momentum_gpt, corpus_tokenizer):
        model = tiny_momentum_gpt(vocab_size=len(corpus_tokenizer), momentum_eta=0.0)

so the defaults live here once instead of in a copy per test file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

# transformers >= 5.25 fetches hub kernels in from_pretrained by default; the tests load every model offline and
# exactly as written (subprocesses that run checkpoints' remote code without the plugin inherit this too).
os.environ.setdefault("USE_HUB_KERNELS", "0")

DATA = Path(__file__).parent / "data"
#: ~100 KB of Gutenberg text and a held-out sample from other books (the pretraining tests' corpus).
CORPUS_SAMPLE = DATA / "corpus_sample.txt"
CORPUS_VALID_SAMPLE = DATA / "corpus_valid_sample.txt"


@pytest.fixture(scope="session")
def tiny_momentum_gpt_config() -> Callable:
    """``factory(**overrides) -> MomentumGPTConfig``: 2 layers of width 32, 4 heads, 128 positions, eta 0.6."""
    from factories import momentum_gpt_config

    return momentum_gpt_config


@pytest.fixture(scope="session")
def tiny_momentum_gpt() -> Callable:
    """``factory(seed=0, **config_overrides) -> MomentumGPTForCausalLM`` in eval mode, weights fixed by ``seed``."""
    from factories import momentum_gpt

    return momentum_gpt


@pytest.fixture(scope="session")
def tiny_llama() -> Callable:
    """``factory(vocab_size=97, seed=0, attn_implementation="sdpa", **overrides)``: a 2-layer GQA (4/2 heads) Llama."""
    from factories import llama

    return llama


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
