"""In-context learning lab: synthetic tasks where in-context learning emerges in tiny models, the reference
learners it should be compared with, and the momentum-attention arms (Dai et al., 2023, §5).

    >>> from transformers_momentum.icl_lab import ICLLabArguments, run_icl_lab
    >>> results = run_icl_lab(ICLLabArguments(task="linear-regression", etas="0,0.5", seeds="1,2", steps=200,
    ...                                       out="runs/icl"))  # doctest: +SKIP
    >>> results["momentum"]["paired_vs_eta0"]["0.5"]["verdict"]  # doctest: +SKIP

Stages, each usable alone: tasks (`LinearRegressionTask`, `MQARTask`, `PromptStream`) -> models
(`MomentumGPTForInContextRegression`, `LinearSelfAttentionForInContextRegression`, MQAR on
`MomentumGPTForCausalLM`) -> training (`Trainer` on the seeded stream) -> reference learners (`reference_learners`,
`tune_learners`) -> measures (`preds_diff`, `sensitivity_cosine`, `update_cosine`, `mean_interval`,
`paired_difference`) -> `run_icl_lab` (results.json, report.md, plots) -> `export_checkpoints` (model cards).

Names are imported on first use, so the CLI's ``--help`` does not load torch. The two regression models live in
`transformers_momentum.models.icl_regression`, whose import registers them with the Auto classes.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "config": ("ICLLabArguments", "parse_etas"),
    "tasks": (
        "LinearRegressionTask", "MQARTask", "PromptStream", "REGRESSION_PRESETS", "RegressionPrompts",
        "mqar_stream", "regression_stream",
    ),
    "learners": (
        "Learner", "gradient_descent", "learner_predictions", "learner_weights", "momentum_gradient_descent",
        "newton_iterations", "ols", "reference_learners", "ridge", "tune_learners",
    ),
    "measures": (
        "cosine", "mean_interval", "normalized_squared_error", "paired_difference", "preds_diff",
        "sensitivity_cosine", "update_cosine", "verdict",
    ),
    "evaluation": ("alignment", "icl_update", "layer_outputs", "model_curve", "mqar_accuracy", "update_cosines"),
    "training": ("build_lsa_model", "build_mqar_model", "build_regression_model", "learned_etas", "train"),
    "lab": ("positive_control", "run_icl_lab", "run_mqar_lab", "run_regression_lab"),
    "report": ("render_report", "write_outputs"),
    "cards": ("export_checkpoints",),
    "..models.icl_regression": (
        "LinearSelfAttentionConfig", "LinearSelfAttentionForInContextRegression",
        "MomentumGPTForInContextRegression", "MomentumGPTICLRegressionConfig",
    ),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        module = _MODULE_OF[name]
        value = getattr(
            importlib.import_module(module if module.startswith("..") else f".{module}", __name__), name
        )
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
