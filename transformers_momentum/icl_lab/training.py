"""Model construction and training for the lab: every model trains through `Trainer` on a seeded prompt stream."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, set_seed

from ..models.icl_regression import (
    LinearSelfAttentionConfig,
    LinearSelfAttentionForInContextRegression,
    MomentumGPTForInContextRegression,
    MomentumGPTICLRegressionConfig,
)
from ..models.momentum_gpt import MomentumGPTConfig, MomentumGPTForCausalLM
from .config import LEARNABLE, ICLLabArguments
from .tasks import LinearRegressionTask, MQARTask, PromptStream


def eta_settings(eta: str, learnable_init: float) -> dict:
    """Config fields of an arm: a fixed eta, or a learned per-head eta starting at `learnable_init`."""
    if eta == LEARNABLE:
        return {"momentum_eta": learnable_init, "learnable_eta": True}
    return {"momentum_eta": float(eta), "learnable_eta": False}


def backbone_settings(args: ICLLabArguments, eta: str) -> dict:
    return dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        **eta_settings(eta, args.learnable_eta_init),
    )


def build_regression_model(
    args: ICLLabArguments, task: LinearRegressionTask, eta: str, seed: int
) -> MomentumGPTForInContextRegression:
    set_seed(seed)  # the initialisation is part of what the seed fixes
    config = MomentumGPTICLRegressionConfig(
        n_dims=task.n_dims, max_points=task.n_points, **backbone_settings(args, eta)
    )
    return MomentumGPTForInContextRegression(config)


def build_mqar_model(args: ICLLabArguments, task: MQARTask, eta: str, seed: int) -> MomentumGPTForCausalLM:
    set_seed(seed)
    config = MomentumGPTConfig(
        vocab_size=task.vocab_size,
        max_position_embeddings=task.sequence_length,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        **backbone_settings(args, eta),
    )
    return MomentumGPTForCausalLM(config)


def build_lsa_model(n_dims: int, seed: int, num_layers: int = 1) -> LinearSelfAttentionForInContextRegression:
    set_seed(seed)
    return LinearSelfAttentionForInContextRegression(
        LinearSelfAttentionConfig(n_dims=n_dims, num_hidden_layers=num_layers, num_attention_heads=1)
    )


def train(
    model: PreTrainedModel,
    stream: PromptStream,
    *,
    output_dir: str | Path,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    warmup_ratio: float = 0.1,
    progress: bool = True,
) -> list[dict]:
    """AdamW with linear warm-up and cosine decay, gradient clipping at 1, for `steps` steps; returns the log."""
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(warmup_ratio * steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=stream)
    trainer.train()
    model.eval()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def learned_etas(model: PreTrainedModel) -> list[list[float]] | None:
    """Per layer, per head eta of a learnable-eta MomentumGPT (None for a fixed eta)."""
    etas = []
    for module in model.modules():
        if hasattr(module, "eta_logit"):
            etas.append(torch.sigmoid(module.eta_logit.detach()).tolist())
    return etas or None
