"""The regression stages of the lab: prompts and reference learners (tuned on held-out prompts) before training,
then the evaluation of one trained model into a `RunRecord`.

Disjoint random streams: training uses the run's seed; evaluation, tuning, gate (held-out, for steps-to-threshold
and the learning-rate sweep), probe and out-of-distribution prompts each have their own seed, shared by every
model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..models.icl_regression import MomentumGPTForInContextRegression
from .config import LEARNABLE
from .evaluation import (
    alignment,
    fitted_weights,
    learner_curves,
    model_curve,
    regression_anchor_measure,
    update_cosines,
)
from .gate import regression_gate_ks, regression_reference
from .learners import Learner, learner_weights, online_momentum_at_eta, reference_learners, tune_learners
from .results import Curve, LearnerSummary, RunRecord
from .runs import Job
from .tasks import (
    Curriculum,
    LinearRegressionTask,
    RegressionPrompts,
    StepCounter,
    regression_stream,
    seed_generator,
)
from .training import (
    AnchorProbe,
    CurriculumCallback,
    ModelSettings,
    build_regression_model,
    learned_etas,
)

EVAL_SEED = 1_000_003
TUNE_SEED = 2_000_003
PROBE_SEED = 3_000_017
GATE_SEED = 5_000_011
OOD_SEED = 6_000_007

OOD_VARIANTS = {
    "inputs_x2": "x scaled by 2 (so y by 2; Garg et al.)",
    "inputs_x0.5": "x scaled by 0.5",
    "skewed_covariance": "x ~ N(0, Σ), eigenvalues ∝ 1/i² rescaled to trace d (Garg et al.)",
    "longer_prompts": "k beyond training: prompts of K + extra examples (positions never trained)",
}


@dataclass
class OODSet:
    name: str
    prompts: RegressionPrompts
    learner_curves: dict[str, torch.Tensor]  # name -> (n, P)


@dataclass
class RegressionContext:
    """Everything the evaluation of one run needs, computed once per process."""

    task: LinearRegressionTask
    iterations: int
    learners: dict[str, Learner]
    tuned: dict[str, dict[int, dict[str, float]]]
    eval_prompts: RegressionPrompts
    learner_curves: dict[str, torch.Tensor]
    align_prompts: RegressionPrompts
    align_weights: dict[str, torch.Tensor]
    alignment_ks: list[int]
    cosine_ks: list[int]
    gate_ks: list[int]
    reference: str
    reference_eval: torch.Tensor  # (P,) the gate's reference curve on the evaluation prompts
    gate_prompts: RegressionPrompts
    reference_gate: torch.Tensor  # (P,) on the held-out gate prompts
    n_tune: int
    n_probe: int
    ood: dict[str, OODSet] = field(default_factory=dict)


def make_task(args) -> LinearRegressionTask:
    return LinearRegressionTask(
        n_dims=args.n_dims,
        n_points=args.max_examples + 1,
        noise_std=args.noise_std,
        x_distribution=args.x_distribution,
        drift_std=args.drift_std,
    )


def model_settings(args) -> ModelSettings:
    return ModelSettings(args.num_layers, args.hidden_size, args.num_heads, args.learnable_eta_init)


def alignment_ks(task: LinearRegressionTask) -> list[int]:
    """Where alignment is measured: fewer examples than dimensions, as many, twice as many, and the most."""
    d, k_max = task.n_dims, task.max_examples
    return sorted({max(1, d // 2), min(d, k_max), min(2 * d, k_max), k_max})


def _extend(tuned: Mapping[int, dict], max_k: int) -> dict[int, dict]:
    """Hyperparameters for k beyond the tuned range: those of the largest tuned k."""
    last = max(tuned) if tuned else None
    return {k: tuned.get(k, tuned[last] if last is not None else {}) for k in range(1, max_k + 1)}


def reference_curve(name: str, curves: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if name == "best_of_ols_ridge":
        return torch.minimum(curves["ols"].mean(0), curves["ridge"].mean(0))
    return curves[name].mean(0)


def prepare(args) -> RegressionContext:
    """Tune every learner on held-out prompts, fit them on the evaluation and out-of-distribution prompts."""
    task = make_task(args)
    iterations = args.learner_steps or args.num_layers
    learners = reference_learners(iterations, drift_std=task.drift_std, noise_std=task.noise_std)
    tuned = tune_learners(task, learners, n_prompts=args.n_tune, seed=TUNE_SEED)
    eval_prompts = task.sample(args.n_eval, seed_generator(EVAL_SEED))
    weights = fitted_weights(learners, tuned, eval_prompts)
    curves = learner_curves(weights, eval_prompts, task.n_dims)
    gate_prompts = task.sample(args.n_gate, seed_generator(GATE_SEED))
    gate_curves = learner_curves(fitted_weights(learners, tuned, gate_prompts), gate_prompts, task.n_dims)
    reference = regression_reference(task.noise_std, task.drift_std)
    n_align = min(args.n_align, args.n_eval)
    context = RegressionContext(
        task=task,
        iterations=iterations,
        learners=learners,
        tuned=tuned,
        eval_prompts=eval_prompts,
        learner_curves=curves,
        align_prompts=eval_prompts[:n_align],
        align_weights={name: w[:n_align] for name, w in weights.items()},
        alignment_ks=alignment_ks(task),
        cosine_ks=list(range(1, task.n_points)),
        gate_ks=regression_gate_ks(task.n_dims, task.max_examples),
        reference=reference,
        reference_eval=reference_curve(reference, curves),
        gate_prompts=gate_prompts,
        reference_gate=reference_curve(reference, gate_curves),
        n_tune=args.n_tune,
        n_probe=args.n_probe,
    )
    if args.ood:
        variants = {
            "inputs_x2": task.replace(input_scale=2.0),
            "inputs_x0.5": task.replace(input_scale=0.5),
            "skewed_covariance": task.replace(covariance="skewed")
            if task.x_distribution == "gaussian"
            else None,
            "longer_prompts": task.replace(n_points=task.n_points + args.extra_examples)
            if args.extra_examples > 0
            else None,
        }
        for offset, (name, variant) in enumerate(variants.items()):
            if variant is None:
                continue
            prompts = variant.sample(args.n_ood, seed_generator(OOD_SEED + offset))
            ood_weights = {
                learner_name: learner_weights(
                    learner, prompts, _extend(tuned[learner_name], variant.max_examples)
                )
                for learner_name, learner in learners.items()
            }
            context.ood[name] = OODSet(name, prompts, learner_curves(ood_weights, prompts, task.n_dims))
    return context


def build(args, context: RegressionContext, eta: str, seed: int):
    return build_regression_model(
        model_settings(args), context.task, eta, seed, max_points=context.task.n_points + args.extra_examples
    )


def stream_and_callbacks(args, context: RegressionContext, seed: int):
    """The training stream of `seed` (with Garg et al.'s curriculum if asked) and the callbacks that go with it."""
    probe = AnchorProbe(
        regression_anchor_measure(
            context.gate_prompts, context.reference_gate, context.gate_ks, context.task.n_dims
        )
        if context.gate_ks
        else (lambda model: float("nan")),
        every=args.anchor_every or max(1, args.steps // 20),
        threshold=0.01,
    )
    callbacks = [probe]
    if args.curriculum:
        interval = args.curriculum_interval or max(1, args.steps // 10)
        curriculum = Curriculum(
            start_dims=min(args.curriculum_start_dims, context.task.n_dims),
            start_points=min(args.curriculum_start_examples + 1, context.task.n_points),
            interval=interval,
        )
        counter = StepCounter()
        callbacks.append(CurriculumCallback(counter))
        stream = regression_stream(
            context.task, seed, curriculum=curriculum, counter=counter, block=args.batch_size
        )
    else:
        stream = regression_stream(context.task, seed)
    return stream, probe, callbacks


def arm_eta(eta: str, model) -> float:
    """The eta a momentum learner should use for this arm: the fixed one, or the mean learned one."""
    if eta != LEARNABLE:
        return float(eta)
    values = [v for layer in learned_etas(model) for v in layer]
    return sum(values) / len(values)


def evaluate(
    model: MomentumGPTForInContextRegression, job: Job, args, context: RegressionContext
) -> RunRecord:
    """Error curves (in and out of distribution), the anchor gap, alignment with every learner, update cosines."""
    task = context.task
    curve = model_curve(model, context.eval_prompts, task.n_dims).mean(0)
    held_out = model_curve(model, context.gate_prompts, task.n_dims).mean(0)
    gap = max((float(curve[k] - context.reference_eval[k]) for k in context.gate_ks), default=float("nan"))
    weights = dict(context.align_weights)
    hyperparameters = {}
    eta_value = arm_eta(job.eta, model)
    if eta_value > 0:
        learner = online_momentum_at_eta(eta_value)
        tuned = tune_learners(task, {learner.name: learner}, n_prompts=context.n_tune, seed=TUNE_SEED)
        weights[learner.name] = learner_weights(learner, context.align_prompts, tuned[learner.name])
        hyperparameters[learner.name] = {str(k): v for k, v in tuned[learner.name].items()}
    aligned = alignment(model, context.align_prompts, context.alignment_ks, weights)
    lrs = {k: context.tuned["gd"][k]["lr"] for k in context.cosine_ks}

    def cosines_of(probed):  # the trained model and its untrained twin, probed identically
        return update_cosines(
            probed, context.align_prompts, task, context.cosine_ks, lrs, context.iterations, context.n_probe,
            PROBE_SEED,
        )  # fmt: skip

    cosines = cosines_of(model)
    untrained = build(args, context, job.eta, job.seed).to(next(model.parameters()).device).eval()
    untrained_cosines = cosines_of(untrained)
    ood = {
        name: model_curve(model, variant.prompts, task.n_dims).mean(0).tolist()
        for name, variant in context.ood.items()
    }
    return RunRecord(
        eta=job.eta,
        seed=job.seed,
        learning_rate=job.lr,
        steps=args.steps,
        headline=float(curve[1:].mean()),
        anchor_gap=gap,
        curve=curve.tolist(),
        ood=ood,
        extra={"held_out_error": float(held_out[1:].mean())},
        learned_etas=learned_etas(model),
        alignment={
            name: {str(k): layers for k, layers in entry["per_k"].items()} for name, entry in aligned.items()
        },
        update_cosine={
            name: {str(k): v for k, v in entry["per_k"].items()} for name, entry in cosines.items()
        },
        untrained_update_cosine={
            name: {str(k): v for k, v in entry["per_k"].items()} for name, entry in untrained_cosines.items()
        },
        learner_hyperparameters=hyperparameters,
    )


def learner_summaries(context: RegressionContext) -> dict[str, LearnerSummary]:
    """Every learner's curve over the evaluation prompts (and out of distribution), with its tuned values."""
    summaries = {}
    ks = list(range(context.task.n_points))
    over = f"{len(context.eval_prompts)} evaluation prompts"
    for name, learner in context.learners.items():
        errors = context.learner_curves[name]
        curve = Curve.of(ks, errors.tolist(), over=over)
        non_monotone = [
            k
            for k in range(2, len(ks))
            if curve.mean[k] > curve.high[k - 1] and curve.high[k - 1] == curve.high[k - 1]
        ]
        ood = {}
        for variant_name, variant in context.ood.items():
            variant_errors = variant.learner_curves[name]
            ood[variant_name] = Curve.of(
                list(range(variant_errors.shape[1])),
                variant_errors.tolist(),
                over=f"{len(variant.prompts)} prompts",
            )
        summaries[name] = LearnerSummary(
            name=name,
            description=learner.description,
            curve=curve,
            hyperparameters={str(k): dict(v) for k, v in context.tuned[name].items()},
            ood=ood,
            non_monotone_k=non_monotone,
        )
    return summaries


__all__ = [
    "EVAL_SEED",
    "GATE_SEED",
    "OOD_SEED",
    "OOD_VARIANTS",
    "PROBE_SEED",
    "TUNE_SEED",
    "RegressionContext",
    "alignment_ks",
    "build",
    "evaluate",
    "learner_summaries",
    "make_task",
    "prepare",
    "stream_and_callbacks",
]
