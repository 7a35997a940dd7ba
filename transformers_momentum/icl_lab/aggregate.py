"""The statistics stage: per-seed `RunRecord`s -> arm summaries, the anchor gate, the momentum verdicts, alignment
and update-cosine tables (all typed, `results.py`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from .config import LEARNABLE
from .gate import evaluate_gate
from .results import AlignmentEntry, ArmSummary, Curve, GateRecord, Interval, MomentumRecord, RunRecord
from .statistics import compare_arms, diverged_seeds

BASELINE = "0"
#: Position-axis alignment: does the model look more like one pass of momentum SGD than of plain SGD?
MOMENTUM_LEARNER, PLAIN_LEARNER = "online_momentum_sgd", "online_sgd"
ALIGNMENT_MARGIN = 0.01  # cosine units


def summarize_arm(
    eta: str, records: Mapping[int, RunRecord], ks: Sequence[int], divergence_factor: float
) -> ArmSummary:
    seeds = sorted(records)
    runs = [records[s] for s in seeds]
    divergence = diverged_seeds({s: records[s].final_loss for s in seeds}, divergence_factor)
    ood = {}
    for name in runs[0].ood:
        length = len(runs[0].ood[name])
        ood[name] = Curve.of(list(range(length)), [r.ood[name] for r in runs])
    extra = {name: Interval.of([r.extra.get(name) for r in runs]) for name in runs[0].extra}
    learned = None
    if eta == LEARNABLE and runs[0].learned_etas:
        flat = [v for r in runs for layer in (r.learned_etas or []) for v in layer]
        learned = {"mean": sum(flat) / len(flat), "min": min(flat), "max": max(flat)}
    return ArmSummary(
        eta=eta,
        learning_rate=runs[0].learning_rate,
        curve=Curve.of(list(ks), [r.curve for r in runs]),
        headline=Interval.of([r.headline for r in runs]),
        steps_to_threshold={str(s): records[s].steps_to_threshold for s in seeds},
        final_loss={str(s): records[s].final_loss for s in seeds},
        diverged={str(s): loss for s, loss in divergence.seeds.items()},
        ood=ood,
        extra=extra,
        learned_eta=learned,
        train_seconds=Interval.of([r.train_seconds for r in runs]),
    )


def gate(
    task: str,
    baseline: Mapping[int, RunRecord],
    excluded: Sequence[int],
    gap_of_mean_curve: Callable[[list[float]], tuple[float, str]],
    testable: bool,
    criterion: str,
) -> GateRecord:
    """The gate on the baseline's mean curve over its non-diverged seeds (`gap_of_mean_curve` -> the gap and what
    was reached, in words)."""
    kept = [seed for seed in sorted(baseline) if seed not in excluded] or sorted(baseline)
    columns = list(zip(*(baseline[s].curve for s in kept)))
    mean_curve = [sum(column) / len(column) for column in columns]
    value, text = gap_of_mean_curve(mean_curve) if testable else (math.nan, "")
    return evaluate_gate(
        task,
        {seed: baseline[seed].anchor_gap for seed in sorted(baseline)},
        value,
        {seed: baseline[seed].steps_to_threshold for seed in sorted(baseline)},
        testable,
        criterion,
        text,
    )


def _alignment_gain(record: RunRecord) -> float | None:
    """Mean over the alignment ks of cos(model, online momentum SGD) - cos(model, online SGD), last layer."""
    if MOMENTUM_LEARNER not in record.alignment or PLAIN_LEARNER not in record.alignment:
        return None
    momentum, plain = record.alignment[MOMENTUM_LEARNER], record.alignment[PLAIN_LEARNER]
    gains = [momentum[k][-1]["sensitivity_cosine"] - plain[k][-1]["sensitivity_cosine"] for k in momentum]
    return sum(gains) / len(gains)


def momentum(
    records: Mapping[str, Mapping[int, RunRecord]],
    gate_record: GateRecord,
    measure: str,
    margin_relative: float,
    margin_absolute: float | None,
    divergence_factor: float,
) -> MomentumRecord:
    """Every arm against eta = 0 (TOST with the pre-registered margin, Holm over arms); no verdict below anchor."""
    baseline = records[BASELINE]
    divergence = diverged_seeds({s: r.final_loss for s, r in baseline.items()}, divergence_factor)
    excluded = sorted(divergence.seeds)
    kept = [s for s in baseline if s not in excluded] or list(baseline)
    baseline_mean = sum(baseline[s].headline for s in kept) / len(kept)
    if margin_absolute is not None:
        margin, rule = margin_absolute, f"{margin_absolute:g} (absolute, set before the run)"
    else:
        margin = margin_relative * baseline_mean
        rule = f"{margin_relative:.0%} of η = 0's mean error ({baseline_mean:.4g}), set before the run"
    arms = {eta: {s: r.headline for s, r in runs.items()} for eta, runs in records.items() if eta != BASELINE}
    comparisons = compare_arms(
        {s: r.headline for s, r in baseline.items()}, arms, margin, exclude_seeds=excluded
    )
    gains = {}
    baseline_gain = {s: _alignment_gain(r) for s, r in baseline.items()}
    if all(v is not None for v in baseline_gain.values()) and arms:
        arm_gains = {
            eta: {s: _alignment_gain(r) for s, r in runs.items()}
            for eta, runs in records.items()
            if eta != BASELINE
        }
        gains = compare_arms(
            baseline_gain, arm_gains, ALIGNMENT_MARGIN, exclude_seeds=excluded, lower_is_better=False
        )
    withheld = None
    if not gate_record.reached:
        withheld = gate_record.message
        comparisons = {eta: dataclasses.replace(c, verdict="no verdict") for eta, c in comparisons.items()}
        gains = {eta: dataclasses.replace(c, verdict="no verdict") for eta, c in gains.items()}
    return MomentumRecord(
        measure=measure,
        margin=margin,
        margin_rule=rule,
        baseline_mean=baseline_mean,
        verdicts_given=gate_record.reached,
        withheld_reason=withheld,
        excluded_seeds={str(s): loss for s, loss in divergence.seeds.items()},
        divergence_rule=(
            f"a seed diverged when its final training loss (mean of the last quarter of the logged losses) exceeds "
            f"{divergence_factor:g} × the median over its arm's seeds; η = 0's diverged seeds are left out of "
            "every pair (they would flatter the arms), an arm's own are named and kept"
        ),
        comparisons=comparisons,
        alignment_gain=gains,
    )


def alignment(records: Mapping[str, Mapping[int, RunRecord]]) -> dict[str, dict[str, AlignmentEntry]]:
    out = {}
    for eta, runs in records.items():
        seeds = sorted(runs)
        first = runs[seeds[0]]
        arm = {}
        for name, per_k in first.alignment.items():
            have = [s for s in seeds if name in runs[s].alignment]
            ks = list(per_k)
            n_layers = len(per_k[ks[0]])

            def over_ks(seed, layer, measure, name=name, ks=ks, runs=runs):
                return sum(runs[seed].alignment[name][k][layer][measure] for k in ks) / len(ks)

            arm[name] = AlignmentEntry(
                preds_diff=Interval.of([over_ks(s, -1, "preds_diff") for s in have]),
                sensitivity_cosine=Interval.of([over_ks(s, -1, "sensitivity_cosine") for s in have]),
                per_k_cosine={
                    k: Interval.of([runs[s].alignment[name][k][-1]["sensitivity_cosine"] for s in have])
                    for k in ks
                },
                per_layer_preds_diff=[
                    Interval.of([over_ks(s, layer, "preds_diff") for s in have]) for layer in range(n_layers)
                ],
                per_layer_cosine=[
                    Interval.of([over_ks(s, layer, "sensitivity_cosine") for s in have])
                    for layer in range(n_layers)
                ],
            )
        out[eta] = arm
    return out


def update_cosines(
    records: Mapping[str, Mapping[int, RunRecord]], attribute: str = "update_cosine"
) -> dict[str, dict[str, dict[str, Interval]]]:
    """Per arm, per FT variant, per k (and "mean" over k; the shuffled-label null over k >= 2 only)."""
    out = {}
    for eta, runs in records.items():
        first = getattr(next(iter(runs.values())), attribute)
        arm = {}
        for variant, per_k in first.items():
            ks = list(per_k)
            entry = {k: Interval.of([getattr(r, attribute)[variant][k] for r in runs.values()]) for k in ks}
            counted = [k for k in ks if variant != "gd_shuffled_labels" or int(k) >= 2]
            entry["mean"] = Interval.of(
                [
                    sum(getattr(r, attribute)[variant][k] for k in counted) / len(counted)
                    for r in runs.values()
                ]
            )
            arm[variant] = entry
        out[eta] = arm
    return out


__all__ = ["BASELINE", "alignment", "gate", "momentum", "summarize_arm", "update_cosines"]
