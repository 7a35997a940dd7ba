"""Model construction and training for the lab: every model trains through `Trainer` on a seeded prompt stream.

Two callbacks watch a run: `AnchorProbe` measures the anchor's quantity on held-out prompts every few steps (so
the report gives steps-to-threshold beside the final error), and `CurriculumCallback` tells the prompt stream the
step it is at (Garg et al.'s curriculum).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..models.icl_regression import (
    LinearSelfAttentionConfig,
    LinearSelfAttentionForInContextRegression,
    MomentumGPTForInContextRegression,
    MomentumGPTICLRegressionConfig,
)
from ..models.momentum_gpt import MomentumGPTConfig, MomentumGPTForCausalLM
from .config import LEARNABLE
from .tasks import LinearRegressionTask, MQARTask, PromptStream, StepCounter


@dataclass(frozen=True)
class ModelSettings:
    """The backbone every arm shares; only eta differs between arms."""

    num_layers: int = 3
    hidden_size: int = 64
    num_heads: int = 4
    learnable_eta_init: float = 0.5


def eta_settings(eta: str, learnable_init: float) -> dict:
    """Config fields of an arm: a fixed eta, or a learned per-head eta starting at `learnable_init`."""
    if eta == LEARNABLE:
        return {"momentum_eta": learnable_init, "learnable_eta": True}
    return {"momentum_eta": float(eta), "learnable_eta": False}


def backbone_settings(settings: ModelSettings, eta: str) -> dict:
    return dict(
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        **eta_settings(eta, settings.learnable_eta_init),
    )


def build_regression_model(
    settings: ModelSettings, task: LinearRegressionTask, eta: str, seed: int, max_points: int | None = None
) -> MomentumGPTForInContextRegression:
    """`max_points` (default: the task's prompt length) may exceed the training prompts, so that the model can be
    evaluated beyond the k it was trained on (Garg et al.); the extra positions are never trained."""
    set_seed(seed)  # the initialisation is part of what the seed fixes
    config = MomentumGPTICLRegressionConfig(
        n_dims=task.n_dims, max_points=max_points or task.n_points, **backbone_settings(settings, eta)
    )
    return MomentumGPTForInContextRegression(config)


def build_mqar_model(settings: ModelSettings, task: MQARTask, eta: str, seed: int) -> MomentumGPTForCausalLM:
    set_seed(seed)
    config = MomentumGPTConfig(
        vocab_size=task.vocab_size,
        max_position_embeddings=task.sequence_length,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        **backbone_settings(settings, eta),
    )
    return MomentumGPTForCausalLM(config)


def build_lsa_model(n_dims: int, seed: int, num_layers: int = 1) -> LinearSelfAttentionForInContextRegression:
    set_seed(seed)
    return LinearSelfAttentionForInContextRegression(
        LinearSelfAttentionConfig(n_dims=n_dims, num_hidden_layers=num_layers, num_attention_heads=1)
    )


@dataclass
class AnchorTrace:
    """What `AnchorProbe` saw: (step, gap) pairs, and the first step where gap <= threshold."""

    threshold: float
    every: int
    points: list[tuple[int, float]] = field(default_factory=list)
    steps_to_threshold: int | None = None


class AnchorProbe(TrainerCallback):
    """Every `every` steps (and at the end), `measure(model)` -> the gap to the anchor (lower is better; the
    anchor is reached at gap <= threshold), on held-out prompts."""

    def __init__(self, measure: Callable[[PreTrainedModel], float], every: int, threshold: float):
        self.measure = measure
        self.trace = AnchorTrace(threshold=threshold, every=every)

    def _probe(self, model, step: int) -> None:
        if self.trace.points and self.trace.points[-1][0] == step:
            return
        was_training = model.training
        model.eval()
        value = float(self.measure(model))
        model.train(was_training)
        self.trace.points.append((step, value))
        if self.trace.steps_to_threshold is None and value <= self.trace.threshold:
            self.trace.steps_to_threshold = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.trace.every > 0 and state.global_step % self.trace.every == 0:
            self._probe(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._probe(model, state.global_step)


class CurriculumCallback(TrainerCallback):
    """Keeps a `StepCounter` at the trainer's step, for a curriculum stream."""

    def __init__(self, counter: StepCounter):
        self.counter = counter

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter.step = state.global_step


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float = 0.1
    device: str = "cpu"
    progress: bool = True


def train(
    model: PreTrainedModel,
    stream: PromptStream,
    *,
    output_dir: str | Path,
    settings: TrainSettings,
    seed: int,
    callbacks: list[TrainerCallback] | None = None,
) -> list[dict]:
    """AdamW with linear warm-up and cosine decay, gradient clipping at 1, for `settings.steps` steps; returns the
    logged training losses."""
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(settings.warmup_ratio * settings.steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, settings.steps // 20),
        save_strategy="no",
        report_to=[],
        use_cpu=settings.device == "cpu",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=not settings.progress,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=stream, callbacks=callbacks or [])
    trainer.train()
    model.eval()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def final_loss(log: list[dict]) -> float | None:
    """The training loss at the end: the mean of the last quarter of the logged losses (the log is noisy)."""
    losses = [entry["loss"] for entry in log if "loss" in entry]
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 4) :]
    return sum(tail) / len(tail)


def learned_etas(model: PreTrainedModel) -> list[list[float]] | None:
    """Per layer, per head eta of a learnable-eta MomentumGPT (None for a fixed eta)."""
    etas = []
    for module in model.modules():
        if hasattr(module, "eta_logit"):
            etas.append(torch.sigmoid(module.eta_logit.detach()).cpu().tolist())
    return etas or None


# Variables torchrun / accelerate launch set; the lab reads its shard from them, then removes them so that each
# process trains its own models with a plain single-process Trainer (no DDP: the runs are independent).
_LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@dataclass(frozen=True)
class Shard:
    """This process's share of the (arm, seed) runs: runs[i] belongs to rank i % world_size."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank


def claim_launcher_shard(device: str) -> Shard:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (torchrun, accelerate launch) and detach this process from the
    launcher's process group, pinning it to GPU LOCAL_RANK on CUDA. Without a launcher: rank 0 of 1."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1:
        for name in _LAUNCHER_VARIABLES:
            os.environ.pop(name, None)
        for name in [n for n in os.environ if n.startswith("ACCELERATE_") and "DISTRIBUTED" in n]:
            os.environ.pop(name)
        if device.startswith("cuda"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
            if devices:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices[local % len(devices)]
    return Shard(rank=rank, world_size=world, local_rank=local)


__all__ = [
    "AnchorProbe",
    "AnchorTrace",
    "CurriculumCallback",
    "ModelSettings",
    "Shard",
    "TrainSettings",
    "build_lsa_model",
    "build_mqar_model",
    "build_regression_model",
    "claim_launcher_shard",
    "eta_settings",
    "final_loss",
    "learned_etas",
    "train",
]
