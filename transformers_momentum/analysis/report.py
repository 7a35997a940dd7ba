"""report.md (one table over the results schema, beside the paper's numbers), results.json, plots, records.npz.

Every row of the report's table is one metric of the schema (`results.AnalysisResult`), defined once in `ROWS`;
its columns are the main comparison (vanilla GD on the pretrained model) with its crossed interval (seeds and
examples resampled), its examples-only interval and seed spread, the published numbers, and the controls.
`render_task_table` lays the same rows out over tasks. Outputs are written into a temporary sibling folder that is
renamed to the output folder only once complete, so an error never leaves a half-written output folder behind.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assets import staging_folder
from .results import AnalysisResult
from .statistics import FEW_SEEDS, WILSON, Estimate, few_seeds_note

# The paper's numbers (Dai et al. 2023, ACL version, Tables 1-5), per task: (GPT 1.3B, GPT 2.7B).
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

# Deutch et al. 2024 (NAACL), GPT 1.3B, mean of 3 seeds, from their released result files.
DEUTCH = {
    "simaou_gd": {"sst2": 0.111, "sst5": 0.092, "mr": 0.216, "subj": 0.177, "agnews": 0.308, "cb": 0.205},
    "simaou_lcgd": {"sst2": 0.223, "sst5": 0.107, "mr": 0.328, "subj": 0.345, "agnews": 0.327, "cb": 0.344},
    "delta_simam_gd": {"sst2": 0.150, "sst5": 0.308, "mr": 0.139, "subj": 0.254, "agnews": 0.505, "cb": 0.246},
    "delta_simam_lcgd": {"sst2": 0.299, "sst5": 0.326, "mr": 0.263, "subj": 0.322, "agnews": 0.432, "cb": 0.382},
    "simaou_untrained": {"sst2": 0.114, "sst5": 0.062, "mr": 0.246, "subj": 0.202, "cb": 0.012},
    "delta_simam_untrained": {"sst2": 0.085, "sst5": 0.034, "mr": 0.177, "subj": 0.160, "cb": 0.054},
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One metric of the report: `metric` names a `ModelResult` field (``scope="model"``) or a `ComparisonResult`
    field (``scope="comparison"``); `paper` / `deutch` name the published numbers beside it."""

    label: str
    metric: str
    scope: str
    paper: str | None = None
    deutch: str | None = None  # DEUTCH key prefix: "<prefix>_gd", "<prefix>_lcgd", "<prefix>_untrained"
    digits: int = 3


ROWS = (
    Row("ZSL accuracy (%)", "accuracy_zsl", "model", "accuracy_zsl", digits=1),
    Row("ICL accuracy (%)", "accuracy_icl", "model", "accuracy_icl", digits=1),
    Row("FT accuracy (%)", "accuracy_ft", "comparison", "accuracy_ft", digits=1),
    Row("Rec2FTP (%)", "rec2ftp", "comparison", "rec2ftp", digits=1),
    Row("SimAOU (ICL vs FT updates)", "simaou", "comparison", "simaou", "simaou"),
    Row("SimAOU Uniform[0,1) null (paper's)", "simaou_uniform_null", "model", "simaou_random"),
    Row("SimAOU isotropic Gaussian null", "simaou_gaussian_null", "model"),
    Row("SimAOU shuffled-example null", "simaou_shuffled_null", "comparison"),
    Row("SimAM before FT (ICL vs ZSL)", "simam_before", "model", "simam_before"),
    Row("SimAM after FT (ICL vs FT)", "simam_after", "comparison", "simam_after"),
    Row("ΔSimAM (updates vs ZSL)", "delta_simam", "comparison", None, "delta_simam"),
    Row("Kendall τ (ICL, FT)", "kendall", "comparison", "kendall"),
    Row("Kendall τ (ICL, random)", "kendall_random", "comparison", "kendall_random"),
    Row("Kendall τ, pre-rotary queries", "kendall_pre_rotary", "comparison"),
    Row("top-k recall (ICL, FT)", "topk_recall", "comparison"),
    Row("top-k recall (ICL, random)", "topk_random", "comparison"),
    Row("weight space cos(ΔW_ICL, ΔW_FT)", "weight_space", "comparison"),
    Row("next-token KL(ICL ‖ FT), nats", "output_kl", "comparison"),
    Row("next-token KL(ICL ‖ ZSL), nats", "output_kl_zsl", "model"),
    Row("next-token top-k overlap (ICL, FT)", "output_topk", "comparison"),
    Row("next-token top-k overlap (ICL, ZSL)", "output_topk_zsl", "model"),
    Row("order: ICL predictions changed (%)", "order.icl_flip_rate", "model", digits=1),
    Row("order: FT predictions changed (%)", "order.ft_flip_rate", "model", digits=1),
    Row("order: std of P(gold), ICL", "order.icl_gold_prob_std", "model"),
    Row("order: std of P(gold), FT", "order.ft_gold_prob_std", "model"),
)

# Columns after the main one: (model, variant, header, Deutch suffix).
CONTROL_COLUMNS = (
    ("pretrained", "lcgd", "LCGD", "lcgd"),
    ("pretrained", "random_label", "random-label FT", None),
    ("pretrained", "flipped_label", "flipped-label FT", None),
    ("pretrained", "other_task", "other-task FT", None),
    ("untrained", "gd", "untrained model", "untrained"),
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def cell(result: AnalysisResult, row: Row, model: str = "pretrained", variant: str = "gd"):
    """The value of `row` for (model, variant): an Estimate, a float, or None when not measured."""
    if model not in result.models:
        return None
    node: Any = result.models[model]
    if row.scope == "comparison":
        node = node.comparisons.get(variant)
    for part in row.metric.split("."):
        node = getattr(node, part, None) if node is not None else None
    if row.metric == "weight_space" and node is not None:
        return node.mean
    if row.metric == "rec2ftp" and node is None and result.models[model].comparisons.get(variant) is not None:
        return math.nan  # measured, but undefined: FT fixed no example
    return node


def _value(value) -> float | None:
    return value.mean if isinstance(value, Estimate) else value


def _interval(ci: list[float] | None, digits: int) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def _with_ci(value, digits: int) -> str:
    text = _fmt(_value(value), digits)
    if isinstance(value, Estimate) and value.ci95:
        text += " " + _interval(value.ci95, digits) + ("ᵂ" if value.interval == WILSON else "")
    return text


def _intervals_line(n_seeds: int) -> str:
    """The report's statement of what every interval is over."""
    rest = (
        "accuracies marked ᵂ are Wilson score intervals (every seed gives the same outcome on each example, as "
        "ZSL's always do). The `CI, examples only` column holds the seeds' demonstrations fixed. The seed-to-seed "
        "spread is the `seed SD` column and the per-seed table."
    )
    if n_seeds < 2:
        return (
            "- **Intervals** are 95% percentile bootstrap intervals over evaluation examples: with one demonstration "
            "seed, Owen's pigeonhole bootstrap over seeds × examples (Owen 2007) has no seed to resample; "
            + rest
        )
    return (
        "- **Intervals** are 95% intervals over both demonstration seeds and evaluation examples: Owen's pigeonhole "
        f"bootstrap (Owen 2007) resamples the {n_seeds} demonstration seeds and the evaluation examples "
        "independently and takes the mean of the resampled seed × example table (percentile interval), so it covers "
        "what other demonstrations and other examples would give; " + rest
    )


def _label_controls(result: AnalysisResult) -> list[str]:
    """What the label controls did: how many random labels kept their gold label, the flipped mapping."""
    comparisons = result.models["pretrained"].comparisons
    lines = []
    if "random_label" in comparisons:
        info = comparisons["random_label"].info
        kept = sum(i.get("labels_kept", 0) for i in info)
        total = sum(len(i.get("labels", [])) for i in info)
        chance = info[0].get("chance") if info else None
        expected = f" ({chance * total:.1f} expected at chance)" if chance is not None and total else ""
        lines.append(
            f"- **Random-label FT** (Min et al. 2022): every demonstration's label drawn uniformly from the label set; "
            f"{kept} of {total} demonstrations over all seeds kept their gold label{expected}; per seed below."
        )
    if "flipped_label" in comparisons:
        info = comparisons["flipped_label"].info
        mapping = info[0].get("mapping", []) if info else []
        words = (info[0].get("label_words") if info else None) or [str(c) for c in range(len(mapping))]
        shown = ", ".join(f"{words[a]} → {words[b]}" for a, b in enumerate(mapping)) or "n/a"
        lines.append(
            f"- **Flipped-label FT** (Wei et al. 2023): every label mapped consistently to another class ({shown}); "
            "no demonstration keeps its gold label."
        )
    return lines


def render_report(result: AnalysisResult) -> str:
    """report.md: settings, warnings, the one table of metrics, and the per-seed table."""
    config, run, task = result.config, result.run, result.config["task"]
    seeds = result.seeds
    lines = [
        f"# ICL vs K/V finetuning: {task} on {run['model']}",
        "",
        f"- {run['n_eval_used']} evaluation examples (the eval split shuffled with seed 1, first N); demonstration "
        f"seeds {run['seeds_analyzed']}; k requested {config['k']}, effective {[s.k_effective for s in seeds]}; "
        f"learning rates {[s.lr for s in seeds]} (tuning split: {run['tuning_split']})",
        f"- analysis position: {config['analysis_position']}; data: {run['data_source']}; {run['dtype']} on "
        f"{', '.join(run['devices'])}, batch {config['batch_size']}; wall time {run['wall_seconds']} s",
        _intervals_line(len(seeds)),
        "- Published numbers: Dai et al. 2023 (ACL), GPT 1.3B / 2.7B, one tuned seed, 56-2000 evaluation examples; "
        "Deutch et al. 2024 (D), GPT 1.3B, mean of 3 seeds.",
    ]
    if len(seeds) < FEW_SEEDS:
        lines.append(f"- **{few_seeds_note(len(seeds))}**")
    lines += _label_controls(result)
    if result.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result.warnings]
    # A column per control that ran (a model-level row has a value for any variant, so ask the comparisons).
    present = [c for c in CONTROL_COLUMNS if c[1] in getattr(result.models.get(c[0]), "comparisons", {})]
    header = [
        "metric", "ours (vanilla GD) [95% CI, seeds × examples]", "CI, examples only", "seed SD",
        "paper 1.3B / 2.7B", "D (GD)",
    ] + [c[2] for c in present]  # fmt: skip
    lines += ["", "## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ROWS:
        main = cell(result, row)
        measured = main is not None or any(cell(result, row, m, v) is not None for m, v, _, _ in present)
        if not measured and row.metric != "rec2ftp":  # Rec2FTP stays: "n/a (0/0)" says FT fixed nothing
            continue
        paper = PAPER.get(row.paper, {}).get(task) if row.paper else None
        published = f"{_fmt(paper[0], row.digits)} / {_fmt(paper[1], row.digits)}" if paper else ""
        deutch = DEUTCH.get(f"{row.deutch}_gd", {}).get(task) if row.deutch else None
        spread = main.seed_sd if isinstance(main, Estimate) else None
        examples_only = _interval(main.ci95_examples_only, row.digits) if isinstance(main, Estimate) else ""
        cells = [row.label, _with_ci(main, row.digits), examples_only,
                 _fmt(spread, row.digits) if spread is not None else "", published,
                 _fmt(deutch, row.digits) if deutch is not None else ""]  # fmt: skip
        for model, variant, _, suffix in present:
            if row.scope == "model" and model == "pretrained":
                cells.append("")
                continue
            value = cell(result, row, model, variant)
            text = (
                "" if value is None else _fmt(_value(value), row.digits)
            )  # blank: not measured for this column
            published = DEUTCH.get(f"{row.deutch}_{suffix}", {}).get(task) if row.deutch and suffix else None
            cells.append(text + (f" (D {_fmt(published, row.digits)})" if published is not None else ""))
        if row.metric == "rec2ftp":
            counts = result.models["pretrained"].comparisons["gd"].rec2ftp_counts
            cells[1] += f" ({counts[1]}/{counts[0]})"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per seed", "", "| seed | k | lr | ZSL | ICL | FT | SimAOU | SimAM after | Kendall τ | random labels kept |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    main = result.models["pretrained"]
    gd = main.comparisons["gd"]
    random_info = main.comparisons["random_label"].info if "random_label" in main.comparisons else []
    for i, seed in enumerate(seeds):
        kept = random_info[i].get("labels_kept") if i < len(random_info) else None
        per_seed = [
            _fmt(e.per_seed[i] if i < len(e.per_seed) else None, d)
            for e, d in ((main.accuracy_zsl, 1), (main.accuracy_icl, 1), (gd.accuracy_ft, 1), (gd.simaou, 3), (gd.simam_after, 3), (gd.kendall, 3))
        ]  # fmt: skip
        lines.append(
            f"| {seed.seed} | {seed.k_effective} | {seed.lr} | "
            + " | ".join(per_seed)
            + f" | {'' if kept is None else f'{kept} of {seed.k_effective}'} |"
        )
    lines += [
        "",
        "Per-layer curves: `simaou_per_layer.png`, `simam_per_layer.png`, `kendall_per_layer.png`.",
        "",
    ]
    return "\n".join(lines)


def render_task_table(results_by_task: dict[str, AnalysisResult]) -> str:
    """One markdown table over tasks, with the rows of `ROWS`: our value (paper 1.3B/2.7B; D = Deutch et al.),
    then each control as its own row."""
    order = ("sst2", "sst5", "mr", "subj", "agnews", "cb")
    tasks = [t for t in order if t in results_by_task] + [t for t in results_by_task if t not in order]
    lines = ["| metric | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    columns = (("pretrained", "gd", "", "gd"),) + CONTROL_COLUMNS
    for row in ROWS:
        for model, variant, header, suffix in columns:
            if header and row.scope == "model" and model == "pretrained":
                continue
            cells, seen = [], False
            for task in tasks:
                value = _value(cell(results_by_task[task], row, model, variant))
                seen |= value is not None
                extra = []
                if not header and row.paper and task in PAPER.get(row.paper, {}):
                    p = PAPER[row.paper][task]
                    extra.append(f"{_fmt(p[0], row.digits)}/{_fmt(p[1], row.digits)}")
                if row.deutch and suffix and task in DEUTCH.get(f"{row.deutch}_{suffix}", {}):
                    extra.append(f"D {_fmt(DEUTCH[f'{row.deutch}_{suffix}'][task], row.digits)}")
                cells.append(_fmt(value, row.digits) + (f" ({'; '.join(extra)})" if extra else ""))
            if seen:
                label = row.label + (f", {header}" if header else "")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(
    result: AnalysisResult, out_dir: str | Path, *, plots: bool = True, overwrite: bool = True
) -> Path:
    """results.json, report.md, the plots and (with records) records.npz in `out_dir`, atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise FileExistsError(
            f"{out_dir} exists and is not an empty folder; pass --overwrite or choose another --out."
        )
    staging = staging_folder(out_dir)
    try:
        (staging / "results.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        (staging / "report.md").write_text(render_report(result), encoding="utf-8")
        if result.records is not None:
            result.records.save(staging / "records.npz")
        if plots:
            from .plots import plot_per_layer

            plot_per_layer(result, staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


__all__ = [
    "CONTROL_COLUMNS",
    "DEUTCH",
    "PAPER",
    "ROWS",
    "Row",
    "cell",
    "render_report",
    "render_task_table",
    "write_outputs",
]
