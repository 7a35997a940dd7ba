"""results.json, report.md and the plots of a lab run, all from one `LabResults` (no other input)."""

from __future__ import annotations

import math
from pathlib import Path

from .plots import eta_label, plot_alignment, plot_anchor_traces, plot_error_curves
from .results import Comparison, Curve, Interval, LabResults

#: Published results the lab's results sit beside (quoted from the papers, not measured here).
ANCHORS = {
    "garg2022": "Garg et al. 2022 (GPT-2, 12 layers, width 256, d = 20, 500k steps): the trained model's normalised "
    "error matches least squares at every k and is ~0 once k >= d.",
    "von_oswald2023": "von Oswald et al. 2023 (single-layer LSA, d = 10, N = 10, x ~ U(-1, 1)^d): the trained LSA "
    "converges to one step of tuned GD: preds diff near 0, model cos > 0.99.",
    "akyurek2023": "Akyürek et al. 2023: trained transformers' predictions track OLS / ridge, moving between "
    "algorithms with depth and label noise.",
    "fu2023": "Fu et al. 2023: layer by layer, trained transformers track Newton iterations far better than GD.",
    "zoology2024": "Arora et al. 2024 (Zoology): 2-layer attention models reach ~100% MQAR accuracy.",
    "dai2023": "Dai et al. 2023, Table 7: momentum attention raises ICL accuracy 51.9 -> 54.7 (350M LMs, one run "
    "each), about 5% relative.",
}
REPORT_LEARNERS = ("ols", "ridge", "gd_1step", "gd", "momentum_gd", "newton", "online_sgd", "online_momentum_sgd",
                   "kalman")  # fmt: skip


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def signed(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}"


def interval(stats: Interval, digits: int = 3) -> str:
    if stats.n < 2:
        return fmt(stats.mean, digits)
    return f"{fmt(stats.mean, digits)} [{fmt(stats.low, digits)}, {fmt(stats.high, digits)}]"


def difference(comparison: Comparison, digits: int = 4) -> str:
    return f"{signed(comparison.mean, digits)} [{signed(comparison.low, digits)}, {signed(comparison.high, digits)}]"


def gate_line(message: str) -> str:
    """'baseline below anchor: details' -> '**Baseline below anchor**: details'."""
    status, _, details = message.partition(": ")
    return f"**{status[0].upper()}{status[1:]}**: {details}"


def _curve_cell(curve: Curve, index: int) -> str:
    mean, low, high = curve.mean[index], curve.low[index], curve.high[index]
    if curve.n < 2 or low is None or math.isnan(low):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt((high - low) / 2)}"


# ------------------------------------------------------------------------------------------------ sections


def _header(results: LabResults) -> list[str]:
    config, environment = results.config, results.environment
    lines = [
        f"# In-context learning lab: {results.task}",
        "",
        f"Arms: {', '.join(eta_label(e) for e in config['eta_list'])}; seeds {config['seed_list']}; "
        f"{config['steps']} steps of batch {config['batch_size']}; MomentumGPT with {config['num_layers']} layers, "
        f"width {config['hidden_size']}, {config['num_heads']} heads; device {config.get('device', 'cpu')}. "
        "Intervals: Student-t 95% over training seeds (learners: over evaluation prompts).",
        "",
    ]
    timing = environment.get("training_time")
    if timing:
        lines += [
            f"Compute: {timing['runs']} trained runs kept under `runs/` (sweeps and the LSA rung included), "
            f"{timing['train_seconds_total'] / 60:.1f} min of training wall-clock summed as each run logged it, "
            f"{timing.get('train_cpu_seconds_total', 0) / 60:.1f} CPU-min of training; this invocation "
            f"{environment.get('wall_seconds', 0) / 60:.1f} min wall on {environment.get('processes', 1)} "
            f"process(es), {environment.get('cpu_count')} CPUs (load average at the end "
            f"{', '.join(f'{v:.2f}' for v in environment.get('load_average_at_end', []))}).",
            "",
        ]
    return lines


def _gate_section(results: LabResults) -> list[str]:
    gate = results.gate
    lines = ["## Anchor gate", "", f"Anchor: {gate.anchor}.", f"Criterion: {gate.criterion}.", ""]
    lines += [f"{gate_line(gate.message)}.", ""]
    lines += [
        "Per arm: the learning rate it trained with (its own sweep winner), the headline error, the anchor gap on the "
        "evaluation prompts, and the training step at which the gap on held-out prompts first fell to "
        f"{gate.threshold} (steps-to-threshold; '—' = not reached).",
        "",
        "| arm | learning rate | headline error [95% CI] | anchor gap per seed | steps-to-threshold per seed | "
        "diverged seeds |",
        "|---|---|---|---|---|---|",
    ]
    for eta, arm in results.arms.items():
        runs = results.runs[eta]
        gaps = ", ".join(fmt(runs[s].anchor_gap, 4) for s in runs)
        steps = ", ".join("—" if v is None else str(v) for v in arm.steps_to_threshold.values())
        diverged = ", ".join(f"seed {s} (loss {fmt(v)})" for s, v in arm.diverged.items()) or "none"
        lines.append(
            f"| {eta_label(eta)} | {arm.learning_rate:g} | {interval(arm.headline, 4)} | {gaps} | {steps} | {diverged} |"
        )
    return lines + [""]


def _verdict_section(results: LabResults) -> list[str]:
    momentum = results.momentum
    lines = ["## The momentum question", "", f"Claim under test: {ANCHORS['dai2023']}", ""]
    lines += [
        f"Measure: {momentum.measure}, arm − η = 0, paired by training seed (lower is better). Equivalence margin "
        f"Δ = {fmt(momentum.margin, 4)}: {momentum.margin_rule}. Verdict: *equivalent* if the TOST (Schuirmann 1987) "
        "p-value, Holm-adjusted over the arms (Holm 1979), is < 0.05 (the 90% interval inside ±Δ); else "
        "*better*/*worse* if the paired t-test's Holm-adjusted p < 0.05; else *inconclusive*. "
        f"Divergence rule: {momentum.divergence_rule}.",
        "",
    ]
    if momentum.excluded_seeds:
        named = ", ".join(f"seed {s} (final loss {fmt(v)})" for s, v in momentum.excluded_seeds.items())
        lines += [f"η = 0 seeds left out of the pairs (diverged): {named}.", ""]
    if not momentum.verdicts_given:
        lines += [
            f"**No verdict: {momentum.withheld_reason}.** The differences below are descriptive only: below the "
            "anchor they measure optimisation speed, not in-context learning.",
            "",
        ]
    lines += [
        "| arm | mean difference [95% CI] | median [95% bootstrap CI] | p (Holm) | 90% CI | TOST p (Holm) | "
        "verdict | seeds for equivalence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for eta, c in momentum.comparisons.items():
        lines.append(
            f"| {eta_label(eta)} | {difference(c)} | {signed(c.median)} [{signed(c.median_low)}, "
            f"{signed(c.median_high)}] | {fmt(c.p_value)} ({fmt(c.p_holm)}) | [{signed(c.tost_low)}, "
            f"{signed(c.tost_high)}] | {fmt(c.p_tost)} ({fmt(c.p_tost_holm)}) | **{c.verdict}** | "
            f"{c.seeds_for_equivalence or '—'} |"
        )
    if momentum.alignment_gain:
        gain_margin = next(iter(momentum.alignment_gain.values())).margin
        lines += [
            "",
            "Dai et al.'s axis: do momentum models look more like one pass of momentum SGD over the demonstrations "
            "(an EMA over token positions) than like plain online SGD, *more than η = 0 models do*? Per seed: "
            "cos(model, online momentum SGD) − cos(model, online SGD) (sensitivity cosine, last layer, mean over "
            f"the alignment k), arm − η = 0 (higher = more momentum-like; margin {fmt(gain_margin)}).",
            "",
            "| arm | difference [95% CI] | p (Holm) | verdict |",
            "|---|---|---|---|",
        ]
        for eta, c in momentum.alignment_gain.items():
            lines.append(
                f"| {eta_label(eta)} | {difference(c)} | {fmt(c.p_value)} ({fmt(c.p_holm)}) | {c.verdict} |"
            )
    learned = next((arm.learned_eta for arm in results.arms.values() if arm.learned_eta), None)
    if learned:
        lines += [
            "",
            f"Learned per-head η: mean {learned['mean']:.3f} (range {learned['min']:.3f}–{learned['max']:.3f}).",
        ]
    return lines + [""]


def _sweep_section(results: LabResults) -> list[str]:
    if not results.sweeps:
        return []
    lrs = list(next(iter(results.sweeps.values())).held_out)
    lines = [
        "## Learning-rate sweep (per arm, held-out prompts)",
        "",
        f"Each arm trained once per learning rate (seed {next(iter(results.sweeps.values())).seed}) and kept the one "
        "with the lowest error on held-out prompts (never the evaluation prompts).",
        "",
        "| arm | " + " | ".join(f"lr {lr}" for lr in lrs) + " | chosen |",
        "|---" * (len(lrs) + 2) + "|",
    ]
    for eta, sweep in results.sweeps.items():
        lines.append(
            f"| {eta_label(eta)} | "
            + " | ".join(fmt(sweep.held_out[lr], 4) for lr in lrs)
            + f" | {sweep.chosen:g} |"
        )
    return lines + [""]


def _curves_section(results: LabResults) -> list[str]:
    first = next(iter(results.arms.values())).curve
    ks = first.k
    if results.task == "mqar":
        lines = ["## MQAR error rate vs number of key-value pairs (mean ± CI half-width over seeds)", ""]
        lines += ["| | " + " | ".join(f"n = {k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        for eta, arm in results.arms.items():
            lines.append(
                f"| {eta_label(eta)} | "
                + " | ".join(_curve_cell(arm.curve, i) for i in range(len(ks)))
                + " |"
            )
        for name, errors in results.baselines.items():
            lines.append(f"| {name} | " + " | ".join(fmt(v) for v in errors) + " |")
        extra = {
            eta: {name: value for name, value in arm.extra.items() if name.startswith("reassigned")}
            for eta, arm in results.arms.items()
        }
        if any(extra.values()):
            lines += ["", "Accuracy on the re-assigned keys alone (the latest value is the answer):", ""]
            for eta, values in extra.items():
                lines.append(
                    f"* {eta_label(eta)}: "
                    + ", ".join(f"{n.split('_')[-1]} pairs {interval(v)}" for n, v in values.items())
                )
        return lines + ["", f"Anchor: {ANCHORS['zoology2024']}", ""]
    shown = [
        k
        for k in ks
        if k in {0, 1, 2} or k % max(1, len(ks) // 8) == 0 or k == ks[-1] or k in results.headline_ks
    ]
    lines = ["## Error vs number of in-context examples (squared error / d, mean ± CI half-width)", ""]
    lines += ["| | " + " | ".join(f"k = {k}" for k in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for eta, arm in results.arms.items():
        lines.append(
            f"| {eta_label(eta)} | " + " | ".join(_curve_cell(arm.curve, ks.index(k)) for k in shown) + " |"
        )
    for name in REPORT_LEARNERS:
        if name in results.learners:
            curve = results.learners[name].curve
            lines.append(f"| {name} | " + " | ".join(_curve_cell(curve, ks.index(k)) for k in shown) + " |")
    notes = [
        f"{name} at k = {summary.non_monotone_k}"
        for name, summary in results.learners.items()
        if summary.non_monotone_k
    ]
    lines += [
        "",
        "Learners: "
        + "; ".join(
            f"**{name}**: {results.learners[name].description}"
            for name in REPORT_LEARNERS
            if name in results.learners
        )
        + ".",
        "Learner intervals are over the evaluation prompts; every step size, momentum, λ (0 included) and Newton "
        "step scale is tuned per k on held-out prompts. "
        + (
            "Non-monotone beyond their intervals: " + "; ".join(notes) + "."
            if notes
            else "Every learner curve is monotone within its intervals."
        ),
        "",
        f"Anchors: {ANCHORS['garg2022']} {ANCHORS['akyurek2023']} {ANCHORS['fu2023']}",
        "",
    ]
    return lines


def _ood_section(results: LabResults) -> list[str]:
    if not results.ood_variants:
        return []
    d2 = results.headline_ks
    lines = [
        "## Out of distribution (Garg et al.)",
        "",
        "Models and learners trained / tuned in distribution, evaluated on other prompts: "
        + "; ".join(f"**{name}**: {text}" for name, text in results.ood_variants.items())
        + ". Error (squared error / d) at k = "
        + ", ".join(str(k) for k in d2)
        + " and at the longest k.",
        "",
        "| variant | k | " + " | ".join(eta_label(e) for e in results.arms) + " | OLS | ridge | GD |",
        "|---" * (len(results.arms) + 5) + "|",
    ]
    for variant in results.ood_variants:
        first = next(iter(results.arms.values())).ood.get(variant)
        if first is None:
            continue
        for k in sorted(set(d2) | {first.k[-1]}):
            cells = [_curve_cell(arm.ood[variant], k) for arm in results.arms.values()]
            learners = [
                fmt(results.learners[name].ood[variant].mean[k]) if name in results.learners else "n/a"
                for name in ("ols", "ridge", "gd")
            ]
            lines.append(f"| {variant} | {k} | " + " | ".join(cells + learners) + " |")
    return lines + [""]


def _alignment_section(results: LabResults) -> list[str]:
    if not results.alignment:
        return []
    lines = [
        "## Alignment with the reference learners (last layer, mean over seeds [95% CI])",
        "",
        f"Averaged over k ∈ {results.alignment_ks}. preds diff = mean |y_model − y_learner|; model cos = mean cosine "
        "of the input sensitivities ∂y/∂x_q (von Oswald et al.). Per-k model cos in the last columns.",
        "",
        "| arm | learner | preds diff | model cos | "
        + " | ".join(f"cos k = {k}" for k in results.alignment_ks)
        + " |",
        "|---" * (4 + len(results.alignment_ks)) + "|",
    ]
    for eta, arm in results.alignment.items():
        for name, entry in arm.items():
            per_k = [fmt(entry.per_k_cosine[str(k)].mean) for k in results.alignment_ks]
            lines.append(
                f"| {eta_label(eta)} | {name} | {interval(entry.preds_diff)} | {interval(entry.sensitivity_cosine, 4)} | "
                + " | ".join(per_k)
                + " |"
            )
    return lines + [""]


def _update_cosine_section(results: LabResults) -> list[str]:
    if not results.update_cosine:
        return []
    first = next(iter(results.update_cosine.values()))
    ks = [k for k in first["gd"] if k != "mean"]
    lines = [
        "## Update cosine per k (rung c of the positive-control ladder)",
        "",
        "SimAOU-style cos(ICL update, FT update) at probe queries, mean over seeds; FT = GD (steps = layers, lr tuned "
        "per k), OLS (FT to convergence), GD on shuffled labels (a null); and the same model untrained. At k = 1 "
        "every learner's update points the same way, so only k ≥ 2 can separate them.",
        "",
        "| arm | FT | " + " | ".join(f"k = {k}" for k in ks) + " | mean |",
        "|---" * (len(ks) + 3) + "|",
    ]
    for eta, arm in results.update_cosine.items():
        for variant, entry in arm.items():
            lines.append(
                f"| {eta_label(eta)} | {variant} | "
                + " | ".join(fmt(entry[k].mean) for k in ks)
                + f" | {interval(entry['mean'])} |"
            )
        untrained = results.untrained_update_cosine.get(eta, {}).get("gd")
        if untrained:
            lines.append(
                f"| {eta_label(eta)} untrained | gd | "
                + " | ".join(fmt(untrained[k].mean) for k in ks)
                + f" | {interval(untrained['mean'])} |"
            )
    return lines + [""]


def _control_section(results: LabResults) -> list[str]:
    control = results.positive_control
    if control is None:
        return []
    setting = control.setting
    lines = [
        "## Positive-control ladder",
        "",
        f"von Oswald et al.'s task: d = {setting['n_dims']}, N = {setting['n_context']} context points, "
        f"x ~ U(−1, 1)^d; tuned one-step GD learning rate {setting['gd_lr']:.4g}.",
        "",
        "| rung | what FT means | preds diff vs GD | model cos vs GD | update cos: FT | FT to convergence (OLS) | "
        "FT on shuffled labels |",
        "|---|---|---|---|---|---|---|",
    ]
    for rung in control.rungs:
        cos = rung.update_cosine
        lines.append(
            f"| {rung.name} | {rung.ft_definition} | {interval(rung.preds_diff)} | "
            f"{interval(rung.sensitivity_cosine, 6)} | {interval(cos['gd'], 6)} | {interval(cos['ols'])} | "
            f"{interval(cos['gd_shuffled_labels'])} |"
        )
        if rung.error is not None:
            learners = ", ".join(f"{k} {fmt(v)}" for k, v in rung.learner_error.items())
            lines += ["", f"Trained LSA error at N: {interval(rung.error)}; learners: {learners}.", ""]
    return lines + ["", f"Anchor: {ANCHORS['von_oswald2023']}", ""]


def render_report(results: LabResults) -> str:
    lines = _header(results)
    lines += _gate_section(results)
    lines += _verdict_section(results)
    lines += _sweep_section(results)
    lines += _curves_section(results)
    lines += _ood_section(results)
    lines += _alignment_section(results)
    lines += _update_cosine_section(results)
    lines += _control_section(results)
    lines += ["## Plots", "", "![error vs k](error_vs_k.png)", ""]
    if any(run.anchor_trace for runs in results.runs.values() for run in runs.values()):
        lines += ["![steps to the anchor](anchor_trace.png)", ""]
    if results.alignment:
        lines += ["![alignment per layer](alignment_per_layer.png)", ""]
    return "\n".join(lines)


def write_outputs(results: LabResults, out: str | Path) -> dict[str, Path]:
    """results.json, report.md and the plots; the report and plots are drawn from the saved JSON's round trip, so
    they show exactly what results.json holds."""
    out = Path(out)
    paths = {"results": results.save(out / "results.json")}
    results = LabResults.load(paths["results"])
    paths["error_vs_k"] = plot_error_curves(results, out / "error_vs_k.png")
    for name, plot in (("anchor_trace", plot_anchor_traces), ("alignment_per_layer", plot_alignment)):
        path = plot(results, out / f"{name}.png")
        if path:
            paths[name] = path
    paths["report"] = out / "report.md"
    paths["report"].write_text(render_report(results))
    return paths


__all__ = ["ANCHORS", "render_report", "write_outputs"]
