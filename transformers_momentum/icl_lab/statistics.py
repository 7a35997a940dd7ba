"""Verdicts that say what the seeds allow: paired t-intervals, TOST equivalence, Holm over the arms, a robust
companion, and the seeds whose baseline diverged.

Every comparison is an arm against the η = 0 baseline, paired by training seed (same data stream, same
initialisation seed), on one per-seed headline number where *lower is better* (an error; MQAR uses 1 − accuracy).

* **Difference**: the mean paired difference d = arm − baseline with its two-sided 95% Student-t interval and the
  paired t-test's p-value (`scipy.stats.ttest_rel`).
* **Equivalence** (TOST, Schuirmann 1987; Lakens 2017): two one-sided t-tests of H0: d ≤ −Δ and H0: d ≥ +Δ at
  α = 0.05 each; p_TOST is the larger of the two p-values, and p_TOST < 0.05 exactly when the 90% t-interval lies
  inside (−Δ, +Δ). The margin Δ is fixed before the run (`margin_relative` × the baseline's mean error: 5% by
  default, the size of the effect Dai et al. 2023 report in Table 7, 51.9 → 54.7).
* **Family**: Holm's step-down correction (Holm 1979) over the arms, applied separately to the difference p-values
  and to the TOST p-values.
* **Verdict**: ``equivalent`` if the Holm-adjusted TOST p < 0.05 (the difference, whatever its sign, is smaller
  than what would matter: a detectable difference inside the margin is still "equivalent", and the record keeps
  `difference_significant` to say so); else ``better``/``worse`` if the Holm-adjusted difference p < 0.05; else
  ``inconclusive``.
* **Robust companion**: the median paired difference with a 95% percentile bootstrap interval
  (`scipy.stats.bootstrap`, 9,999 resamples, fixed random state).
* **Diverged seeds**: a baseline seed whose final training loss exceeds `divergence_factor` (2) × the median over
  the baseline's seeds is named and its pairs are left out of every comparison (kept in, it would flatter the
  arms). An arm's own diverged seeds are named and *kept*: diverging is part of what an arm costs.

With 5 seeds a paired t-test detects only large standardised effects (Card et al. 2020); `seeds_for_equivalence`
says how many seeds an equivalence test at the observed spread would need (80% power, normal approximation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.05
MAX_SEEDS = 10_000  # beyond this, "add seeds" is no advice: the observed mean sits on the margin
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline, paired by seed (all numbers are arm − baseline; lower is better)."""

    n: int
    seeds: list[int]
    mean: float
    low: float  # 95% Student-t interval
    high: float
    p_value: float  # two-sided paired t-test
    p_holm: float  # Holm-adjusted over the arms
    margin: float  # equivalence margin Δ (absolute, in the headline's unit)
    tost_low: float  # 90% Student-t interval (the TOST's)
    tost_high: float
    p_tost: float  # max of the two one-sided p-values
    p_tost_holm: float
    median: float
    median_low: float  # 95% percentile bootstrap interval of the median
    median_high: float
    verdict: str  # better / worse / equivalent / inconclusive
    difference_significant: bool
    seeds_for_equivalence: int | None = (
        None  # seeds an equivalence test would need (80% power), if inconclusive
    )


@dataclass(frozen=True)
class TOSTResult:
    p_lower: float  # H0: mean <= -margin
    p_upper: float  # H0: mean >= +margin
    p_value: float  # max of the two
    low: float  # the (1 - 2 alpha) interval
    high: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; (nan, nan) for n < 2, the point itself when every value is equal."""
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        return math.nan, math.nan
    mean = float(array.mean())
    if np.ptp(array) == 0:
        return mean, mean
    half = float(
        stats.t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size)
    )
    return mean - half, mean + half


def paired_t_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (1.0 when it cannot be tested)."""
    array = np.asarray(differences, dtype=float)
    if array.size < 2:
        return 1.0
    if np.ptp(array) == 0:
        return 0.0 if array[0] != 0 else 1.0
    return float(stats.ttest_1samp(array, 0.0).pvalue)


def tost(differences: Sequence[float], margin: float, alpha: float = ALPHA) -> TOSTResult:
    """Two one-sided t-tests (Schuirmann 1987) of |mean difference| < `margin`.

    t_lower = (m + Δ) / se with p_lower = P(T > t_lower); t_upper = (m − Δ) / se with p_upper = P(T < t_upper),
    T ~ Student-t with n − 1 degrees of freedom and se = s / sqrt(n)."""
    array = np.asarray(differences, dtype=float)
    if array.size < 2 or not margin > 0:
        return TOSTResult(1.0, 1.0, 1.0, math.nan, math.nan)
    mean, n = float(array.mean()), array.size
    se = float(array.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        inside = -margin < mean < margin
        p = 0.0 if inside else 1.0
        return TOSTResult(p, p, p, mean, mean)
    p_lower = float(stats.t.sf((mean + margin) / se, n - 1))
    p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))
    low, high = t_interval(array, 1 - 2 * alpha)
    return TOSTResult(p_lower, p_upper, max(p_lower, p_upper), low, high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (1-based) becomes max over j <= i of min(1, (m − j + 1) p_(j)); a hypothesis
    is rejected at level α exactly when its adjusted p-value is below α (equivalently: compare the i-th smallest
    with α / (m − i + 1) and stop at the first that fails)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def bootstrap_median(
    differences: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Median with its percentile bootstrap interval (`scipy.stats.bootstrap`); degenerate samples give the point."""
    array = np.asarray(differences, dtype=float)
    median = float(np.median(array)) if array.size else math.nan
    if array.size < 2 or np.ptp(array) == 0:
        return median, median, median
    result = stats.bootstrap(
        (array,),
        np.median,
        confidence_level=confidence,
        n_resamples=9999,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return median, float(result.confidence_interval.low), float(result.confidence_interval.high)


def seeds_for_equivalence(differences: Sequence[float], margin: float, power: float = 0.8) -> int | None:
    """Seeds a TOST at α = 0.05 would need to show equivalence with `power`, if the true difference were the
    observed mean and the spread the observed one (normal approximation; None if the mean is outside the margin or
    the count would exceed `MAX_SEEDS`)."""
    array = np.asarray(differences, dtype=float)
    if array.size < 2 or not margin > abs(array.mean()):
        return None
    sd = float(array.std(ddof=1))
    if sd == 0:
        return int(array.size)
    z = stats.norm.ppf(1 - ALPHA) + stats.norm.ppf(power)
    needed = math.ceil((z * sd / (margin - abs(float(array.mean())))) ** 2)
    return max(int(array.size), needed) if needed <= MAX_SEEDS else None


@dataclass(frozen=True)
class Divergence:
    """Seeds whose final training loss exceeds `factor` × the median final loss of their arm."""

    factor: float
    median: float
    seeds: dict[int, float] = field(default_factory=dict)  # seed -> final loss


def diverged_seeds(final_losses: Mapping[int, float | None], factor: float = 2.0) -> Divergence:
    """The rule: a seed diverged when its final training loss > `factor` × the median over the arm's seeds."""
    known = {seed: loss for seed, loss in final_losses.items() if loss is not None and math.isfinite(loss)}
    missing = {seed: math.inf for seed, loss in final_losses.items() if seed not in known}
    if not known:
        return Divergence(factor, math.nan, missing)
    median = float(np.median(list(known.values())))
    flagged = {seed: loss for seed, loss in known.items() if loss > factor * median}
    return Divergence(factor, median, {**flagged, **missing})


def compare_arms(
    baseline: Mapping[int, float],
    arms: Mapping[str, Mapping[int, float]],
    margin: float,
    exclude_seeds: Sequence[int] = (),
    alpha: float = ALPHA,
    lower_is_better: bool = True,
) -> dict[str, Comparison]:
    """Every arm against the baseline, paired by seed, with Holm over the arms (differences are arm − baseline;
    `lower_is_better` says which sign is "better")."""
    raw = {}
    for name, values in arms.items():
        seeds = sorted(set(values) & set(baseline) - set(exclude_seeds))
        differences = [values[s] - baseline[s] for s in seeds]
        raw[name] = (seeds, differences)
    names = list(raw)
    p_diff = holm([paired_t_p_value(raw[name][1]) for name in names])
    p_equiv = holm([tost(raw[name][1], margin, alpha).p_value for name in names])
    out = {}
    for index, name in enumerate(names):
        seeds, differences = raw[name]
        array = np.asarray(differences, dtype=float)
        low, high = t_interval(array)
        equivalence = tost(array, margin, alpha)
        median, median_low, median_high = bootstrap_median(array)
        significant = p_diff[index] < alpha
        mean = float(array.mean()) if array.size else math.nan
        if p_equiv[index] < alpha:
            verdict = "equivalent"
        elif significant:
            verdict = "worse" if (mean > 0) == lower_is_better else "better"
        else:
            verdict = "inconclusive"
        out[name] = Comparison(
            n=int(array.size),
            seeds=list(seeds),
            mean=mean,
            low=low,
            high=high,
            p_value=paired_t_p_value(array),
            p_holm=p_diff[index],
            margin=margin,
            tost_low=equivalence.low,
            tost_high=equivalence.high,
            p_tost=equivalence.p_value,
            p_tost_holm=p_equiv[index],
            median=median,
            median_low=median_low,
            median_high=median_high,
            verdict=verdict,
            difference_significant=significant,
            seeds_for_equivalence=seeds_for_equivalence(array, margin) if verdict == "inconclusive" else None,
        )
    return out


__all__ = [
    "ALPHA",
    "Comparison",
    "Divergence",
    "TOSTResult",
    "VERDICTS",
    "bootstrap_median",
    "compare_arms",
    "diverged_seeds",
    "holm",
    "paired_t_p_value",
    "seeds_for_equivalence",
    "t_interval",
    "tost",
]
