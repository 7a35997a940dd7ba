"""Point estimates and intervals over the unit that varies: evaluation examples, paired across seeds.

Every seed re-evaluates the *same* evaluation examples (ZSL outcomes do not even depend on the seed), so rows
(seed, example) are not independent draws: pooling them and resampling rows would narrow intervals by about
√(number of seeds) without new information. Here:

* the unit is the evaluation example; an example's value is its mean over seeds (a cluster bootstrap with
  examples as clusters: resampling examples resamples all seeds' values of that example together);
* metric intervals are percentile bootstrap intervals (`scipy.stats.bootstrap`) of the mean over examples;
* accuracy intervals: when every example has one outcome (one seed, or the same outcome under every seed, as for
  ZSL) they are Wilson score intervals for the proportion (`scipy.stats.binomtest(...).proportion_ci`), otherwise
  the cluster bootstrap of the per-example mean accuracy;
* the seed-to-seed spread is reported separately: each seed's estimate and their standard deviation.

Adding a seed that repeats an existing seed's outcomes leaves every per-example mean, and so every interval,
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95
BOOTSTRAP = "percentile bootstrap over evaluation examples (seeds averaged within each example)"
WILSON = "Wilson score interval over evaluation examples (one outcome per example)"


@dataclass
class Estimate:
    """One metric: the paper's average, its 95% interval over examples, per-layer means and the seed spread.

    `mean` averages examples (and seeds) first, then layers, as the paper does. `interval` says what `ci95` is over;
    `n` is the number of evaluation examples it rests on.
    """

    mean: float | None
    ci95: list[float] | None = None
    interval: str | None = None
    n: int = 0
    per_layer: list[float | None] | None = None
    per_seed: list[float | None] = field(default_factory=list)
    seed_sd: float | None = None


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _nanmean(values: np.ndarray, axis=None):
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan():
        return np.nanmean(values, axis=axis)


class _quiet_nan:  # np.nanmean warns on all-NaN slices; an all-NaN slice is a legitimate "not available"
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def bootstrap_mean_ci(
    values, *, n_resamples: int = 9999, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (one value per example; NaNs dropped)."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if data.size < 2:
        return None
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    result = bootstrap(
        (data,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
        vectorized=True, batch=500, rng=np.random.default_rng(seed),  # 500 resamples at a time bound the memory
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilson_ci(successes: int, trials: int, *, level: float = LEVEL) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (`scipy.stats.binomtest`)."""
    from scipy.stats import binomtest

    if trials < 1:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def _seed_spread(per_seed: list[float | None]) -> float | None:
    values = [v for v in per_seed if v is not None]
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def estimate(values, *, n_resamples: int = 9999, seed: int = 0, per_layer: bool = True) -> Estimate:
    """Estimate of a metric from its values, shaped (seeds, examples, layers) or (seeds, examples); NaN = missing."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 2:
        array = array[:, :, None]
        per_layer = False
    if array.size == 0 or np.all(np.isnan(array)):
        return Estimate(mean=None, per_seed=[None] * array.shape[0] if array.ndim == 3 else [])
    layer_means = _nanmean(array, axis=(0, 1))  # examples (and seeds) first, then layers: the paper's order
    mean = _finite(_nanmean(layer_means))
    per_example = _nanmean(_nanmean(array, axis=2), axis=0)  # layers, then seeds: one value per example
    n = int(np.sum(~np.isnan(per_example)))
    ci = bootstrap_mean_ci(per_example, n_resamples=n_resamples, seed=seed)
    per_seed = [_finite(_nanmean(_nanmean(array[s], axis=0))) for s in range(array.shape[0])]
    return Estimate(
        mean=mean,
        ci95=list(ci) if ci else None,
        interval=BOOTSTRAP if ci else None,
        n=n,
        per_layer=[_finite(v) for v in layer_means] if per_layer else None,
        per_seed=per_seed,
        seed_sd=_seed_spread(per_seed),
    )


def accuracy_estimate(correct, *, n_resamples: int = 9999, seed: int = 0) -> Estimate:
    """Accuracy in % from outcomes shaped (seeds, examples): Wilson when each example has one outcome."""
    outcomes = np.asarray(correct, dtype=float)
    if outcomes.ndim == 1:
        outcomes = outcomes[None]
    if outcomes.size == 0:
        return Estimate(mean=None)
    per_example = outcomes.mean(axis=0)
    n = per_example.size
    per_seed = [100.0 * float(row.mean()) for row in outcomes]
    if np.all((per_example == 0) | (per_example == 1)):  # one outcome per example, whatever the seed
        ci, interval = wilson_ci(int(per_example.sum()), n), WILSON
    else:
        ci, interval = bootstrap_mean_ci(per_example, n_resamples=n_resamples, seed=seed), BOOTSTRAP
    return Estimate(
        mean=100.0 * float(per_example.mean()),
        ci95=[100.0 * ci[0], 100.0 * ci[1]] if ci else None,
        interval=interval if ci else None,
        n=n,
        per_seed=per_seed,
        seed_sd=_seed_spread(per_seed),
    )


__all__ = [
    "BOOTSTRAP",
    "LEVEL",
    "WILSON",
    "Estimate",
    "accuracy_estimate",
    "bootstrap_mean_ci",
    "estimate",
    "wilson_ci",
]
