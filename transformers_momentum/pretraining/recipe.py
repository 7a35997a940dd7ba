"""The pretraining recipe: text files -> byte-level BPE tokenizer -> packed blocks -> HF `Trainer` -> checkpoint.

One call of :func:`pretrain` is one run (one architecture, one eta, one seed). Its ``TrainingArguments.output_dir``
ends up holding the final checkpoint (weights, config with ``auto_map``, tokenizer, generation config, the model
code), the `Trainer`'s ``checkpoint-*`` folders for resuming, ``training_summary.json`` (everything a model card
states) and ``loss_curve.png``.

Multi-process data parallelism comes from `Trainer`/`accelerate` unchanged: launch the same script with
``torchrun --nproc_per_node N`` (``use_cpu=True`` on CPU, see docs/pretraining.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from .arguments import DataArguments, ModelArguments
from .data import iter_documents, pack_documents, token_stream, train_bpe_tokenizer
from .evaluation import perplexity_at_lengths

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"
#: The files of a run directory that make up a published checkpoint (the resume state does not).
CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "configuration_momentum_gpt.py",
    "modeling_momentum_gpt.py",
)


def build_model(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerFast, block_size: int
) -> PreTrainedModel:
    """MomentumGPT sized by ``model_args`` with ``block_size`` positions; ``momentum_eta=0`` is the vanilla twin."""
    from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM

    special = tokenizer.eos_token_id
    config = MomentumGPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        max_position_embeddings=block_size,
        momentum_eta=model_args.momentum_eta,
        learnable_eta=model_args.learnable_eta,
        embd_pdrop=model_args.dropout,
        resid_pdrop=model_args.dropout,
        attn_pdrop=model_args.dropout,
        bos_token_id=special,
        eos_token_id=special,
        pad_token_id=special,
    )
    model = MomentumGPTForCausalLM(config)
    # Token ids only: sampling or length settings here would override what callers (generate's max_length,
    # lm-evaluation-harness's max_gen_toks) ask for.
    model.generation_config = GenerationConfig(
        bos_token_id=special, eos_token_id=special, pad_token_id=special
    )
    return model


class PerplexityTrainer(Trainer):
    """`Trainer` that also logs ``eval_perplexity = exp(eval_loss)`` next to every evaluation loss."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        super().log(logs, start_time)


def pretrain(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    after_training: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    """Run one pretraining job and return its summary (also written to ``<output_dir>/training_summary.json``).

    ``training_args`` is plain `TrainingArguments` (see :func:`recipe_training_arguments` for the recipe's
    defaults); ``resume_from_checkpoint`` may name a checkpoint folder or be ``"latest"``. ``after_training(trainer)``,
    if given, runs on every process right after `Trainer.train` (tests use it to inspect the distributed state). In a
    multi-process run only the main process evaluates and writes artefacts; the others return an empty summary.
    """
    started = time.perf_counter()
    output_dir = Path(training_args.output_dir)
    tokenizer = _load_or_train_tokenizer(data_args)

    train_docs = list(iter_documents(data_args.train_files, data_args.max_train_chars))
    validation_docs = list(iter_documents(data_args.validation_files, data_args.max_validation_chars))
    train_dataset = pack_documents(train_docs, tokenizer, data_args.block_size)
    validation_dataset = _whole_eval_batches(
        pack_documents(validation_docs, tokenizer, data_args.block_size, max_blocks=data_args.eval_blocks),
        training_args,
    )
    validation_stream = token_stream(validation_docs, tokenizer)

    set_seed(
        training_args.seed
    )  # before construction: the seed fixes the initial weights as well as the data order
    model = build_model(model_args, tokenizer, data_args.block_size)
    trainer = PerplexityTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=validation_dataset
    )
    train_started, cpu_started = time.perf_counter(), time.process_time()
    train_output = trainer.train(resume_from_checkpoint=_resume_point(training_args))
    train_seconds = time.perf_counter() - train_started
    # CPU time as well as wall time: on a shared machine wall time mostly measures the neighbours' load.
    train_cpu_seconds = time.process_time() - cpu_started
    if after_training is not None:
        after_training(trainer)
    if not trainer.is_world_process_zero():
        return {}

    # Final evaluation and artefacts, on the main process only. save_pretrained rather than trainer.save_model: the
    # latter adds a pickled training_args.bin, and a published folder holds safetensors and JSON only.
    final_model = trainer.accelerator.unwrap_model(trainer.model)
    perplexities = perplexity_at_lengths(final_model, validation_stream, data_args.eval_lengths)
    final_model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    world_size = training_args.world_size
    tokens_per_step = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world_size
        * data_args.block_size
    )
    summary = {
        "model_arguments": dataclasses.asdict(model_args),
        "data_arguments": dataclasses.asdict(data_args),
        "training_arguments": training_args.to_dict(),
        "model_config": final_model.config.to_dict(),
        "parameters": {
            "total": final_model.num_parameters(),
            "non_embedding": final_model.num_parameters(exclude_embeddings=True),
        },
        "train_tokens_available": len(train_dataset) * data_args.block_size,
        "tokens_per_step": tokens_per_step,
        "train_tokens_seen": tokens_per_step * trainer.state.global_step,
        "global_step": trainer.state.global_step,
        "warmup_steps": training_args.get_warmup_steps(trainer.state.max_steps),
        "validation_tokens": len(validation_stream) - len(validation_stream) % data_args.block_size,
        "validation_perplexity": {str(length): ppl for length, ppl in perplexities.items()},
        "final_train_loss": train_output.training_loss,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "total_seconds": time.perf_counter() - started,
        "log_history": trainer.state.log_history,
        "environment": _environment(final_model, world_size),
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    from .card import plot_loss_curves

    label = f"eta={model_args.momentum_eta} seed={training_args.seed}"
    plot_loss_curves({label: summary}, output_dir / LOSS_CURVE_FILE)
    logger.info("Validation perplexity %s; %.0f s", summary["validation_perplexity"], train_seconds)
    return summary


def _load_or_train_tokenizer(data_args: DataArguments) -> PreTrainedTokenizerFast:
    if data_args.tokenizer:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(data_args.tokenizer)
        logger.info("Loaded tokenizer from %s (vocab %d)", data_args.tokenizer, len(tokenizer))
    else:
        sample = list(iter_documents(data_args.train_files, data_args.tokenizer_train_chars))
        tokenizer = train_bpe_tokenizer(sample, data_args.vocab_size)
        logger.info("Trained a byte-level BPE tokenizer with %d tokens", len(tokenizer))
    tokenizer.model_max_length = data_args.block_size
    return tokenizer


def _whole_eval_batches(dataset, training_args: TrainingArguments):
    """The validation blocks that whole evaluation batches cover: with ``dataloader_drop_last`` the rest is unscored."""
    if not training_args.dataloader_drop_last:
        return dataset
    per_step = training_args.per_device_eval_batch_size * training_args.world_size
    usable = len(dataset) - len(dataset) % per_step
    if usable == 0:
        raise ValueError(
            f"{len(dataset)} validation blocks do not fill one evaluation batch of {per_step} "
            f"(per_device_eval_batch_size x processes); lower --per_device_eval_batch_size or raise --eval_blocks."
        )
    if usable < len(dataset):
        logger.warning(
            "Scoring %d of %d validation blocks (whole evaluation batches only).", usable, len(dataset)
        )
    return dataset.select(range(usable))


def _resume_point(training_args: TrainingArguments) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume == "latest":
        resume = (
            get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        )
        if resume is None:
            logger.warning("No checkpoint under %s; starting from scratch.", training_args.output_dir)
    elif resume is not None and not Path(resume).is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={resume!r} is not a checkpoint directory (give one, or 'latest')."
        )
    return resume


def _environment(model: PreTrainedModel, world_size: int) -> dict[str, Any]:
    """Where the run trained, as the model card reports it."""
    device = next(model.parameters()).device
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "processes": world_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
