"""Per-layer curves of the similarity metrics with their nulls and controls (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .results import AnalysisResult  # noqa: E402


def _line(ax, estimate, label, **style):
    values = estimate.per_layer if estimate is not None else None
    if values:
        xs = [i for i, v in enumerate(values) if v is not None]
        if xs:
            ax.plot(xs, [values[i] for i in xs], label=label, **style)


def plot_per_layer(result: AnalysisResult, out_dir: str | Path) -> list[Path]:
    """Write simaou_per_layer.png, simam_per_layer.png and kendall_per_layer.png into `out_dir`."""
    out_dir = Path(out_dir)
    main = result.models["pretrained"]
    gd = main.comparisons["gd"]
    untrained = result.models.get("untrained")
    title = f"{result.config['task']} / {result.run['model']}"
    written = []

    def save(fig, ax, name, ylabel):
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    _line(ax, gd.simaou, "SimAOU (ICL vs FT)", color="C0")
    _line(ax, main.simaou_uniform_null, "Uniform[0,1) null", color="grey", linestyle=":")
    _line(ax, gd.simaou_shuffled_null, "shuffled-example null", color="grey", linestyle="--")
    for name, color in (
        ("lcgd", "C1"),
        ("random_label", "C2"),
        ("flipped_label", "C6"),
        ("other_task", "C5"),
    ):
        if name in main.comparisons:
            _line(ax, main.comparisons[name].simaou, f"{name} FT", color=color)
    if untrained is not None:
        _line(ax, untrained.comparisons["gd"].simaou, "untrained model", color="C3")
    save(fig, ax, "simaou_per_layer.png", "cosine")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    _line(ax, main.simam_before, "SimAM before FT (ICL vs ZSL)", color="C0", linestyle="--")
    _line(ax, gd.simam_after, "SimAM after FT (ICL vs FT)", color="C0")
    _line(ax, gd.delta_simam, "ΔSimAM (updates)", color="C4")
    save(fig, ax, "simam_per_layer.png", "cosine")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    _line(ax, gd.kendall, "Kendall τ (ICL, FT)", color="C0")
    _line(ax, gd.kendall_random, "Kendall τ (ICL, random)", color="grey", linestyle=":")
    if untrained is not None:
        _line(ax, untrained.comparisons["gd"].kendall, "untrained model", color="C3")
    save(fig, ax, "kendall_per_layer.png", "Kendall τ")
    return written


__all__ = ["plot_per_layer"]
