"""ICL-vs-finetuning analyzer (Dai et al. 2023, with the controls of Deutch et al. 2024) for any HF causal LM.

    >>> from transformers_momentum.analysis import AnalysisConfig, analyze
    >>> result = analyze(model, tokenizer, AnalysisConfig(task="sst2", k=8, n_eval=50, lr=1e-3))  # doctest: +SKIP
    >>> result["simaou.mean"], result["accuracy.icl"]  # doctest: +SKIP

The metric functions (`metrics`), the probe (`AttentionProbe`), the prompt layout (`PromptLayout`), the K/V
finetuning loop (`kv_finetune`) and the controls are usable on their own. See docs/analysis.md.
"""

from .controls import random_label_demos, reinitialize_blocks, untrained_copy
from .finetune import FinetuneTrace, kv_finetune
from .metrics import (
    Rec2FTP,
    StreamingMetric,
    accuracy,
    bootstrap_ci,
    cosine,
    delta_simam,
    ft_attention_to_training_tokens,
    head_cosines,
    kendall,
    order_sensitivity,
    output_kl,
    rec2ftp,
    simam,
    simaou,
    simaou_null,
    topk_recall,
)
from .probe import AttentionProbe, KVInputSecondMoment, ProbeRecord
from .prompt import Context, PromptLayout
from .report import render_report, write_outputs
from .runner import CONTROLS, PAPER_LR_GRID, AnalysisConfig, AnalysisResult, analyze
from .tasks import TASKS, AnalysisInputError, TaskData, TaskSpec, get_task, load_task_data, register_task

__all__ = [
    "CONTROLS",
    "PAPER_LR_GRID",
    "TASKS",
    "AnalysisConfig",
    "AnalysisInputError",
    "AnalysisResult",
    "AttentionProbe",
    "Context",
    "FinetuneTrace",
    "KVInputSecondMoment",
    "ProbeRecord",
    "PromptLayout",
    "Rec2FTP",
    "StreamingMetric",
    "TaskData",
    "TaskSpec",
    "accuracy",
    "analyze",
    "bootstrap_ci",
    "cosine",
    "delta_simam",
    "ft_attention_to_training_tokens",
    "get_task",
    "head_cosines",
    "kendall",
    "order_sensitivity",
    "output_kl",
    "kv_finetune",
    "load_task_data",
    "random_label_demos",
    "rec2ftp",
    "register_task",
    "reinitialize_blocks",
    "render_report",
    "simam",
    "simaou",
    "simaou_null",
    "topk_recall",
    "untrained_copy",
    "write_outputs",
]
