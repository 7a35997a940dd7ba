"""Pretraining recipe for MomentumGPT checkpoints: tokenizer, packing, Trainer, perplexity, model cards.

The names below load on first use (PEP 562), so that importing the package -- as the command line does to list
its sub-commands -- does not pay for `datasets`, the `Trainer` or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DataArguments": ".arguments",
    "ModelArguments": ".arguments",
    "RECIPE_TRAINING_DEFAULTS": ".arguments",
    "recipe_training_arguments": ".arguments",
    "END_OF_TEXT": ".data",
    "iter_documents": ".data",
    "pack_documents": ".data",
    "token_stream": ".data",
    "train_bpe_tokenizer": ".data",
    "perplexity_at_lengths": ".evaluation",
    "build_model": ".recipe",
    "pretrain": ".recipe",
    "render_card": ".card",
    "seed_interval": ".card",
}

__all__ = [
    "DataArguments",
    "END_OF_TEXT",
    "ModelArguments",
    "RECIPE_TRAINING_DEFAULTS",
    "build_model",
    "iter_documents",
    "pack_documents",
    "perplexity_at_lengths",
    "pretrain",
    "recipe_training_arguments",
    "render_card",
    "seed_interval",
    "token_stream",
    "train_bpe_tokenizer",
]

if TYPE_CHECKING:
    from .arguments import RECIPE_TRAINING_DEFAULTS, DataArguments, ModelArguments, recipe_training_arguments
    from .card import render_card, seed_interval
    from .data import END_OF_TEXT, iter_documents, pack_documents, token_stream, train_bpe_tokenizer
    from .evaluation import perplexity_at_lengths
    from .recipe import build_model, pretrain


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
