"""The anchor gate: a comparison between arms is read only once the η = 0 baseline does the task as well as the
literature says attention can. Below that level, differences between arms measure optimisation speed, not
in-context learning, so the lab withholds the verdict and says "baseline below anchor".

* Regression (Garg et al. 2022: a trained transformer matches least squares; its error is ≈ OLS's at every k):
  the baseline's error at every k in [2d, K] within 0.01 of OLS's (noise-free). With label noise the reference is
  the better of OLS and tuned ridge at each k; with a drifting w, the Kalman-filter oracle (the exact posterior
  mean), both extensions of the anchor to tasks it does not cover. Not testable when K < 2d.
* MQAR (Arora et al. 2024, Zoology: attention solves multi-query associative recall): accuracy ≥ 0.99 with the
  most key-value pairs (the headline setting), i.e. an error rate ≤ 0.01.

The quantity is a *gap* (lower is better, reached at gap ≤ threshold), measured on the evaluation prompts for the
gate and on held-out prompts during training for steps-to-threshold (`training.AnchorProbe`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .results import GateRecord

THRESHOLD = 0.01
GARG = (
    "Garg et al. 2022: a trained transformer matches least squares on noise-free in-context linear regression "
    "(its error equals OLS's at every k, ~0 once k >= d)"
)
ZOOLOGY = "Arora et al. 2024 (Zoology): attention models solve multi-query associative recall (accuracy ~1)"


def regression_reference(noise_std: float, drift_std: float) -> str:
    """Which learner's curve the regression gate compares with."""
    if drift_std > 0:
        return "kalman"
    return "best_of_ols_ridge" if noise_std > 0 else "ols"


def regression_gate_ks(n_dims: int, max_examples: int) -> list[int]:
    return list(range(2 * n_dims, max_examples + 1))


def describe(
    task: str, n_dims: int = 0, max_examples: int = 0, reference: str = "ols", max_kv: int = 0
) -> str:
    if task == "mqar":
        return (
            f"η = 0 accuracy with {max_kv} key-value pairs ≥ {1 - THRESHOLD:.2f} (error rate ≤ {THRESHOLD})"
        )
    names = {
        "ols": "OLS",
        "best_of_ols_ridge": "the better of OLS and tuned ridge",
        "kalman": "the Kalman filter",
    }
    return (
        f"η = 0 error at every k in [2d, K] = [{2 * n_dims}, {max_examples}] within {THRESHOLD} of "
        f"{names[reference]}'s"
    )


def evaluate_gate(
    task: str,
    per_seed_gap: Mapping[int, float],
    baseline_gap: float,
    steps_to_threshold: Mapping[int, int | None],
    testable: bool,
    criterion: str,
    reached_text: str = "",
) -> GateRecord:
    """The gate's record. `baseline_gap` is the gap of the baseline's mean curve over its non-diverged seeds;
    `reached_text` says in words what the baseline reached (e.g. its error and the reference's at the worst k)."""
    anchor = ZOOLOGY if task == "mqar" else GARG
    reached = testable and math.isfinite(baseline_gap) and baseline_gap <= THRESHOLD
    reached_text = reached_text or f"gap {baseline_gap:.4f}"
    if not testable:
        message = "anchor not testable: regression needs K >= 2d examples, so no verdict is given"
    elif reached:
        message = f"baseline at anchor: {reached_text}, within the threshold {THRESHOLD}"
    else:
        asks = f"accuracy >= {1 - THRESHOLD:.2f}" if task == "mqar" else f"a gap <= {THRESHOLD}"
        message = f"baseline below anchor: {reached_text}; the anchor asks {asks} ({anchor})"
    return GateRecord(
        anchor=anchor,
        criterion=criterion,
        threshold=THRESHOLD,
        testable=testable,
        reached=reached,
        value=baseline_gap,
        per_seed={str(seed): gap for seed, gap in per_seed_gap.items()},
        steps_to_threshold={str(seed): steps for seed, steps in steps_to_threshold.items()},
        message=message,
    )


__all__ = [
    "GARG",
    "THRESHOLD",
    "ZOOLOGY",
    "describe",
    "evaluate_gate",
    "regression_gate_ks",
    "regression_reference",
]
