"""results.json, report.md and the plots of a lab run."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from .config import LEARNABLE

#: Published numbers the lab's results sit beside (quoted from the papers, not measured here).
ANCHORS = {
    "garg2022": "Garg et al. 2022 (GPT-2, 12 layers, width 256, d = 20, 500k steps): the trained model's normalised "
    "error matches least squares at every k and is ~0 once k >= d.",
    "von_oswald2023": "von Oswald et al. 2023 (single-layer LSA, d = 10, N = 10, x ~ U(-1, 1)^d): the trained LSA "
    "converges to one step of tuned GD: preds diff near 0, model cos > 0.99.",
    "fu2023": "Fu et al. 2023: layer by layer, trained transformers track Newton iterations far better than GD.",
    "zoology2023": "Arora et al. 2023 (Zoology): 2-layer attention models reach ~100% MQAR accuracy.",
    "dai2023": "Dai et al. 2023, Table 7: momentum attention raises ICL accuracy 51.9 -> 54.7 (350M LMs, one run "
    "each).",
}


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _interval(stats: Mapping, digits: int = 3) -> str:
    return f"{_fmt(stats['mean'], digits)} [{_fmt(stats['low'], digits)}, {_fmt(stats['high'], digits)}]"


def _eta_label(eta: str) -> str:
    return "learnable η" if eta == LEARNABLE else f"η = {eta}"


# ------------------------------------------------------------------------------------------------ plots


def plot_error_curves(results: Mapping, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, baseline in results["baselines"].items():
        ks = list(range(len(baseline["error"])))
        if "accuracy" in results:
            ks = results["curves"][next(iter(results["curves"]))]["k"]
        ax.plot(ks, baseline["error"], linestyle="--", linewidth=1, label=name)
    for eta, curve in results["curves"].items():
        line = ax.plot(
            curve["k"], curve["mean"], marker="o", markersize=3, linewidth=2, label=_eta_label(eta)
        )[0]
        low = [math.nan if v is None else v for v in curve["low"]]
        high = [math.nan if v is None else v for v in curve["high"]]
        ax.fill_between(curve["k"], low, high, color=line.get_color(), alpha=0.2)
    if "accuracy" in results:
        ax.set_xlabel("key-value pairs in the prompt")
        ax.set_ylabel("error rate (1 - accuracy)")
        ax.set_title("MQAR: error vs number of pairs (95% CI over seeds)")
    else:
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel("squared error / d")
        ax.set_title("In-context linear regression (95% CI over seeds)")
        ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_alignment(results: Mapping, path: Path) -> Path | None:
    if not results.get("alignment"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    etas = list(results["alignment"])
    fig, axes = plt.subplots(1, len(etas), figsize=(3.2 * len(etas), 3.4), sharey=True, squeeze=False)
    for ax, eta in zip(axes[0], etas):
        arm = results["alignment"][eta]
        for name, entry in arm.items():
            if not isinstance(entry, Mapping) or "per_layer" not in entry:
                continue
            values = [layer["sensitivity_cosine"]["mean"] for layer in entry["per_layer"]]
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        ax.set_title(_eta_label(eta), fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sensitivity cosine (model cos)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ report


def _ladder_section(control: Mapping) -> list[str]:
    lines = ["## Positive-control ladder", ""]
    setting = control["setting"]
    lines.append(
        f"Setting of rungs (a)-(b): von Oswald et al.'s task, d = {setting['n_dims']}, N = {setting['n_context']} "
        f"context points, x ~ U(-1, 1)^d; tuned one-step GD learning rate {setting['gd_lr']:.4g}. "
        "`update cos` is the SimAOU-style cosine between the ICL-induced change of the predictions at probe "
        "queries and the change explicit finetuning (FT) of a linear regressor on the same demonstrations induces."
    )
    lines += ["", "| rung | what FT means | preds diff vs GD | model cos vs GD | update cos (FT) | update cos "
              "(FT to convergence: OLS) | update cos (FT on shuffled labels) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    rung_a = control["rungs"]["a_constructed_lsa"]
    lines.append(
        f"| (a) constructed one-step LSA | {rung_a['ft_definition']} | {_fmt(control['preds_diff'])} | "
        f"{_fmt(control['sensitivity_cosine'], 6)} | {_fmt(rung_a['update_cosine']['gd'], 6)} | "
        f"{_fmt(rung_a['update_cosine']['ols'])} | {_fmt(rung_a['update_cosine']['gd_shuffled_labels'])} |"
    )
    rung_b = control["rungs"].get("b_trained_lsa")
    if rung_b:
        align = rung_b["alignment"]["gd_1step"]
        n = align["preds_diff"]["n"]
        lines.append(
            f"| (b) trained 1-layer LSA ({n} seeds, {rung_b['steps']} steps) | {rung_b['ft_definition']} | "
            f"{_interval(align['preds_diff'])} | {_interval(align['sensitivity_cosine'], 4)} | "
            f"{_interval(rung_b['update_cosine']['gd'])} | {_interval(rung_b['update_cosine']['ols'])} | "
            f"{_interval(rung_b['update_cosine']['gd_shuffled_labels'])} |"
        )
    rung_c = control["rungs"].get("c_momentum_gpt")
    if rung_c:
        for index, (eta, cosines) in enumerate(rung_c["update_cosine"].items()):
            untrained = rung_c["untrained_update_cosine"][eta]["gd"]
            definition = rung_c["ft_definition"] if index == 0 else "as above"
            lines.append(
                f"| (c) trained MomentumGPT, {_eta_label(eta)} | {definition} | see alignment | "
                f"see alignment | {_interval(cosines['gd'])} (untrained model: {_interval(untrained)}) | "
                f"{_interval(cosines['ols'])} | {_interval(cosines['gd_shuffled_labels'])} |"
            )
    if rung_b:
        lines += ["", f"Rung (b) error at N = {control['setting']['n_context']}: trained LSA "
                  f"{_interval(rung_b['error'])}; learners: "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in rung_b["learner_error"].items()) + "."]  # fmt: skip
    lines += ["", f"Anchor: {ANCHORS['von_oswald2023']}", ""]
    return lines


def _curve_table(results: Mapping) -> list[str]:
    curves = results["curves"]
    first = next(iter(curves.values()))
    ks = first["k"]
    shown = [k for k in ks if k in {0, 1, 2} or k % max(1, len(ks) // 6) == 0 or k == ks[-1]]
    is_mqar = "accuracy" in results
    header = "| | " + " | ".join(f"{'n' if is_mqar else 'k'} = {k}" for k in shown) + " |"
    lines = [header, "|---" * (len(shown) + 1) + "|"]
    for eta, curve in curves.items():
        cells = [f"{_fmt(curve['mean'][ks.index(k)])} ± {_fmt(_half(curve, ks.index(k)))}" for k in shown]
        lines.append(f"| {_eta_label(eta)} | " + " | ".join(cells) + " |")
    for name, baseline in results["baselines"].items():
        offset = 0 if not is_mqar else ks[0]
        cells = [_fmt(baseline["error"][k - offset]) for k in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _half(curve: Mapping, index: int) -> float | None:
    low, high = curve["low"][index], curve["high"][index]
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return None
    return (high - low) / 2


def _momentum_section(results: Mapping) -> list[str]:
    momentum = results["momentum"]
    lines = ["## The momentum question", "", f"Measure: {momentum['measure']}.", ""]
    lines += ["| arm | arm − (η = 0), mean [95% CI] | p | verdict |", "|---|---|---|---|"]
    for eta, difference in momentum["paired_vs_eta0"].items():
        lines.append(
            f"| {_eta_label(eta)} | {_interval(difference, 4)} | {_fmt(difference.get('p_value'))} | "
            f"{difference['verdict']} |"
        )
    learned = momentum.get("learned_eta")
    if learned:
        lines += ["", f"Learned per-head η: mean {learned['mean']:.3f} (range {learned['min']:.3f}–"
                  f"{learned['max']:.3f})."]  # fmt: skip
    aligned = momentum.get("alignment_momentum_gd_minus_gd")
    if aligned:
        lines += ["", "Do momentum models align better with momentum-GD than with plain GD? Paired over seeds: "
                  "model cos(model, momentum-GD) − model cos(model, GD), last layer.", "",
                  "| arm | difference [95% CI] | verdict | with momentum fixed to the arm's η | difference − "
                  "η = 0's difference |", "|---|---|---|---|---|"]  # fmt: skip
        gains = momentum.get("alignment_momentum_gd_gain_vs_eta0", {})
        for eta, difference in aligned.items():
            at_eta = results["alignment"][eta].get("momentum_gd_at_eta_minus_gd_cosine")
            gain = gains.get(eta)
            lines.append(
                f"| {_eta_label(eta)} | {_interval(difference, 4)} | {difference['verdict']} | "
                + (f"{_interval(at_eta, 4)}: {at_eta['verdict']}" if at_eta else "n/a (η = 0)")
                + " | "
                + (f"{_interval(gain, 4)}: {gain['verdict']}" if gain else "(reference)")
                + " |"
            )
    return lines + [""]


def _alignment_table(results: Mapping) -> list[str]:
    lines = ["## Alignment with the reference learners (last layer, mean over seeds [95% CI])", ""]
    ks = results.get("alignment_ks")
    if ks:
        lines.append(f"Averaged over k ∈ {ks}. preds diff = mean |y_model − y_learner|; model cos = mean cosine of "
                     "the input sensitivities ∂y/∂x_q.")  # fmt: skip
    lines += ["", "| arm | learner | preds diff | model cos |", "|---|---|---|---|"]
    for eta, arm in results["alignment"].items():
        for name, entry in arm.items():
            if not isinstance(entry, Mapping) or "per_layer" not in entry:
                continue
            pd, cos = entry["preds_diff_interval"], entry["sensitivity_cosine_interval"]
            lines.append(
                f"| {_eta_label(eta)} | {name} | {_fmt(entry['preds_diff'])} [{_fmt(pd[0])}, {_fmt(pd[1])}] | "
                f"{_fmt(entry['sensitivity_cosine'])} [{_fmt(cos[0])}, {_fmt(cos[1])}] |"
            )
    return lines + [""]


def render_report(results: Mapping) -> str:
    config = results["config"]
    is_mqar = "accuracy" in results
    lines = [
        f"# In-context learning lab: {config['task']}",
        "",
        f"Arms: {', '.join(_eta_label(e) for e in config['eta_list'])}; seeds {config['seed_list']}; "
        f"{config['steps']} steps of batch {config['batch_size']}; MomentumGPT with {config['num_layers']} layers, "
        f"width {config['hidden_size']}, {config['num_heads']} heads. Intervals: Student-t 95% over training seeds "
        "(learners: over evaluation prompts). Wall time of this invocation: "
        f"{config['wall_seconds'] / 60:.1f} min (load average at the end "
        f"{', '.join(f'{v:.2f}' for v in config['machine_at_end']['load_average'])} on "
        f"{config['machine_at_end']['cpu_count']} CPUs).",
        "",
    ]
    timing = config.get("training_time")
    if timing:
        lines[-1:-1] = [
            f"Training time of the {timing['runs']} runs kept under `runs/`, summed as each was logged: "
            f"{timing['train_seconds_total'] / 60:.1f} min (longest run {timing['train_seconds_max'] / 60:.1f} min; "
            "wall-clock on a shared machine, so it includes waiting for the CPU).",
        ]
    if is_mqar:
        lines += ["## MQAR accuracy (error rate = 1 − accuracy, mean ± CI half-width over seeds)", ""]
        lines += _curve_table(results)
        lines += ["", f"Anchor: {ANCHORS['zoology2023']}", ""]
        for eta, entry in results["accuracy"].items():
            lines.append(f"* {_eta_label(eta)}: mean accuracy {_interval(entry['mean_accuracy'])}")
        lines.append("")
    else:
        lines += ["## Error vs number of in-context examples (mean ± CI half-width)", ""]
        lines += _curve_table(results)
        lines += ["", f"Anchors: {ANCHORS['garg2022']} {ANCHORS['fu2023']}", ""]
    lines += _momentum_section(results)
    lines.append(f"Claim under test: {ANCHORS['dai2023']}")
    lines.append("")
    if not is_mqar:
        lines += _alignment_table(results)
    lines += _ladder_section(results["positive_control"])
    lines += ["## Plots", "", "![error vs k](error_vs_k.png)", ""]
    if results.get("alignment"):
        lines += ["![alignment per layer](alignment_per_layer.png)", ""]
    return "\n".join(lines)


def write_outputs(results: Mapping, out: str | Path) -> dict[str, Path]:
    from .lab import _write_json

    out = Path(out)
    paths = {"results": out / "results.json", "report": out / "report.md"}
    _write_json(paths["results"], results)
    results = json.loads(paths["results"].read_text())  # the JSON form (None for NaN) is what gets rendered
    paths["error_vs_k"] = plot_error_curves(results, out / "error_vs_k.png")
    alignment_plot = plot_alignment(results, out / "alignment_per_layer.png")
    if alignment_plot:
        paths["alignment_per_layer"] = alignment_plot
    paths["report"].write_text(render_report(results))
    return paths
