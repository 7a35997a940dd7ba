"""In-context learning lab: synthetic tasks where in-context learning emerges in tiny models, the reference
learners it should be compared with, and the momentum-attention arms (Dai et al., 2023, §5), compared only once the
η = 0 baseline reaches the literature's anchors.

    >>> from transformers_momentum.icl_lab import ICLLabArguments, run_icl_lab
    >>> results = run_icl_lab(ICLLabArguments(task="linear-regression", etas=["0", "0.5"], seeds=[1, 2, 3, 4, 5],
    ...                                       steps=200, out="runs/icl"))  # doctest: +SKIP
    >>> results.gate.message, results.momentum.comparisons["0.5"].verdict  # doctest: +SKIP

A pipeline of stage modules: tasks (`LinearRegressionTask`, `MQARTask`, `Curriculum`, `PromptStream`) -> training
(`training`: `Trainer` on the seeded stream, `AnchorProbe` for steps-to-threshold) -> evaluation (`regression`,
`mqar`, `control`: one `RunRecord` per trained model) -> reference learners (`learners`) -> statistics
(`statistics`: TOST, Holm, bootstrap; `gate`: the anchors; `aggregate`) -> typed results (`results.LabResults`) ->
report (`report`, `plots`) and model cards (`cards`). `pipeline.run_icl_lab` wires them; `runs` keeps every
trained run so that a lab resumes and several launched processes share one output folder.

Names are imported on first use, so the CLI's ``--help`` does not load torch. The two regression models live in
`transformers_momentum.models.icl_regression`, whose import registers them with the Auto classes.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "config": ("ICLLabArguments", "parse_etas"),
    "tasks": (
        "Curriculum", "LinearRegressionTask", "MQARTask", "PromptStream", "REGRESSION_PRESETS", "RegressionPrompts",
        "mqar_stream", "regression_stream",
    ),
    "learners": (
        "Learner", "gradient_descent", "kalman_filter", "learner_predictions", "learner_weights",
        "momentum_gradient_descent", "newton_iterations", "ols", "online_momentum_at_eta", "online_momentum_sgd",
        "online_sgd", "reference_learners", "ridge", "tune_learners",
    ),
    "measures": (
        "cosine", "mean_interval", "normalized_squared_error", "paired_difference", "preds_diff",
        "sensitivity_cosine", "update_cosine",
    ),
    "statistics": ("Comparison", "bootstrap_median", "compare_arms", "diverged_seeds", "holm", "tost"),
    "evaluation": ("alignment", "icl_update", "layer_outputs", "model_curve", "mqar_accuracy", "update_cosines"),
    "training": ("build_lsa_model", "build_mqar_model", "build_regression_model", "learned_etas", "train"),
    "results": ("LabResults", "RunRecord"),
    "pipeline": ("run_icl_lab",),
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
