"""results.json, report.md (our numbers beside the paper's) and the per-layer plots, written atomically.

Everything goes into a temporary sibling folder that is renamed to the output folder only once complete, so an
error never leaves a half-written output folder behind.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

# The paper's numbers (ACL version, Tables 1-5; paper_spec.md §4), per task: (GPT 1.3B, GPT 2.7B).
PAPER = {
    "accuracy_zsl": {"sst2": (70.5, 71.4), "sst5": (39.3, 35.9), "mr": (65.9, 60.9), "subj": (72.6, 75.2), "agnews": (46.3, 39.8), "cb": (37.5, 42.9)},
    "accuracy_ft": {"sst2": (73.9, 76.9), "sst5": (39.5, 39.1), "mr": (73.0, 80.0), "subj": (77.8, 86.1), "agnews": (65.3, 65.7), "cb": (55.4, 57.1)},
    "accuracy_icl": {"sst2": (92.7, 95.0), "sst5": (45.0, 46.5), "mr": (89.0, 91.3), "subj": (90.0, 90.3), "agnews": (79.2, 80.3), "cb": (57.1, 55.4)},
    "rec2ftp": {"sst2": (91.84, 96.83), "sst5": (66.67, 71.60), "mr": (97.08, 95.83), "subj": (87.17, 87.63), "agnews": (83.08, 84.44), "cb": (87.50, 100.00)},
    "simaou_random": {"sst2": (0.002, 0.000), "sst5": (0.003, -0.002), "mr": (0.001, 0.000), "subj": (0.002, 0.001), "agnews": (0.002, -0.002), "cb": (0.003, 0.000)},
    "simaou": {"sst2": (0.110, 0.195), "sst5": (0.080, 0.323), "mr": (0.222, 0.157), "subj": (0.191, 0.212), "agnews": (0.281, 0.333), "cb": (0.234, 0.130)},
    "simam_before": {"sst2": (0.555, 0.687), "sst5": (0.391, 0.380), "mr": (0.398, 0.314), "subj": (0.378, 0.346), "agnews": (0.152, 0.172), "cb": (0.152, 0.228)},
    "simam_after": {"sst2": (0.585, 0.687), "sst5": (0.404, 0.492), "mr": (0.498, 0.347), "subj": (0.490, 0.374), "agnews": (0.496, 0.485), "cb": (0.177, 0.217)},
    "kendall_random": {"sst2": (0.000, -0.001), "sst5": (-0.001, 0.000), "mr": (0.000, 0.000), "subj": (0.001, 0.000), "agnews": (-0.001, 0.000), "cb": (0.000, -0.001)},
    "kendall": {"sst2": (0.192, 0.213), "sst5": (0.151, 0.177), "mr": (0.173, 0.264), "subj": (0.181, 0.203), "agnews": (0.190, 0.201), "cb": (0.274, 0.225)},
}  # fmt: skip

# Deutch et al. (NAACL 2024) artifacts, GPT 1.3B, mean of 3 seeds (field_notes.md §2.1).
DEUTCH = {
    "simaou_gd": {"sst2": 0.111, "sst5": 0.092, "mr": 0.216, "subj": 0.177, "agnews": 0.308, "cb": 0.205},
    "simaou_lcgd": {"sst2": 0.223, "sst5": 0.107, "mr": 0.328, "subj": 0.345, "agnews": 0.327, "cb": 0.344},
    "delta_simam_gd": {"sst2": 0.150, "sst5": 0.308, "mr": 0.139, "subj": 0.254, "agnews": 0.505, "cb": 0.246},
    "delta_simam_lcgd": {"sst2": 0.299, "sst5": 0.326, "mr": 0.263, "subj": 0.322, "agnews": 0.432, "cb": 0.382},
    "simaou_untrained": {"sst2": 0.114, "sst5": 0.062, "mr": 0.246, "subj": 0.202, "cb": 0.012},
    "delta_simam_untrained": {"sst2": 0.085, "sst5": 0.034, "mr": 0.177, "subj": 0.160, "cb": 0.054},
}  # fmt: skip


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _get(node: dict, path: str):
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def render_report(results: dict[str, Any]) -> str:
    """report.md: the run's settings, our numbers with 95% bootstrap intervals, and the paper's beside them."""
    config = results["config"]
    task = config["task"]
    paper = lambda key: PAPER.get(key, {}).get(task, (None, None))  # noqa: E731
    deutch = lambda key: DEUTCH.get(key, {}).get(task)  # noqa: E731
    acc = results["accuracy"]
    lines = [
        f"# ICL vs K/V finetuning: {task} on {config['model']}",
        "",
        f"- evaluation examples: {config['n_eval_used']} (eval split shuffled with seed 1, first N); demo seeds: "
        f"{config['seeds_analyzed']}; k requested {config['k']}, effective "
        f"{[s['k_effective'] for s in results['seeds']]}; learning rates {[s['lr'] for s in results['seeds']]}",
        f"- tuning split: {config['tuning_split']}; analysis position: {config['analysis_position']}; "
        f"data: {config['data_source']}; wall time {config['wall_seconds']} s",
        "- intervals are 95% percentile-bootstrap intervals over evaluation examples (pooled over seeds).",
        "- paper: Dai et al. 2023 (ACL), GPT 1.3B / 2.7B, one tuned seed, 56-2000 evaluation examples.",
        "",
        "## Accuracy (%) and Rec2FTP (%)",
        "",
        "| | ours | paper 1.3B | paper 2.7B |",
        "|---|---|---|---|",
    ]
    for name in ("zsl", "ft", "icl"):
        p = paper(f"accuracy_{name}")
        lines.append(
            f"| {name.upper()} | {_fmt(acc[name], 1)}{_ci(acc['ci95'][name])} | {_fmt(p[0], 1)} | {_fmt(p[1], 1)} |"
        )
    p = paper("rec2ftp")
    detail = results["rec2ftp_detail"]
    lines.append(
        f"| Rec2FTP | {_fmt(results['rec2ftp'], 1)} ({detail['n_both_corrected']}/{detail['n_ft_corrected']}) | "
        f"{_fmt(p[0], 2)} | {_fmt(p[1], 2)} |"
    )
    lines += ["", "## Similarity metrics (mean over examples, then layers)", "",
              "| metric | ours | paper 1.3B | paper 2.7B | Deutch et al. 1.3B |", "|---|---|---|---|---|"]  # fmt: skip
    rows = [
        ("SimAOU (ΔFT)", results["simaou"]["mean"], results["simaou"]["ci95"], "simaou", deutch("simaou_gd")),
        ("SimAOU Uniform[0,1) null (paper)", results["simaou"]["random_mean"], None, "simaou_random", None),
        ("SimAOU isotropic Gaussian null", results["simaou"]["gaussian_mean"], None, None, None),
        ("SimAOU shuffled-example null", results["simaou"]["shuffled_mean"], None, None, None),
        (
            "SimAM before FT (ICL vs ZSL)",
            results["simam"]["before_ft"],
            results["simam"]["before_ci95"],
            "simam_before",
            None,
        ),
        (
            "SimAM after FT (ICL vs FT)",
            results["simam"]["after_ft"],
            results["simam"]["after_ci95"],
            "simam_after",
            None,
        ),
        (
            "ΔSimAM (updates vs ZSL)",
            results["simam"]["delta"],
            results["simam"]["delta_ci95"],
            None,
            deutch("delta_simam_gd"),
        ),
        ("Kendall τ (ICL, FT)", results["kendall"]["mean"], results["kendall"]["ci95"], "kendall", None),
        ("Kendall τ (ICL, random)", results["kendall"]["random_mean"], None, "kendall_random", None),
        (
            "Kendall τ (ICL, FT) with pre-rotary queries",
            results["kendall"].get("pre_rotary_mean"),
            None,
            None,
            None,
        ),
        (
            f"top-{results['kendall']['topk']} recall (ICL, FT)",
            results["kendall"]["topk_recall"],
            None,
            None,
            None,
        ),
        (
            f"top-{results['kendall']['topk']} recall (ICL, random)",
            results["kendall"]["topk_random"],
            None,
            None,
            None,
        ),
        ("weight space cos(ΔW_ICL, ΔW_FT)", _get(results, "weight_space.mean"), None, None, None),
        ("next-token KL(ICL ‖ FT), nats", _get(results, "output.kl_icl_ft"), _get(results, "output.kl_icl_ft_ci95"), None, None),
        ("next-token KL(ICL ‖ ZSL), nats (reference)", _get(results, "output.kl_icl_zsl"), _get(results, "output.kl_icl_zsl_ci95"), None, None),
        (f"next-token top-{_get(results, 'output.topk')} overlap (ICL, FT)", _get(results, "output.topk_overlap_icl_ft"), None, None, None),
        (f"next-token top-{_get(results, 'output.topk')} overlap (ICL, ZSL)", _get(results, "output.topk_overlap_icl_zsl"), None, None, None),
    ]  # fmt: skip
    for name, value, ci, paper_key, deutch_value in rows:
        p = paper(paper_key) if paper_key else (None, None)
        lines.append(
            f"| {name} | {_fmt(value)}{_ci(ci)} | {_fmt(p[0])} | {_fmt(p[1])} | {_fmt(deutch_value)} |"
        )
    controls = results.get("controls", {})
    if controls:
        lines += ["", "## Controls", "", "| control | FT acc | SimAOU | SimAM after | ΔSimAM | Kendall τ | Deutch SimAOU / ΔSimAM |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        main = (
            "vanilla GD (main)",
            acc["ft"],
            results["simaou"]["mean"],
            results["simam"]["after_ft"],
            results["simam"]["delta"],
            results["kendall"]["mean"],
            (deutch("simaou_gd"), deutch("delta_simam_gd")),
        )
        entries = [main]
        # FT variants on the real model: (control key, row label, Deutch et al. suffix or None).
        variants = (
            ("lcgd", "layer-causal GD", "lcgd"),
            ("random_label", "random-label FT", None),
            ("other_task", f"FT on another task ({config.get('other_task_used')})", None),
        )
        for key, label, deutch_suffix in variants:
            if key not in controls:
                continue
            c = controls[key]
            published = (
                (deutch(f"simaou_{deutch_suffix}"), deutch(f"delta_simam_{deutch_suffix}"))
                if deutch_suffix
                else (None, None)
            )
            entries.append(
                (
                    label,
                    c["accuracy_ft"],
                    c["simaou"]["mean"],
                    c["simam_after_ft"]["mean"],
                    c["delta_simam"]["mean"],
                    c["kendall"]["mean"],
                    published,
                )
            )
        if "untrained" in controls:
            c = controls["untrained"]
            entries.append(
                (
                    f"untrained model (ICL acc {_fmt(c['accuracy']['icl'], 1)})",
                    c["accuracy"]["ft"],
                    c["simaou"]["mean"],
                    c["simam"]["after_ft"],
                    c["simam"]["delta"],
                    c["kendall"]["mean"],
                    (deutch("simaou_untrained"), deutch("delta_simam_untrained")),
                )
            )
        for name, ft_acc, s, a, d, kt, dv in entries:
            lines.append(
                f"| {name} | {_fmt(ft_acc, 1)} | {_fmt(s)} | {_fmt(a)} | {_fmt(d)} | {_fmt(kt)} | {_fmt(dv[0])} / {_fmt(dv[1])} |"
            )
    order = results.get("order_sensitivity")
    if order:
        lines += ["", f"## Order sensitivity (Shen et al.; the same demonstrations in {order['orders']} orders)", "",
                  "| | predictions that change with the order (%) | std of P(gold) across orders |", "|---|---|---|"]  # fmt: skip
        for setting in ("icl", "ft"):
            lines.append(
                f"| {setting.upper()} | {_fmt(order[f'{setting}_flip_rate'], 1)}{_ci(order[f'{setting}_flip_rate_ci95'])} "
                f"| {_fmt(order[f'{setting}_gold_prob_std'])}{_ci(order[f'{setting}_gold_prob_std_ci95'])} |"
            )
    lines += ["", "## Per seed", "", "| seed | k | lr | ZSL | ICL | FT | SimAOU | SimAM before | SimAM after | Kendall |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in results["seeds"]:
        a = s["accuracy"]
        lines.append(
            f"| {s['seed']} | {s['k_effective']} | {s['lr']} | {_fmt(a['zsl'], 1)} | {_fmt(a['icl'], 1)} | {_fmt(a['ft'], 1)} | "
            f"{_fmt(s['simaou'])} | {_fmt(s['simam_before'])} | {_fmt(s['simam_after'])} | {_fmt(s['kendall'])} |"
        )
    lines += [
        "",
        "Per-layer curves: `simaou_per_layer.png`, `simam_per_layer.png`, `kendall_per_layer.png`.",
        "",
    ]
    return "\n".join(lines)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _clean(value):
    # JSON has no NaN: write null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_outputs(
    results: dict[str, Any], out_dir: str | Path, *, plots: bool = True, overwrite: bool = True
) -> Path:
    """Write results.json, report.md and the plots into `out_dir`, atomically (temp folder, then rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite or choose another --out.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (staging / "results.json").write_text(
            json.dumps(_clean(results), indent=2, default=_json_default), encoding="utf-8"
        )
        (staging / "report.md").write_text(render_report(results), encoding="utf-8")
        if plots:
            from .plots import plot_per_layer

            plot_per_layer(results, staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


__all__ = ["DEUTCH", "PAPER", "render_report", "render_task_table", "write_outputs"]


def render_task_table(results_by_task: dict[str, dict[str, Any]]) -> str:
    """One markdown table over tasks: our numbers with the paper's (1.3B / 2.7B) and Deutch et al.'s beside them."""
    tasks = [t for t in ("sst2", "sst5", "mr", "subj", "agnews", "cb") if t in results_by_task] + [
        t for t in results_by_task if t not in PAPER["simaou"]
    ]
    header = "| metric | " + " | ".join(tasks) + " |"
    lines = [header, "|---|" + "---|" * len(tasks)]

    def row(name, ours, paper_key=None, deutch_key=None, digits=3):
        cells = []
        for task in tasks:
            value = ours(results_by_task[task])
            cell = _fmt(value, digits)
            extra = []
            if paper_key and task in PAPER.get(paper_key, {}):
                p = PAPER[paper_key][task]
                extra.append(f"{_fmt(p[0], digits)}/{_fmt(p[1], digits)}")
            if deutch_key and task in DEUTCH.get(deutch_key, {}):
                extra.append(f"D {_fmt(DEUTCH[deutch_key][task], digits)}")
            cells.append(cell + (f" ({'; '.join(extra)})" if extra else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    controls = lambda r, name, path: _get(r.get("controls", {}).get(name, {}), path)  # noqa: E731
    row("ZSL acc", lambda r: r["accuracy"]["zsl"], "accuracy_zsl", digits=1)
    row("FT acc", lambda r: r["accuracy"]["ft"], "accuracy_ft", digits=1)
    row("ICL acc", lambda r: r["accuracy"]["icl"], "accuracy_icl", digits=1)
    row("Rec2FTP", lambda r: r["rec2ftp"], "rec2ftp", digits=1)
    row("SimAOU (ΔFT)", lambda r: r["simaou"]["mean"], "simaou", "simaou_gd")
    row("SimAOU Uniform null", lambda r: r["simaou"]["random_mean"], "simaou_random")
    row("SimAOU Gaussian null", lambda r: r["simaou"]["gaussian_mean"])
    row("SimAOU shuffled null", lambda r: r["simaou"]["shuffled_mean"])
    row("SimAOU LCGD", lambda r: controls(r, "lcgd", "simaou.mean"), None, "simaou_lcgd")
    row("SimAOU random-label FT", lambda r: controls(r, "random_label", "simaou.mean"))
    row("SimAOU untrained model", lambda r: controls(r, "untrained", "simaou.mean"), None, "simaou_untrained")
    row("SimAM before FT", lambda r: r["simam"]["before_ft"], "simam_before")
    row("SimAM after FT", lambda r: r["simam"]["after_ft"], "simam_after")
    row("ΔSimAM", lambda r: r["simam"]["delta"], None, "delta_simam_gd")
    row("ΔSimAM LCGD", lambda r: controls(r, "lcgd", "delta_simam.mean"), None, "delta_simam_lcgd")
    row("ΔSimAM untrained", lambda r: controls(r, "untrained", "simam.delta"), None, "delta_simam_untrained")
    row("Kendall (ICL, FT)", lambda r: r["kendall"]["mean"], "kendall")
    row("Kendall (ICL, random)", lambda r: r["kendall"]["random_mean"], "kendall_random")
    row("Kendall pre-rotary", lambda r: r["kendall"].get("pre_rotary_mean"))
    row("Kendall untrained", lambda r: controls(r, "untrained", "kendall.mean"))
    row("ICL acc untrained", lambda r: controls(r, "untrained", "accuracy.icl"), digits=1)
    row("cos(ΔW_ICL, ΔW_FT)", lambda r: _get(r, "weight_space.mean"))
    row("cos(ΔW) untrained", lambda r: controls(r, "untrained", "weight_space.mean"))
    return "\n".join(lines)
