"""The lab's plots, drawn from `LabResults` only."""

from __future__ import annotations

import math
from pathlib import Path

from .config import LEARNABLE
from .results import LabResults

#: Learners drawn beside the arms (all are in results.json and report.md).
PLOTTED_LEARNERS = ("ols", "ridge", "gd", "online_sgd", "online_momentum_sgd", "kalman")


def eta_label(eta: str) -> str:
    return "learnable η" if eta == LEARNABLE else f"η = {eta}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _clean(values):
    return [math.nan if v is None else v for v in values]


def plot_error_curves(results: LabResults, path: Path, etas: list[str] | None = None) -> Path:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    is_mqar = results.task == "mqar"
    if is_mqar:
        ks = next(iter(results.arms.values())).curve.k
        for name, errors in results.baselines.items():
            ax.plot(ks, errors, linestyle="--", linewidth=1, label=name)
    else:
        for name in PLOTTED_LEARNERS:
            if name in results.learners:
                curve = results.learners[name].curve
                ax.plot(curve.k, _clean(curve.mean), linestyle="--", linewidth=1, label=name)
    for eta in etas or list(results.arms):
        curve = results.arms[eta].curve
        line = ax.plot(
            curve.k, _clean(curve.mean), marker="o", markersize=3, linewidth=2, label=eta_label(eta)
        )[0]
        ax.fill_between(curve.k, _clean(curve.low), _clean(curve.high), color=line.get_color(), alpha=0.2)
    if is_mqar:
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


def plot_anchor_traces(results: LabResults, path: Path) -> Path | None:
    """The anchor gap on held-out prompts during training, per arm and seed, with the threshold."""
    traces = [
        (eta, seed, run.anchor_trace) for eta, runs in results.runs.items() for seed, run in runs.items()
    ]
    if not any(trace for _, _, trace in traces):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    etas = list(results.runs)
    for eta, seed, trace in traces:
        if not trace:
            continue
        steps, gaps = zip(*trace)
        first = seed == next(iter(results.runs[eta]))
        ax.plot(
            steps,
            [max(g, 1e-4) for g in gaps],
            color=colors[etas.index(eta) % len(colors)],
            alpha=0.7,
            linewidth=1,
            label=eta_label(eta) if first else None,
        )
    ax.axhline(
        results.gate.threshold, color="black", linestyle=":", label=f"anchor ({results.gate.threshold})"
    )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("gap to the anchor (held-out prompts)")
    ax.set_title("Steps to the anchor: one line per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_alignment(results: LabResults, path: Path) -> Path | None:
    if not results.alignment:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    etas = list(results.alignment)
    fig, axes = plt.subplots(1, len(etas), figsize=(3.2 * len(etas), 3.4), sharey=True, squeeze=False)
    for ax, eta in zip(axes[0], etas):
        for name, entry in results.alignment[eta].items():
            values = [layer.mean for layer in entry.per_layer_cosine]
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        ax.set_title(eta_label(eta), fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sensitivity cosine (model cos)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["eta_label", "plot_alignment", "plot_anchor_traces", "plot_error_curves"]
