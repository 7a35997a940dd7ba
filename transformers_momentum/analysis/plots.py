"""Per-layer curves of the similarity metrics with their nulls and controls (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def _line(ax, values, label, **style):
    if values:
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.plot(xs, [values[i] for i in xs], label=label, **style)


def plot_per_layer(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write simaou_per_layer.png, simam_per_layer.png and kendall_per_layer.png into `out_dir`."""
    out_dir = Path(out_dir)
    controls = results.get("controls", {})
    title = f"{results['config']['task']} / {results['config']['model']}"
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
    _line(ax, results["simaou"]["per_layer"], "SimAOU (ICL vs FT)", color="C0")
    _line(ax, results["simaou"].get("random_per_layer"), "Uniform[0,1) null", color="grey", linestyle=":")
    _line(
        ax, results["simaou"].get("shuffled_per_layer"), "shuffled-example null", color="grey", linestyle="--"
    )
    for name, color in (("lcgd", "C1"), ("random_label", "C2")):
        if name in controls:
            _line(ax, controls[name]["simaou"]["per_layer"], f"{name} FT", color=color)
    if "untrained" in controls:
        _line(ax, controls["untrained"]["simaou"]["per_layer"], "untrained model", color="C3")
    save(fig, ax, "simaou_per_layer.png", "cosine")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    _line(
        ax, results["simam"]["per_layer_before"], "SimAM before FT (ICL vs ZSL)", color="C0", linestyle="--"
    )
    _line(ax, results["simam"]["per_layer_after"], "SimAM after FT (ICL vs FT)", color="C0")
    _line(ax, results["simam"]["per_layer_delta"], "ΔSimAM (updates)", color="C4")
    save(fig, ax, "simam_per_layer.png", "cosine")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    _line(ax, results["kendall"]["per_layer"], "Kendall τ (ICL, FT)", color="C0")
    _line(
        ax, results["kendall"].get("random_per_layer"), "Kendall τ (ICL, random)", color="grey", linestyle=":"
    )
    if "untrained" in controls:
        _line(ax, controls["untrained"]["kendall"]["per_layer"], "untrained model", color="C3")
    save(fig, ax, "kendall_per_layer.png", "Kendall τ")
    return written


__all__ = ["plot_per_layer"]
