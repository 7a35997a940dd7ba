"""What the lab measures, as small pure functions (torch in, floats or tensors out).

* Error: squared error divided by the input dimension d (Garg et al., 2022), so a predictor that always says 0
  scores about 1 on N(0, I) inputs.
* Alignment with a learner (von Oswald et al., 2023): "preds diff", the mean over prompts of |y_model - y_learner|,
  and "model cos", the mean over prompts of the cosine between the input sensitivities d(y)/d(x_q).
* The update cosine, in the form of Dai et al.'s SimAOU (2023, §3.3): cos(ICL output - zero-shot output,
  FT output - zero-shot output) per prompt, here over the predictions at a set of probe queries.
* Intervals: Student-t 95% intervals over training seeds (`scipy.stats`); paired differences over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats


def normalized_squared_error(predictions: torch.Tensor, targets: torch.Tensor, n_dims: int) -> torch.Tensor:
    """(prediction - target)^2 / d, elementwise."""
    return (predictions.double() - targets.double()).pow(2) / n_dims


def preds_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over prompts of the L2 distance between two predictions (scalars: |a - b|)."""
    return (a.double() - b.double()).abs().mean().item()


def cosine(a: torch.Tensor, b: torch.Tensor, dim: int = -1, eps: float = 1e-30) -> torch.Tensor:
    """Cosine similarity along `dim` in float64; 0 where either vector is zero."""
    a, b = a.double(), b.double()
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)


def sensitivity_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over prompts of cos(d y_a / d x_q, d y_b / d x_q); inputs (n, d)."""
    return cosine(a, b).mean().item()


def update_cosine(
    icl: torch.Tensor, zero_shot: torch.Tensor, finetuned: torch.Tensor, finetuned_zero_shot: torch.Tensor
) -> torch.Tensor:
    """Per prompt cos(icl - zero_shot, finetuned - finetuned_zero_shot) over the last axis (probe queries).

    Dai et al.'s SimAOU L2-normalises the two outputs before subtracting; here the outputs are predictions at the
    probe queries and the zero-shot prediction of a regression learner is exactly 0 (w = 0), so the updates are
    compared as they are."""
    return cosine(icl - zero_shot, finetuned - finetuned_zero_shot)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean and the Student-t interval of the mean (`scipy.stats.ttest_1samp`); the bounds are NaN for n < 2."""
    array = np.asarray(values, dtype=float)
    mean = float(array.mean()) if array.size else math.nan
    low = high = math.nan
    if array.size >= 2:
        if np.ptp(array) == 0:
            low = high = mean
        else:
            interval = stats.ttest_1samp(array, 0.0).confidence_interval(confidence)
            low, high = float(interval.low), float(interval.high)
    return {"mean": mean, "low": low, "high": high, "n": int(array.size)}


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> dict[str, float | int]:
    """Mean of a - b over paired units (seeds) with its Student-t interval (`scipy.stats.ttest_rel`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    result = mean_interval(list(a - b), confidence)
    if a.size >= 2 and np.ptp(a - b) > 0:
        test = stats.ttest_rel(a, b)
        result["p_value"] = float(test.pvalue)
    return result


def verdict(difference: dict[str, float], lower_is_better: bool = True) -> str:
    """What a paired interval allows one to say: better, worse, or no detectable difference."""
    low, high = difference["low"], difference["high"]
    if math.isnan(low) or math.isnan(high):
        return "undetermined (fewer than 2 seeds)"
    if low > 0:
        return "worse" if lower_is_better else "better"
    if high < 0:
        return "better" if lower_is_better else "worse"
    return "no detectable difference (the interval contains 0)"
