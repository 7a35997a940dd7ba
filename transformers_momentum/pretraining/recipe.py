"""The pretraining recipe: text files -> byte-level BPE tokenizer -> packed blocks -> HF `Trainer` -> checkpoint.

One call of :func:`pretrain` is one run (one architecture, one eta, one seed). A run directory holds the final
checkpoint (weights, config with ``auto_map``, tokenizer, generation config, the model code), ``checkpoints/`` for
resuming, ``training_summary.json`` (everything the model card needs) and ``loss_curve.png``.

Multi-process data parallelism comes from `Trainer`/`accelerate` unchanged: launch the same script with
``torchrun --nproc_per_node N`` (``use_cpu=True`` on CPU, see docs/pretraining.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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

from .data import iter_documents, pack_documents, token_stream, train_bpe_tokenizer
from .evaluation import perplexity_at_lengths

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"


@dataclass
class PretrainArguments:
    """Everything that defines a pretraining run. Defaults are the tiny CPU recipe behind the shipped checkpoints."""

    train_files: list[str]
    validation_files: list[str]
    output_dir: str
    # Tokenizer: reuse a saved one (matched baselines must share it) or train one on the first train characters.
    tokenizer: str | None = None
    vocab_size: int = 4096
    tokenizer_train_chars: int = 4_000_000
    # Data budget (characters read from the corpus; the token count is reported after tokenization).
    max_train_chars: int | None = 8_000_000
    max_validation_chars: int | None = 600_000
    block_size: int = 512
    eval_blocks: int = 32
    # Model (MomentumGPT; momentum_eta=0 is the vanilla GPT-2-style baseline).
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    momentum_eta: float = 0.5
    learnable_eta: bool = False
    dropout: float = 0.0
    # Optimisation, in the shape of the paper's Table 10 (Adam, polynomial decay with warm-up, clipping).
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = 400
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 2.0
    lr_scheduler_type: str = "polynomial"
    # Bookkeeping.
    seed: int = 0
    eval_steps: int = 100
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    eval_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024])
    num_threads: int | None = None
    use_cpu: bool = False
    disable_tqdm: bool = False
    report_to: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.train_files:
            raise ValueError("Give at least one training file (.txt or .jsonl[.xz]).")
        if not self.validation_files:
            raise ValueError(
                "Give at least one validation file: the recipe always reports held-out perplexity."
            )
        if self.momentum_eta < 0 or self.momentum_eta >= 1:
            raise ValueError(
                f"momentum_eta must be in [0, 1) (0 = vanilla baseline); got {self.momentum_eta}."
            )


def build_model(args: PretrainArguments, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """The model factory: MomentumGPT sized by ``args``; ``momentum_eta=0`` gives the matched vanilla baseline."""
    from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM

    special = tokenizer.eos_token_id
    config = MomentumGPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.block_size,
        momentum_eta=args.momentum_eta,
        learnable_eta=args.learnable_eta,
        embd_pdrop=args.dropout,
        resid_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        bos_token_id=special,
        eos_token_id=special,
        pad_token_id=special,
    )
    model = MomentumGPTForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=special,
        eos_token_id=special,
        pad_token_id=special,
        do_sample=True,
        top_k=50,
        max_new_tokens=64,
    )
    return model


class PerplexityTrainer(Trainer):
    """`Trainer` that also logs ``eval_perplexity = exp(eval_loss)`` next to every evaluation loss."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        super().log(logs, start_time)


def _largest_divisor_at_most(count: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(count, limit)) + 1) if count % d == 0) if count else 1


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Unique trainable parameters (tied embeddings counted once), and the non-embedding part (Kaplan et al.)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Embedding)
    )
    return {"total": total, "non_embedding": total - embedding}


def pretrain(
    args: PretrainArguments, after_training: Callable[[Trainer], None] | None = None
) -> dict[str, Any]:
    """Run one pretraining job and return its summary (also written to ``<output_dir>/training_summary.json``).

    ``after_training(trainer)``, if given, runs on every process right after `Trainer.train` (tests use it to
    inspect the distributed state). In a multi-process run only the main process evaluates and writes artefacts;
    the others return an empty summary.
    """
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # --- tokenizer -------------------------------------------------------------------------------------------
    if args.tokenizer:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
        logger.info("Loaded tokenizer from %s (vocab %d)", args.tokenizer, len(tokenizer))
    else:
        sample = list(iter_documents(args.train_files, args.tokenizer_train_chars))
        tokenizer = train_bpe_tokenizer(sample, args.vocab_size, model_max_length=args.block_size)
        logger.info("Trained a byte-level BPE tokenizer with %d tokens", len(tokenizer))
    tokenizer.model_max_length = args.block_size

    # --- data ------------------------------------------------------------------------------------------------
    train_docs = list(iter_documents(args.train_files, args.max_train_chars))
    validation_docs = list(iter_documents(args.validation_files, args.max_validation_chars))
    train_dataset = pack_documents(train_docs, tokenizer, args.block_size)
    validation_stream = token_stream(validation_docs, tokenizer)
    validation_dataset = pack_documents(
        validation_docs, tokenizer, args.block_size, max_blocks=args.eval_blocks
    )

    # --- model and trainer -----------------------------------------------------------------------------------
    set_seed(args.seed)  # before construction: the seed fixes the initial weights as well as the data order
    model = build_model(args, tokenizer)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=args.per_device_train_batch_size,
        # drop_last applies to evaluation too: an eval batch that divides the eval set scores every block.
        per_device_eval_batch_size=_largest_divisor_at_most(
            len(validation_dataset), args.per_device_train_batch_size
        ),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, round(args.warmup_ratio * args.max_steps)),
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type=args.lr_scheduler_type,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=args.use_cpu,
        disable_tqdm=args.disable_tqdm,
        report_to=args.report_to,
        dataloader_drop_last=True,
    )
    trainer = PerplexityTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=validation_dataset
    )
    resume = args.resume_from_checkpoint
    if resume in ("latest", "last", "true", "True"):
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            logger.warning("No checkpoint under %s; starting from scratch.", training_args.output_dir)
    elif resume is not None and not Path(resume).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint={resume!r} is not a checkpoint directory.")
    train_started, cpu_started = time.perf_counter(), time.process_time()
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - train_started
    # CPU time as well as wall time: on a shared machine wall time mostly measures the neighbours' load.
    train_cpu_seconds = time.process_time() - cpu_started
    if after_training is not None:
        after_training(trainer)

    # --- final evaluation and artefacts (main process only) ---------------------------------------------------
    world_size = training_args.world_size
    tokens_per_step = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size * args.block_size
    )
    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        eval_model = trainer.model
        perplexities = perplexity_at_lengths(eval_model, validation_stream, args.eval_lengths)
        eval_span = len(validation_stream) - len(validation_stream) % args.block_size
        # save_pretrained rather than trainer.save_model: the latter adds a pickled training_args.bin, and a
        # published folder holds safetensors and JSON only.
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
        summary = {
            "arguments": dataclasses.asdict(args),
            "model_config": eval_model.config.to_dict(),
            "parameters": count_parameters(eval_model),
            "train_tokens_available": len(train_dataset) * args.block_size,
            "tokens_per_step": tokens_per_step,
            "train_tokens_seen": tokens_per_step * trainer.state.global_step,
            "global_step": trainer.state.global_step,
            "warmup_steps": training_args.warmup_steps,
            "world_size": world_size,
            "validation_tokens": eval_span,
            "validation_perplexity": {str(length): ppl for length, ppl in perplexities.items()},
            "final_train_loss": train_output.training_loss,
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu_seconds,
            "total_seconds": time.perf_counter() - started,
            "log_history": trainer.state.log_history,
            "environment": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
                "torch_threads": torch.get_num_threads(),
                "device": str(next(eval_model.parameters()).device),
            },
        }
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        from .card import plot_loss_curves

        plot_loss_curves({f"eta={args.momentum_eta} seed={args.seed}": summary}, output_dir / LOSS_CURVE_FILE)
        logger.info("Validation perplexity %s; %.0f s", summary["validation_perplexity"], train_seconds)
    return summary
