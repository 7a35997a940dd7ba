"""What defines a pretraining run: model and data arguments, plus the recipe's defaults for `TrainingArguments`.

The three dataclasses are what `transformers.HfArgumentParser` turns into the ``transformers-momentum pretrain``
flags, as in the `run_clm` examples: ``ModelArguments`` and ``DataArguments`` here, and transformers' own
`TrainingArguments` for everything the `Trainer` does (batch size, schedule, optimizer, checkpoints, devices).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: The recipe's values for `TrainingArguments` fields whose transformers defaults do not fit pretraining from
#: scratch. The optimizer and schedule take the shape of the paper's pretraining setup (Dai et al. 2023, §5,
#: Table 10: Adam with betas (0.9, 0.98) and eps 1e-6, polynomial decay after warm-up, gradient clipping 2.0) at
#: the scale of the shipped CPU checkpoints. Flags and keyword arguments override them.
RECIPE_TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 400,
    "per_device_train_batch_size": 8,
    "learning_rate": 2e-3,
    "warmup_steps": 0.1,  # a float below 1 is a fraction of max_steps
    "lr_scheduler_type": "polynomial",
    "weight_decay": 0.01,
    "adam_beta2": 0.98,
    "adam_epsilon": 1e-6,
    "max_grad_norm": 2.0,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "logging_steps": 10,
    "save_steps": 100,
    "save_total_limit": 2,
    # Every step sees the same number of tokens, so "tokens seen" is steps x tokens per step exactly.
    "dataloader_drop_last": True,
    "seed": 0,
}


def recipe_training_arguments(output_dir: str, **overrides: Any):
    """`TrainingArguments` with :data:`RECIPE_TRAINING_DEFAULTS`, then ``overrides``, for the run in ``output_dir``."""
    from transformers import TrainingArguments

    return TrainingArguments(**{**RECIPE_TRAINING_DEFAULTS, "output_dir": output_dir, **overrides})


@dataclass
class ModelArguments:
    """The MomentumGPT to train from scratch (``momentum_eta=0`` is the matched vanilla GPT-2-style baseline)."""

    hidden_size: int = field(default=128, metadata={"help": "model width (d_model)"})
    num_hidden_layers: int = field(default=4, metadata={"help": "number of decoder blocks"})
    num_attention_heads: int = field(default=4, metadata={"help": "attention heads per block"})
    intermediate_size: int | None = field(
        default=None, metadata={"help": "FFN width (default 4 x hidden_size)"}
    )
    momentum_eta: float = field(
        default=0.5, metadata={"help": "momentum coefficient in [0, 1); 0 trains the vanilla baseline"}
    )
    learnable_eta: bool = field(
        default=False, metadata={"help": "learn one eta per head, starting at momentum_eta"}
    )
    dropout: float = field(default=0.0, metadata={"help": "embedding, residual and attention dropout"})

    def __post_init__(self) -> None:
        # Every value is checked here, before a tokenizer trains or a model is built.
        if not 0 <= self.momentum_eta < 1:
            raise ValueError(
                f"momentum_eta must be in [0, 1) (0 = vanilla baseline); got {self.momentum_eta}."
            )
        if self.learnable_eta and self.momentum_eta == 0:
            raise ValueError("learnable_eta starts from momentum_eta, so give momentum_eta > 0 (e.g. 0.5).")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
            _check_at_least(name, getattr(self, name), 1)
        if self.intermediate_size is not None:
            _check_at_least("intermediate_size", self.intermediate_size, 1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if not 0 <= self.dropout < 1:  # also refuses nan
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}.")


@dataclass
class DataArguments:
    """The corpus, the tokenizer and the block packing; the corpus fields also describe the data in the card."""

    train_files: list[str] = field(
        metadata={
            "help": "training text: .txt files (one document each) or .jsonl[.xz|.gz|.bz2] with a 'text' field"
        }
    )
    validation_files: list[str] = field(
        metadata={"help": "held-out text in the same formats (validation perplexity is always reported)"}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "the corpus's name for the model card (default: the first train file's folder name)"
        },
    )
    dataset_description: str | None = field(
        default=None,
        metadata={
            "help": "what the corpus is, in a phrase, for the model card (e.g. 'English novels from ...')"
        },
    )
    language: str | None = field(
        default=None, metadata={"help": "ISO 639-1 code of the corpus, for the card"}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "a saved tokenizer folder to reuse (matched runs must share one); default: train one"
        },
    )
    vocab_size: int = field(default=4096, metadata={"help": "vocabulary of the byte-level BPE trained here"})
    tokenizer_train_chars: int = field(
        default=4_000_000, metadata={"help": "characters of the train files the tokenizer is trained on"}
    )
    max_train_chars: int | None = field(
        default=8_000_000, metadata={"help": "characters read from the train files (reading stops there)"}
    )
    max_validation_chars: int | None = field(
        default=600_000, metadata={"help": "characters read from the validation files"}
    )
    block_size: int = field(default=512, metadata={"help": "tokens per packed block = the model's positions"})
    eval_blocks: int = field(default=32, metadata={"help": "validation blocks scored at every evaluation"})
    eval_lengths: list[int] = field(
        default_factory=lambda: [256, 512, 1024],
        metadata={
            "help": "input lengths of the final validation perplexity (beyond block_size: not evaluated)"
        },
    )

    def __post_init__(self) -> None:
        if not self.train_files:
            raise ValueError("Give at least one training file (.txt or .jsonl[.xz]).")
        if not self.validation_files:
            raise ValueError(
                "Give at least one validation file: the recipe always reports held-out perplexity."
            )
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2; got {self.block_size}.")
        if (
            self.tokenizer is None and self.vocab_size < 258
        ):  # what `train_bpe_tokenizer` needs, said up front
            raise ValueError(
                f"vocab_size must exceed 257 (256 byte symbols + the end-of-text token); got {self.vocab_size}."
            )
        _check_at_least("tokenizer_train_chars", self.tokenizer_train_chars, 1)
        _check_at_least("eval_blocks", self.eval_blocks, 1)
        for name in ("max_train_chars", "max_validation_chars"):
            if getattr(self, name) is not None:
                _check_at_least(name, getattr(self, name), 1)
        if not self.eval_lengths or min(self.eval_lengths) < 1:
            raise ValueError(f"eval_lengths must be positive token counts; got {self.eval_lengths}.")
        for name in ("dataset_name", "dataset_description"):  # they fill the model card: blank is a slip
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ValueError(f"{name} is empty; describe the corpus or leave it out.")
        if self.language is not None and not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", self.language):
            raise ValueError(
                f"language must be a language code such as en or pt-BR (ISO 639); got {self.language!r}."
            )


def _check_at_least(name: str, value: int, least: int) -> None:
    if value < least:
        raise ValueError(f"{name} must be at least {least}; got {value}.")
