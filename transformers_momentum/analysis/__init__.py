"""ICL-vs-finetuning analyzer (Dai et al. 2023, with the controls of Deutch et al. 2024 and Shen et al. 2024).

    >>> from transformers_momentum.analysis import AnalysisConfig, analyze, load_model
    >>> model, tokenizer = load_model("smollm2-135m")  # doctest: +SKIP
    >>> result = analyze(model, tokenizer, AnalysisConfig(task="sst2", k=8, n_eval=50, lr=1e-3))  # doctest: +SKIP
    >>> result.estimate("simaou").mean, result.estimate("accuracy_icl").ci95  # doctest: +SKIP

The pipeline reads as its stages (`pipeline.analyze`): config -> protocol (splits, learning rate, seeds) -> engine
(ZSL / ICL / FT forwards) -> metric collection -> statistics -> typed results -> report. Every stage is usable on
its own: the metric functions (`metrics`), the probe (`AttentionProbe`), the prompt layout (`PromptLayout`), the ICL
scorer (`CandidateScorer`), the K/V finetuning loop (`kv_finetune`) and the controls. See docs/analysis.md.

Names are imported on first use, so ``import transformers_momentum.analysis.metrics`` (or the CLI's ``--help``)
does not load the whole stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "config": ("AnalysisConfig", "CONTROLS", "ModelArguments", "OutputArguments", "PAPER_LR_GRID"),
    "errors": ("AnalysisInputError",),
    "tasks": ("TASKS", "TaskData", "TaskSpec", "check_task_data", "get_task", "load_task_data", "register_task"),
    "prompt": ("Context", "PromptLayout"),
    "icl": ("CandidateScorer", "CandidateScores", "choose_demos", "context_budget"),
    "probe": ("AttentionProbe", "ProbeRecord"),
    "weight_space": ("KVInputSecondMoment", "weight_space_cosines"),
    "finetune": ("FinetuneTrace", "kv_finetune"),
    "controls": ("flipped_label_demos", "random_label_demos", "reinitialize_blocks", "untrained_copy"),
    "variants": ("FT_VARIANTS",),
    "metrics": (
        "Rec2FTP", "accuracy", "cosine", "delta_simam", "ft_attention_to_training_tokens", "head_cosines", "kendall",
        "order_sensitivity", "output_kl", "rec2ftp", "simam", "simaou", "simaou_null", "topk_recall",
    ),
    "statistics": (
        "Estimate", "accuracy_estimate", "bootstrap_mean_ci", "crossed_intervals", "estimate", "pigeonhole_ci",
        "wilson_ci",
    ),
    "results": ("AnalysisResult",),
    "pipeline": ("analyze",),
    "report": ("render_report", "render_task_table", "write_outputs"),
    "loading": ("load_model",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .config import CONTROLS, PAPER_LR_GRID, AnalysisConfig, ModelArguments, OutputArguments  # noqa: F401
    from .pipeline import analyze  # noqa: F401
    from .results import AnalysisResult  # noqa: F401
