"""The lab pipeline: tune the learners -> positive-control ladder -> train every (eta, seed) -> evaluate ->
aggregate over seeds -> results.json, report.md and plots.

Runs are resumable: each (eta, seed) keeps its trained model and its evaluation under `out/runs/<task>/...`, and a
rerun with the same settings reuses them, so an interrupted headline run loses at most one model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.icl_regression import (
    LinearSelfAttentionForInContextRegression,
    MomentumGPTForInContextRegression,
)
from ..models.momentum_gpt import MomentumGPTForCausalLM
from .config import LEARNABLE, ICLLabArguments, LabInputError
from .evaluation import (
    alignment,
    fitted_weights,
    layer_outputs,
    learner_curves,
    lsa_curve,
    model_curve,
    mqar_accuracy,
    update_cosine_mean,
    update_cosines,
)
from .learners import Learner, momentum_gradient_descent, reference_learners, tune_learners
from .measures import mean_interval, paired_difference, preds_diff, sensitivity_cosine, verdict
from .tasks import LinearRegressionTask, MQARTask, mqar_stream, regression_stream, seed_generator
from .training import build_lsa_model, build_mqar_model, build_regression_model, learned_etas, train

# Disjoint random streams: training uses the run's seed; these never coincide with it.
EVAL_SEED = 1_000_003
TUNE_SEED = 2_000_003
PROBE_SEED = 3_000_017
CONTROL_SEED = 4_000_037
#: Bump when the per-run evaluation changes, so cached evaluations are recomputed (models are kept).
EVAL_VERSION = 1

FT_DEFINITIONS = {
    "a": "one explicit GD step, from w = 0, on the k demonstrations of the linear regressor y = w.x "
    "(learning rate tuned on held-out prompts); the constructed layer implements exactly this step",
    "b": "the same: one explicit GD step from w = 0 on the demonstrations, learning rate tuned on held-out prompts",
    "c": "{steps} explicit GD steps, from w = 0, on the k demonstrations of the linear regressor y = w.x (learning "
    "rate tuned on held-out prompts per k); also 'ols' (training to convergence) and GD on shuffled labels (a null)",
}


def _json_ready(value):
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, torch.Tensor):
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_json_ready(data), indent=1))
    os.replace(tmp, path)  # atomic: an interruption never leaves half a file


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": list(load)}


def alignment_ks(task: LinearRegressionTask) -> list[int]:
    """Where alignment is measured: fewer examples than dimensions, as many, and the most the prompt has."""
    return sorted({max(1, task.n_dims // 2), min(task.n_dims, task.max_examples), task.max_examples})


# ------------------------------------------------------------------------------------------------ positive control


def _lsa_task(args: ICLLabArguments) -> LinearRegressionTask:
    # von Oswald et al.'s setting: x ~ U(-1, 1)^d, N context points plus the query.
    return LinearRegressionTask(
        n_dims=args.lsa_n_dims, n_points=args.lsa_context + 1, x_distribution="uniform"
    )


def _lsa_rung(model, prompts, task, n_context: int, gd_lr: float, learners_weights, n_probe: int) -> dict:
    """Alignment and update cosines of an LSA model (constructed or trained) at N = n_context."""
    predictions, sensitivities = layer_outputs(model, prompts, n_context)
    rung = {"alignment": {}}
    for name, w in learners_weights.items():
        learner_prediction = (w[:, n_context] * prompts.xs[:, n_context].double()).sum(-1)
        rung["alignment"][name] = {
            "preds_diff": preds_diff(predictions[-1], learner_prediction),
            "sensitivity_cosine": sensitivity_cosine(sensitivities[-1], w[:, n_context]),
        }
    cosines = update_cosines(model, prompts, task, [n_context], {n_context: gd_lr}, 1, n_probe, PROBE_SEED)
    rung["update_cosine"] = {name: entry["mean"] for name, entry in cosines.items()}
    return rung


def positive_control(args: ICLLabArguments, out: Path, train_lsa: bool) -> dict:
    """Rung (a): the constructed one-GD-step LSA; rung (b): single-layer LSAs trained on von Oswald's task."""
    task = _lsa_task(args)
    n_context = args.lsa_context
    learners = reference_learners(steps=1)
    learners = {name: learners[name] for name in ("gd_1step", "ols", "ridge")}
    tuned = tune_learners(task, learners, n_prompts=args.n_tune, seed=TUNE_SEED)
    gd_lr = tuned["gd_1step"][n_context]["lr"]
    prompts = task.sample(args.n_align, seed_generator(EVAL_SEED))
    weights = fitted_weights(learners, tuned, prompts)

    constructed = LinearSelfAttentionForInContextRegression.from_gradient_descent(
        task.n_dims, gd_lr, steps=1, dtype=torch.float64
    )
    rung_a = _lsa_rung(constructed, prompts, task, n_context, gd_lr, weights, args.n_probe)
    result = {
        "preds_diff": rung_a["alignment"]["gd_1step"]["preds_diff"],
        "sensitivity_cosine": rung_a["alignment"]["gd_1step"]["sensitivity_cosine"],
        "update_cosine": rung_a["update_cosine"]["gd"],
        "setting": {**task.__dict__, "n_context": n_context, "gd_lr": gd_lr},
        "rungs": {"a_constructed_lsa": {**rung_a, "ft_definition": FT_DEFINITIONS["a"]}},
    }
    if not train_lsa or args.lsa_steps <= 0:
        return result

    eval_prompts = task.sample(args.n_eval, seed_generator(EVAL_SEED + 1))
    eval_weights = fitted_weights(learners, tuned, eval_prompts)
    per_seed = {}
    _check_reusable(args, out / "runs" / "lsa", "lsa")
    for seed in args.seed_list:
        run_dir = out / "runs" / "lsa" / f"seed={seed}"
        model = _train_or_load(
            run_dir,
            LinearSelfAttentionForInContextRegression,
            lambda seed=seed: build_lsa_model(task.n_dims, seed),
            lambda model, seed=seed, run_dir=run_dir: train(
                model,
                regression_stream(task, seed),
                output_dir=run_dir / "trainer",
                steps=args.lsa_steps,
                batch_size=256,
                learning_rate=args.lsa_learning_rate,
                seed=seed,
                warmup_ratio=args.warmup_ratio,
                progress=args.progress,
            ),
        )
        rung = _lsa_rung(model, prompts, task, n_context, gd_lr, weights, args.n_probe)
        with torch.no_grad():
            model_error = lsa_curve(model, eval_prompts, task.n_dims, [n_context])[n_context].mean().item()
        rung["error"] = model_error
        per_seed[seed] = rung
    learner_errors = learner_curves(eval_weights, eval_prompts, task.n_dims)
    rung_b = {
        "ft_definition": FT_DEFINITIONS["b"],
        "per_seed": per_seed,
        "error": mean_interval([r["error"] for r in per_seed.values()]),
        "learner_error": {
            name: errors[:, n_context].mean().item() for name, errors in learner_errors.items()
        },
        "alignment": {
            name: {
                measure: mean_interval([r["alignment"][name][measure] for r in per_seed.values()])
                for measure in ("preds_diff", "sensitivity_cosine")
            }
            for name in learners
        },
        "update_cosine": {
            name: mean_interval([r["update_cosine"][name] for r in per_seed.values()])
            for name in rung_a["update_cosine"]
        },
        "steps": args.lsa_steps,
    }
    result["rungs"]["b_trained_lsa"] = rung_b
    return result


# ------------------------------------------------------------------------------------------------ runs


def _train_or_load(run_dir: Path, model_class, build, fit):
    """Load the run's trained model if it is there, else build, train and save it (with its training log)."""
    model_dir = run_dir / "model"
    if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
        return model_class.from_pretrained(model_dir).eval()
    model = build()
    started = time.time()
    log = fit(model)
    model.save_pretrained(model_dir)
    _write_json(run_dir / "train_log.json", {"log_history": log, "train_seconds": time.time() - started})
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    return model.eval()


def _momentum_at_eta_learner(eta: float, steps: int) -> Learner:
    return Learner(
        "momentum_gd_at_eta",
        lambda xs, ys, lr: momentum_gradient_descent(xs, ys, lr, eta, steps),
        {"lr": reference_learners(steps)["gd"].grid["lr"]},
        f"{steps} heavy-ball GD steps with momentum fixed to the model's eta ({eta:.3g}), lr tuned",
    )


def _arm_eta(eta: str, model) -> float:
    """The eta a momentum-GD learner should use for this arm: the fixed one, or the mean learned one."""
    if eta != LEARNABLE:
        return float(eta)
    values = [v for layer in learned_etas(model) for v in layer]
    return sum(values) / len(values)


def _evaluate_regression_run(model, eta: str, seed: int, context: dict) -> dict:
    args, task = context["args"], context["task"]
    curve = model_curve(model, context["eval_prompts"], task.n_dims).mean(0)
    weights = dict(context["align_weights"])
    extra = {}
    arm_eta = _arm_eta(eta, model)
    if arm_eta > 0:
        learner = _momentum_at_eta_learner(arm_eta, args.iterations)
        tuned = tune_learners(task, {learner.name: learner}, n_prompts=args.n_tune, seed=TUNE_SEED)
        weights[learner.name] = fitted_weights({learner.name: learner}, tuned, context["align_prompts"])[
            learner.name
        ]
        extra = {"momentum_gd_at_eta": {"eta": arm_eta, "hyperparameters": tuned[learner.name]}}
    ks = context["ks"]
    aligned = alignment(model, context["align_prompts"], ks, weights)
    lrs = {k: context["tuned"]["gd"][k]["lr"] for k in ks}
    cosines = update_cosines(
        model, context["align_prompts"], task, ks, lrs, args.iterations, args.n_probe, PROBE_SEED
    )
    untrained = build_regression_model(args, task, eta, seed).eval()
    untrained_cosines = update_cosines(
        untrained, context["align_prompts"], task, ks, lrs, args.iterations, args.n_probe, PROBE_SEED
    )
    return {
        "eval_version": EVAL_VERSION,
        "curve": curve.tolist(),
        "mean_error": curve[1:].mean().item(),
        "alignment": aligned,
        "update_cosine": cosines,
        "untrained_update_cosine": untrained_cosines,
        "learned_etas": learned_etas(model),
        **extra,
    }


def _evaluate_mqar_run(model, eta: str, seed: int, context: dict) -> dict:
    accuracy = mqar_accuracy(model, context["task"], context["kv_counts"], context["args"].n_eval, EVAL_SEED)
    return {
        "eval_version": EVAL_VERSION,
        "accuracy": {str(count): value for count, value in accuracy.items()},
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
        "learned_etas": learned_etas(model),
    }


#: The settings a trained run depends on: reusing a run needs all of them unchanged.
_TRAINING_FIELDS = {
    "linear-regression": ("n_dims", "max_examples", "noise_std", "x_distribution"),
    "mqar": ("vocab_size", "max_kv_pairs"),
    "lsa": ("lsa_n_dims", "lsa_context", "lsa_steps", "lsa_learning_rate"),
    "common": ("steps", "num_layers", "hidden_size", "num_heads", "batch_size", "learning_rate", "warmup_ratio",
               "learnable_eta_init"),
}  # fmt: skip


def _check_reusable(args: ICLLabArguments, folder: Path, kind: str) -> None:
    """Record the training settings of `folder`'s runs, or check that a rerun uses the same ones (else refuse)."""
    names = _TRAINING_FIELDS[kind] + (_TRAINING_FIELDS["common"] if kind != "lsa" else ())
    settings = {name: getattr(args, name) for name in names}
    path = folder / "training_settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [
            f"{name}: {saved.get(name)} -> {value}"
            for name, value in settings.items()
            if saved.get(name) != value
        ]
        if changed:
            raise LabInputError(
                f"{folder} holds runs trained with other settings ({', '.join(changed)}); "
                "use another --out or delete that folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)


def _run_arms(
    args: ICLLabArguments, out: Path, context: dict, build, make_stream, evaluate, model_class
) -> dict:
    """Train (or reuse) and evaluate every (eta, seed); returns eta -> seed -> evaluation."""
    _check_reusable(args, out / "runs" / args.task, args.task)
    evaluations: dict[str, dict[int, dict]] = {}
    pairs = [(eta, seed) for eta in args.eta_list for seed in args.seed_list]
    for eta, seed in tqdm(pairs, desc=f"{args.task} runs", disable=not args.progress):
        run_dir = out / "runs" / args.task / f"eta={eta}" / f"seed={seed}"
        eval_path = run_dir / "eval.json"
        if eval_path.is_file():
            cached = json.loads(eval_path.read_text())
            if cached.get("eval_version") == EVAL_VERSION:
                evaluations.setdefault(eta, {})[seed] = cached
                continue
        model = _train_or_load(
            run_dir,
            model_class,
            lambda eta=eta, seed=seed: build(args, context["task"], eta, seed),
            lambda model, seed=seed, run_dir=run_dir: train(
                model,
                make_stream(context["task"], seed),
                output_dir=run_dir / "trainer",
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                seed=seed,
                warmup_ratio=args.warmup_ratio,
                progress=args.progress,
            ),
        )
        evaluation = evaluate(model, eta, seed, context)
        train_log = run_dir / "train_log.json"
        if train_log.is_file():
            evaluation["train_seconds"] = json.loads(train_log.read_text())["train_seconds"]
        _write_json(eval_path, evaluation)
        evaluations.setdefault(eta, {})[seed] = json.loads(eval_path.read_text())
    return evaluations


# ------------------------------------------------------------------------------------------------ aggregation


def _per_seed_interval(values_by_seed: Mapping[int, Sequence[float]]) -> dict:
    """Pointwise mean and interval over seeds of equally long per-seed lists."""
    columns = list(zip(*values_by_seed.values()))
    stats = [mean_interval(column) for column in columns]
    return {
        "mean": [s["mean"] for s in stats],
        "low": [s["low"] for s in stats],
        "high": [s["high"] for s in stats],
        "n_seeds": len(values_by_seed),
        "per_seed": {str(seed): list(values) for seed, values in values_by_seed.items()},
    }


def _paired_against_reference(
    evaluations: Mapping[str, Mapping[int, dict]], key: str, reference: str, lower_is_better: bool
) -> dict[str, dict]:
    """Per arm: the paired (arm - reference) difference of a per-seed scalar over the seeds both have."""
    out = {}
    if reference not in evaluations:
        return out
    for eta, runs in evaluations.items():
        if eta == reference:
            continue
        seeds = sorted(set(runs) & set(evaluations[reference]))
        difference = paired_difference(
            [runs[s][key] for s in seeds], [evaluations[reference][s][key] for s in seeds]
        )
        difference["verdict"] = verdict(difference, lower_is_better=lower_is_better)
        out[eta] = difference
    return out


def _aggregate_alignment(evaluations: Mapping[str, Mapping[int, dict]]) -> dict:
    result = {}
    for eta, runs in evaluations.items():
        first = next(iter(runs.values()))
        arm = {}
        for name in first["alignment"]:
            seeds = [s for s in runs if name in runs[s]["alignment"]]
            entry = {}
            for measure in ("preds_diff", "sensitivity_cosine"):
                stats = mean_interval([runs[s]["alignment"][name][measure] for s in seeds])
                entry[measure] = stats["mean"]
                entry[f"{measure}_interval"] = [stats["low"], stats["high"]]
            n_layers = len(first["alignment"][name]["per_layer"])
            entry["per_layer"] = [
                {
                    measure: mean_interval(
                        [runs[s]["alignment"][name]["per_layer"][layer][measure] for s in seeds]
                    )
                    for measure in ("preds_diff", "sensitivity_cosine")
                }
                for layer in range(n_layers)
            ]
            arm[name] = entry
        seeds = sorted(runs)
        # Do momentum models look more like momentum-GD than like plain GD? Paired over seeds, last layer.
        comparison = paired_difference(
            [runs[s]["alignment"]["momentum_gd"]["sensitivity_cosine"] for s in seeds],
            [runs[s]["alignment"]["gd"]["sensitivity_cosine"] for s in seeds],
        )
        comparison["verdict"] = verdict(comparison, lower_is_better=False)
        arm["momentum_gd_minus_gd_cosine"] = comparison
        if all("momentum_gd_at_eta" in runs[s]["alignment"] for s in seeds):
            at_eta = paired_difference(
                [runs[s]["alignment"]["momentum_gd_at_eta"]["sensitivity_cosine"] for s in seeds],
                [runs[s]["alignment"]["gd"]["sensitivity_cosine"] for s in seeds],
            )
            at_eta["verdict"] = verdict(at_eta, lower_is_better=False)
            arm["momentum_gd_at_eta_minus_gd_cosine"] = at_eta
        for key in ("update_cosine", "untrained_update_cosine"):
            arm[key] = {
                name: mean_interval([update_cosine_mean(name, runs[s][key][name]["per_k"]) for s in seeds])
                for name in first[key]
            }
        result[eta] = arm
    if "0" in evaluations:
        # Momentum-GD is the better learner whatever the model, so the question is whether the momentum arms' gain
        # exceeds the eta = 0 models' gain: a difference of differences, paired by seed.
        def gain(runs, seed):
            entry = runs[seed]["alignment"]
            return entry["momentum_gd"]["sensitivity_cosine"] - entry["gd"]["sensitivity_cosine"]

        for eta, runs in evaluations.items():
            if eta == "0":
                continue
            seeds = sorted(set(runs) & set(evaluations["0"]))
            difference = paired_difference(
                [gain(runs, s) for s in seeds], [gain(evaluations["0"], s) for s in seeds]
            )
            difference["verdict"] = verdict(difference, lower_is_better=False)
            result[eta]["momentum_gd_gain_vs_eta0"] = difference
    return result


def _training_time(out: Path) -> dict:
    """Training seconds summed over every run kept under `out/runs` (all arms, seeds and the LSA rung), as logged
    by the process that trained each one -- the lab's compute, whatever number of invocations it took."""
    seconds = [
        json.loads(p.read_text())["train_seconds"] for p in sorted(out.glob("runs/*/**/train_log.json"))
    ]
    return {
        "runs": len(seconds),
        "train_seconds_total": sum(seconds),
        "train_seconds_max": max(seconds, default=0.0),
    }


def _learned_eta_summary(evaluations: Mapping[str, Mapping[int, dict]]) -> dict:
    if LEARNABLE not in evaluations:
        return {}
    per_seed = {seed: run["learned_etas"] for seed, run in evaluations[LEARNABLE].items()}
    flat = [v for etas in per_seed.values() for layer in etas for v in layer]
    return {"per_seed": per_seed, "mean": sum(flat) / len(flat), "min": min(flat), "max": max(flat)}


# ------------------------------------------------------------------------------------------------ the two labs


def run_regression_lab(args: ICLLabArguments, out: Path) -> dict:
    task = LinearRegressionTask(
        n_dims=args.n_dims,
        n_points=args.max_examples + 1,
        noise_std=args.noise_std,
        x_distribution=args.x_distribution,
    )
    learners = reference_learners(args.iterations)
    tuned = tune_learners(task, learners, n_prompts=args.n_tune, seed=TUNE_SEED)
    eval_prompts = task.sample(args.n_eval, seed_generator(EVAL_SEED))
    align_prompts = eval_prompts[: args.n_align]
    weights = fitted_weights(learners, tuned, eval_prompts)
    errors = learner_curves(weights, eval_prompts, task.n_dims)
    baselines = {}
    for name, learner in learners.items():
        stats = [mean_interval(errors[name][:, k].tolist()) for k in range(task.n_points)]
        baselines[name] = {
            "description": learner.description,
            "error": [s["mean"] for s in stats],
            "low": [s["low"] for s in stats],
            "high": [s["high"] for s in stats],
            "interval_over": f"{args.n_eval} evaluation prompts",
            "hyperparameters": tuned[name],
        }

    control = positive_control(args, out, train_lsa=True)
    context = {
        "args": args,
        "task": task,
        "tuned": tuned,
        "eval_prompts": eval_prompts,
        "align_prompts": align_prompts,
        "align_weights": {name: w[: args.n_align] for name, w in weights.items()},
        "ks": alignment_ks(task),
    }
    evaluations = _run_arms(
        args,
        out,
        context,
        build_regression_model,
        regression_stream,
        _evaluate_regression_run,
        MomentumGPTForInContextRegression,
    )
    curves = {}
    for eta, runs in evaluations.items():
        curves[eta] = {
            "k": list(range(task.n_points)),
            **_per_seed_interval({seed: run["curve"] for seed, run in runs.items()}),
            "mean_error": mean_interval([run["mean_error"] for run in runs.values()]),
            "train_seconds": mean_interval([run.get("train_seconds", math.nan) for run in runs.values()]),
        }
    aligned = _aggregate_alignment(evaluations)
    control["rungs"]["c_momentum_gpt"] = {
        "ft_definition": FT_DEFINITIONS["c"].format(steps=args.iterations),
        "update_cosine": {eta: arm["update_cosine"] for eta, arm in aligned.items()},
        "untrained_update_cosine": {eta: arm["untrained_update_cosine"] for eta, arm in aligned.items()},
    }
    if "0" in evaluations:
        # Per-k paired differences too, so the report can say where in the curve a difference sits.
        for eta, runs in evaluations.items():
            if eta == "0":
                continue
            seeds = sorted(set(runs) & set(evaluations["0"]))
            curves[eta]["paired_vs_eta0_per_k"] = [
                paired_difference(
                    [runs[s]["curve"][k] for s in seeds], [evaluations["0"][s]["curve"][k] for s in seeds]
                )
                for k in range(task.n_points)
            ]
    momentum = {
        "measure": "mean normalised squared error over k = 1..K (lower is better), paired over seeds",
        "paired_vs_eta0": _paired_against_reference(evaluations, "mean_error", "0", lower_is_better=True),
        "learned_eta": _learned_eta_summary(evaluations),
        "alignment_momentum_gd_minus_gd": {
            eta: arm["momentum_gd_minus_gd_cosine"] for eta, arm in aligned.items()
        },
        "alignment_momentum_gd_gain_vs_eta0": {
            eta: arm["momentum_gd_gain_vs_eta0"]
            for eta, arm in aligned.items()
            if "momentum_gd_gain_vs_eta0" in arm
        },
    }
    return {
        "curves": curves,
        "baselines": baselines,
        "alignment": aligned,
        "positive_control": control,
        "momentum": momentum,
        "alignment_ks": context["ks"],
    }


def run_mqar_lab(args: ICLLabArguments, out: Path) -> dict:
    task = MQARTask(vocab_size=args.vocab_size, max_kv_pairs=args.max_kv_pairs)
    kv_counts = list(range(1, task.max_kv_pairs + 1))
    context = {"args": args, "task": task, "kv_counts": kv_counts}
    evaluations = _run_arms(
        args, out, context, build_mqar_model, mqar_stream, _evaluate_mqar_run, MomentumGPTForCausalLM
    )
    accuracy, curves = {}, {}
    for eta, runs in evaluations.items():
        per_seed = {seed: [run["accuracy"][str(c)] for c in kv_counts] for seed, run in runs.items()}
        accuracy[eta] = {
            "kv_pairs": kv_counts,
            **_per_seed_interval(per_seed),
            "mean_accuracy": mean_interval([run["mean_accuracy"] for run in runs.values()]),
            "train_seconds": mean_interval([run.get("train_seconds", math.nan) for run in runs.values()]),
        }
        curves[eta] = {
            "k": kv_counts,
            "quantity": "error rate (1 - accuracy) vs number of key-value pairs",
            **_per_seed_interval({seed: [1 - a for a in values] for seed, values in per_seed.items()}),
        }
    baselines = {
        "chance_any_value": {
            "description": "uniform guess over all value tokens",
            "error": [1 - 1 / task.n_values for _ in kv_counts],
        },
        "chance_prompt_value": {
            "description": "uniform guess over the n values in the prompt",
            "error": [1 - 1 / c for c in kv_counts],
        },
    }
    momentum = {
        "measure": f"mean accuracy over 1..{task.max_kv_pairs} key-value pairs (higher is better), paired over seeds",
        "paired_vs_eta0": _paired_against_reference(evaluations, "mean_accuracy", "0", lower_is_better=False),
        "learned_eta": _learned_eta_summary(evaluations),
    }
    return {
        "curves": curves,
        "baselines": baselines,
        "alignment": {},
        "positive_control": positive_control(args, out, train_lsa=False),
        "accuracy": accuracy,
        "momentum": momentum,
    }


def run_icl_lab(args: ICLLabArguments) -> dict:
    """Run the lab for `args.task` and write results.json, report.md and the plots into `args.out`."""
    from .report import write_outputs

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine_before = _machine()
    run = run_regression_lab if args.task == "linear-regression" else run_mqar_lab
    results = run(args, out)
    results = {
        "config": {
            **args.to_dict(),
            "wall_seconds": time.time() - started,
            "machine_at_start": machine_before,
            "machine_at_end": _machine(),
            "seeds": {"evaluation": EVAL_SEED, "tuning": TUNE_SEED, "probes": PROBE_SEED},
            "torch": torch.__version__,
        },
        **results,
    }
    results["config"]["training_time"] = _training_time(out)
    write_outputs(results, out)
    return results
