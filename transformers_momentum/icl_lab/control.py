"""The positive-control ladder on von Oswald et al.'s (2023) task: can the lab's measures read "ICL is gradient
descent" where it is true?

* Rung (a): a linear self-attention (LSA) layer constructed to *be* one GD step (`from_gradient_descent`);
* Rung (b): single-layer LSAs trained on the task (one per seed; jobs of kind ``lsa`` in the run store).

What "FT" means on both rungs: one explicit GD step, from w = 0, on the N demonstrations of the linear regressor
y = w.x, learning rate tuned on held-out prompts: the step the constructed layer implements exactly. The trained
MomentumGPT models are rung (c): their update cosines are in the results' `update_cosine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.icl_regression import LinearSelfAttentionForInContextRegression
from .evaluation import fitted_weights, layer_outputs, learner_curves, lsa_curve, update_cosines
from .learners import Learner, reference_learners, tune_learners
from .measures import preds_diff, sensitivity_cosine
from .regression import EVAL_SEED, PROBE_SEED, TUNE_SEED
from .results import ControlRung, Interval, PositiveControl, RunRecord
from .runs import Job
from .tasks import LinearRegressionTask, RegressionPrompts, regression_stream, seed_generator
from .training import build_lsa_model

FT_DEFINITION = (
    "one explicit GD step, from w = 0, on the N demonstrations of the linear regressor y = w.x (learning rate "
    "tuned on held-out prompts): the step the constructed layer implements exactly"
)


@dataclass
class ControlContext:
    task: LinearRegressionTask
    n_context: int
    gd_lr: float
    learners: dict[str, Learner]
    prompts: RegressionPrompts  # alignment prompts
    weights: dict[str, torch.Tensor]
    eval_prompts: RegressionPrompts
    eval_weights: dict[str, torch.Tensor]
    n_probe: int


def prepare(args) -> ControlContext:
    # von Oswald et al.'s setting: x ~ U(-1, 1)^d, N context points plus the query.
    task = LinearRegressionTask(
        n_dims=args.lsa_n_dims, n_points=args.lsa_context + 1, x_distribution="uniform"
    )
    learners = reference_learners(steps=1)
    learners = {name: learners[name] for name in ("gd_1step", "ols", "ridge")}
    tuned = tune_learners(task, learners, n_prompts=args.n_tune, seed=TUNE_SEED)
    prompts = task.sample(args.n_align, seed_generator(EVAL_SEED))
    eval_prompts = task.sample(min(args.n_eval, 2000), seed_generator(EVAL_SEED + 1))
    return ControlContext(
        task=task,
        n_context=args.lsa_context,
        gd_lr=tuned["gd_1step"][args.lsa_context]["lr"],
        learners=learners,
        prompts=prompts,
        weights=fitted_weights(learners, tuned, prompts),
        eval_prompts=eval_prompts,
        eval_weights=fitted_weights(learners, tuned, eval_prompts),
        n_probe=args.n_probe,
    )


def measure(model, context: ControlContext) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Alignment (learner -> preds_diff / sensitivity_cosine) and update cosines (FT variant -> cosine) at N."""
    n = context.n_context
    predictions, sensitivities = layer_outputs(model, context.prompts, n)
    aligned = {}
    for name, w in context.weights.items():
        learner_prediction = (w[:, n] * context.prompts.xs[:, n].double()).sum(-1)
        aligned[name] = {
            "preds_diff": preds_diff(predictions[-1], learner_prediction),
            "sensitivity_cosine": sensitivity_cosine(sensitivities[-1], w[:, n]),
        }
    cosines = update_cosines(
        model, context.prompts, context.task, [n], {n: context.gd_lr}, 1, context.n_probe, PROBE_SEED
    )
    return aligned, {name: entry["per_k"][n] for name, entry in cosines.items()}


def constructed_rung(context: ControlContext) -> ControlRung:
    model = LinearSelfAttentionForInContextRegression.from_gradient_descent(
        context.task.n_dims, context.gd_lr, steps=1, dtype=torch.float64
    )
    aligned, cosines = measure(model, context)
    return ControlRung(
        name="a_constructed_lsa",
        ft_definition=FT_DEFINITION,
        preds_diff=Interval.of([aligned["gd_1step"]["preds_diff"]]),
        sensitivity_cosine=Interval.of([aligned["gd_1step"]["sensitivity_cosine"]]),
        update_cosine={name: Interval.of([value]) for name, value in cosines.items()},
    )


def build(args, context: ControlContext, eta: str, seed: int):
    return build_lsa_model(context.task.n_dims, seed)


def stream(context: ControlContext, seed: int):
    return regression_stream(context.task, seed)


def evaluate(model, job: Job, args, context: ControlContext) -> RunRecord:
    aligned, cosines = measure(model, context)
    with torch.no_grad():
        error = lsa_curve(model, context.eval_prompts, context.task.n_dims, [context.n_context])[
            context.n_context
        ]
    n = str(context.n_context)
    return RunRecord(
        eta=job.eta,
        seed=job.seed,
        learning_rate=job.lr,
        steps=args.lsa_steps,
        headline=float(error.mean()),
        anchor_gap=float("nan"),
        curve=[float(error.mean())],
        alignment={name: {n: [values]} for name, values in aligned.items()},
        update_cosine={name: {n: value} for name, value in cosines.items()},
    )


def trained_rung(records: list[RunRecord], context: ControlContext, steps: int) -> ControlRung:
    n = str(context.n_context)
    learner_errors = learner_curves(context.eval_weights, context.eval_prompts, context.task.n_dims)
    return ControlRung(
        name=f"b_trained_lsa ({len(records)} seeds, {steps} steps)",
        ft_definition="the same",
        preds_diff=Interval.of([r.alignment["gd_1step"][n][0]["preds_diff"] for r in records]),
        sensitivity_cosine=Interval.of(
            [r.alignment["gd_1step"][n][0]["sensitivity_cosine"] for r in records]
        ),
        update_cosine={
            name: Interval.of([r.update_cosine[name][n] for r in records])
            for name in records[0].update_cosine
        },
        error=Interval.of([r.headline for r in records]),
        learner_error={
            name: float(errors[:, context.n_context].mean()) for name, errors in learner_errors.items()
        },
    )


def positive_control(context: ControlContext, trained: list[RunRecord], steps: int) -> PositiveControl:
    rungs = [constructed_rung(context)]
    if trained:
        rungs.append(trained_rung(trained, context, steps))
    setting = {
        "n_dims": context.task.n_dims,
        "n_context": context.n_context,
        "x_distribution": "uniform",
        "gd_lr": context.gd_lr,
    }
    return PositiveControl(setting=setting, rungs=rungs)


__all__ = ["FT_DEFINITION", "ControlContext", "constructed_rung", "positive_control", "prepare"]
