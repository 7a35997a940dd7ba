"""The lab as a pipeline: tasks -> training -> evaluation -> learners -> statistics -> typed results -> report.

    settings ──► stage.prepare (task, prompts, learners tuned on held-out prompts)
             ──► phase 1: learning-rate sweep per arm (+ the LSA rung), sharded over launcher ranks
             ──► phase 2: every (arm, seed) at the arm's own best learning rate
             ──► evaluation of each run (`RunRecord`, kept as eval.json)
             ──► statistics (`aggregate`: arms, anchor gate, verdicts) ──► `LabResults` ──► outputs

Each stage is its own module (`regression` / `mqar` / `control`, `runs`, `aggregate`, `results`, `report`); this
one only wires them. Processes launched together (``torchrun``, ``accelerate launch``) share one ``--out``: each
trains its share of the runs, and rank 0 aggregates once every run is there. A rerun reuses every finished run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from . import aggregate, control, mqar, regression
from .config import LabInputError
from .gate import describe
from .results import LabResults, RunRecord, SweepRecord
from .runs import Job, RunStore, lr_label
from .training import Shard, TrainSettings, claim_launcher_shard, final_loss, train

#: The settings a trained run depends on: reusing a run needs all of them unchanged (the learning rate is part of
#: each run's folder name).
_TRAINING_FIELDS = {
    "linear-regression": ("n_dims", "max_examples", "noise_std", "x_distribution", "drift_std", "curriculum",
                          "curriculum_start_dims", "curriculum_start_examples", "curriculum_interval"),
    "mqar": ("vocab_size", "max_kv_pairs", "mqar_reassign"),
    "lsa": ("lsa_n_dims", "lsa_context", "lsa_steps"),
    "common": ("steps", "num_layers", "hidden_size", "num_heads", "batch_size", "warmup_ratio", "learnable_eta_init"),
}  # fmt: skip


@dataclass
class Stage:
    """The task-specific stage functions (`regression`, `mqar` or `control`) and their context."""

    kind: str
    module: Any
    context: Any
    model_class: type
    steps: int
    batch_size: int


def _model_class(task: str):
    if task == "mqar":
        from ..models.momentum_gpt import MomentumGPTForCausalLM

        return MomentumGPTForCausalLM
    from ..models.icl_regression import MomentumGPTForInContextRegression

    return MomentumGPTForInContextRegression


def _settings(args, kind: str) -> dict:
    names = _TRAINING_FIELDS[kind] + (_TRAINING_FIELDS["common"] if kind != "lsa" else ())
    settings = {name: getattr(args, name) for name in names}
    if kind == "linear-regression":
        settings["max_points"] = args.max_examples + 1 + args.extra_examples
    return settings


def _log(args, message: str) -> None:
    if args.progress:
        print(f"[icl-lab] {message}", file=sys.stderr, flush=True)


def _run_job(job: Job, stage: Stage, store: RunStore, args) -> RunRecord:
    """Train (or load) and evaluate one run; the evaluation is kept as eval.json."""
    cached = store.record(job)
    if cached is not None:
        return cached
    probe = None

    def fit(model):
        nonlocal probe
        if stage.kind == "lsa":
            stream, callbacks = control.stream(stage.context, job.seed), []
        else:
            stream, probe, callbacks = stage.module.stream_and_callbacks(args, stage.context, job.seed)
        model.to(args.device)
        log = train(
            model,
            stream,
            output_dir=store.folder(job) / "trainer",
            settings=TrainSettings(
                steps=stage.steps,
                batch_size=stage.batch_size,
                learning_rate=job.lr,
                warmup_ratio=args.warmup_ratio,
                device=args.device,
                progress=args.progress,
            ),
            seed=job.seed,
            callbacks=callbacks,
        )
        trace = probe.trace if probe else None
        return {
            "log_history": log,
            "final_loss": final_loss(log),
            "anchor_trace": trace.points if trace else [],
            "steps_to_threshold": trace.steps_to_threshold if trace else None,
        }

    model = store.train_or_load(
        job, stage.model_class, lambda: stage.module.build(args, stage.context, job.eta, job.seed), fit
    )
    model.to(args.device)
    record = stage.module.evaluate(model, job, args, stage.context)
    log = store.train_log(job)
    record.final_loss = log.get("final_loss")
    record.train_seconds = log.get("train_seconds")
    record.steps_to_threshold = log.get("steps_to_threshold")
    record.anchor_trace = [list(point) for point in log.get("anchor_trace", [])]
    store.save_record(job, record)
    return record


def _run_phase(
    jobs: list[Job], stages: dict[str, Stage], store: RunStore, shard: Shard, args, name: str
) -> None:
    mine = [job for index, job in enumerate(jobs) if shard.owns(index)]
    for job in tqdm(mine, desc=f"{name} (rank {shard.rank}/{shard.world_size})", disable=not args.progress):
        _run_job(job, stages[job.kind], store, args)
    store.wait_for(jobs, progress=lambda message: _log(args, message))


def _environment(started: float, shard: Shard, store: RunStore) -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    environment = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": list(load),
        "torch": torch.__version__,
        "processes": shard.world_size,
        "wall_seconds": time.time() - started,
        "training_time": store.training_time(),
    }
    if torch.cuda.is_available():
        environment["cuda_device"] = torch.cuda.get_device_name(0)
    return environment


def _sweep_jobs(args, kind: str) -> tuple[list[Job], int]:
    sweep_seed = args.sweep_seed if args.sweep_seed is not None else args.seed_list[0]
    if len(args.learning_rate_list) < 2:
        return [], sweep_seed
    jobs = [Job(kind, eta, lr, sweep_seed) for eta in args.eta_list for lr in args.learning_rate_list]
    return jobs, sweep_seed


def _choose(records: dict[float, RunRecord]) -> float:
    """The learning rate with the lowest held-out error (never the evaluation prompts)."""
    return min(
        records,
        key=lambda lr: (math.isnan(records[lr].extra["held_out_error"]), records[lr].extra["held_out_error"]),
    )


def run_icl_lab(args) -> LabResults | None:
    """Run the lab for `args.task` and write results.json, report.md and the plots into `args.out`; returns the
    results (None on the ranks > 0 of a launch, which only train their share)."""
    from .report import write_outputs

    started = time.time()
    shard = claim_launcher_shard(args.device)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise LabInputError("--device cuda: no CUDA device is available here")
    store = RunStore(args.out)
    kind = args.task
    store.check_settings(kind, _settings(args, kind))
    is_mqar = kind == "mqar"
    module = mqar if is_mqar else regression
    _log(args, "preparing prompts and tuning the reference learners on held-out prompts")
    stages = {
        kind: Stage(kind, module, module.prepare(args), _model_class(kind), args.steps, args.batch_size)
    }
    lsa_jobs: list[Job] = []
    if not is_mqar and args.lsa_steps > 0:
        from ..models.icl_regression import LinearSelfAttentionForInContextRegression

        store.check_settings("lsa", _settings(args, "lsa"))
        stages["lsa"] = Stage(
            "lsa",
            control,
            control.prepare(args),
            LinearSelfAttentionForInContextRegression,
            args.lsa_steps,
            256,
        )
        lsa_jobs = [Job("lsa", "0", args.lsa_learning_rate, seed) for seed in args.seed_list]

    sweep_jobs, sweep_seed = _sweep_jobs(args, kind)
    _run_phase(sweep_jobs + lsa_jobs, stages, store, shard, args, "learning-rate sweep")
    chosen, sweeps = {}, {}
    for eta in args.eta_list:
        if sweep_jobs:
            tried = {job.lr: store.record(job) for job in sweep_jobs if job.eta == eta}
            chosen[eta] = _choose(tried)
            sweeps[eta] = SweepRecord(
                eta=eta,
                seed=sweep_seed,
                held_out={lr_label(lr): r.extra["held_out_error"] for lr, r in tried.items()},
                chosen=chosen[eta],
            )
        else:
            chosen[eta] = args.learning_rate_list[0]
    final_jobs = [Job(kind, eta, chosen[eta], seed) for eta in args.eta_list for seed in args.seed_list]
    _run_phase(final_jobs, stages, store, shard, args, "training and evaluation")
    if shard.rank != 0:
        return None

    records = {
        eta: {job.seed: store.record(job) for job in final_jobs if job.eta == eta} for eta in args.eta_list
    }
    results = assemble(args, stages, records, sweeps, [store.record(job) for job in lsa_jobs])
    results.environment = _environment(started, shard, store)
    write_outputs(results, args.out)
    return results


def assemble(args, stages: dict[str, Stage], records, sweeps, lsa_records) -> LabResults:
    """The statistics stage and the typed results."""
    kind = args.task
    context = stages[kind].context
    is_mqar = kind == "mqar"
    if is_mqar:
        ks = context.kv_counts
        criterion = describe("mqar", max_kv=context.task.max_kv_pairs)
        testable = True

        def gap(mean_curve):
            n = context.task.max_kv_pairs
            return mean_curve[-1], f"η = 0 reaches {1 - mean_curve[-1]:.4f} accuracy with {n} key-value pairs"

        measure = f"mean error rate (1 − accuracy) over 1..{context.task.max_kv_pairs} key-value pairs"
    else:
        ks = list(range(context.task.n_points))
        criterion = describe(
            "linear-regression", context.task.n_dims, context.task.max_examples, context.reference
        )
        testable = bool(context.gate_ks)

        names = {"ols": "OLS", "best_of_ols_ridge": "best of OLS and ridge", "kalman": "Kalman filter"}

        def gap(mean_curve):
            worst = max(context.gate_ks, key=lambda k: mean_curve[k] - float(context.reference_eval[k]))
            value = mean_curve[worst] - float(context.reference_eval[worst])
            reference = float(context.reference_eval[worst])
            return value, (
                f"η = 0's error at k = {worst} is {mean_curve[worst]:.4f} vs {names[context.reference]}'s "
                f"{reference:.4f} (gap {value:.4f}, the largest over k = {context.gate_ks[0]}..{context.gate_ks[-1]})"
            )

        measure = f"mean squared error / d over k = 1..{context.task.max_examples}"
    arms = {
        eta: aggregate.summarize_arm(eta, runs, ks, args.divergence_factor) for eta, runs in records.items()
    }
    if aggregate.BASELINE in records:
        baseline = records[aggregate.BASELINE]
        excluded = list(arms[aggregate.BASELINE].diverged)
        gate_record = aggregate.gate(kind, baseline, [int(s) for s in excluded], gap, testable, criterion)
        momentum = aggregate.momentum(
            records, gate_record, measure, args.margin_relative, args.margin_absolute, args.divergence_factor
        )
    else:
        raise LabInputError("--etas must include 0: every verdict is against the η = 0 baseline")
    results = LabResults(
        task=kind,
        config=_config(args),
        environment={},
        arms=arms,
        runs={eta: {str(seed): record for seed, record in runs.items()} for eta, runs in records.items()},
        gate=gate_record,
        momentum=momentum,
        sweeps=sweeps,
    )
    if is_mqar:
        results.baselines = mqar.chance_baselines(context)
    else:
        results.learners = regression.learner_summaries(context)
        results.alignment = aggregate.alignment(records)
        results.alignment_ks = context.alignment_ks
        results.update_cosine = aggregate.update_cosines(records)
        results.untrained_update_cosine = aggregate.update_cosines(records, "untrained_update_cosine")
        results.ood_variants = {name: regression.OOD_VARIANTS[name] for name in context.ood}
        results.headline_ks = sorted({min(context.task.n_dims, context.task.max_examples),
                                      min(2 * context.task.n_dims, context.task.max_examples)})  # fmt: skip
        if "lsa" in stages:
            results.positive_control = control.positive_control(
                stages["lsa"].context, lsa_records, args.lsa_steps
            )
        else:
            results.positive_control = control.positive_control(control.prepare(args), [], 0)
    return results


def _config(args) -> dict:
    return args.to_dict()


__all__ = ["assemble", "run_icl_lab"]
