"""Point estimates and intervals over both sources of variation: demonstration seeds and evaluation examples.

An analysis evaluates E examples under S demonstration seeds, and every seed evaluates every example: a
*crossed* seed × example design. The number a reader wants is the metric's expectation over both populations
(other demonstration draws *and* other examples); its variance is roughly σ²_seed/S + σ²_example/E +
σ²_residual/(S·E). At small k the seed term dominates, so an interval that averages seeds within an example
and resamples examples only answers "what if I scored other examples with *these* demonstrations".

* **Metric intervals** are Owen's pigeonhole bootstrap (Owen 2007, "The pigeonhole bootstrap", Ann. Appl.
  Stat. 1(2); the two-way/product bootstrap of Owen & Eckles 2012): the S seeds and the E examples are
  resampled independently with replacement, the replicate is the mean of the S×E sub-table so formed (its
  cells being the layer means of one (seed, example), missing cells skipped), and the interval is the
  percentile interval of the replicates. It is mildly conservative: it counts the residual term twice.
  `scipy.stats.bootstrap` does the resampling: with two samples (the example ids and the seed ids) and
  ``paired=False`` it resamples each independently, which is exactly the pigeonhole scheme.
* **The examples-only interval** (kept in results.json as ``ci95_examples_only``) is the same bootstrap, with
  the same random stream, run on the table whose every cell is replaced by its example's mean over seeds.
  Resampling seeds of that table changes nothing, so it is the cluster bootstrap over examples of the
  per-example seed means. Because both draw identical indices from identical streams, when every seed row is
  identical the two tables are identical and the two intervals are bit-identical (an example whose seeds agree
  takes exactly that value, not a mean that could differ in the last bit).
* **Accuracies** are the same crossed bootstrap of the 0/1 outcome table. Only when the table holds one
  outcome per example (every seed row identical: always for ZSL, whose outcomes do not depend on the seed;
  with one seed; or when the seeds happen to agree everywhere, so that no seed variation was observed) is the
  interval the Wilson score interval for a proportion (`scipy.stats.binomtest(...).proportion_ci`): the
  outcomes are then independent Bernoulli draws, for which Wilson is the better interval (a percentile
  bootstrap of 0/1 values collapses to a point at 0% and 100%). It is also what the crossed bootstrap reduces
  to there: the examples-only interval.
* With fewer than `FEW_SEEDS` seeds the seed variance is barely estimable (with one seed not at all: the
  crossed interval is the examples-only one); the report says so.
* Each seed's own estimate stays beside the interval (`per_seed`, and `seed_sd`, their standard deviation).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95
# Fewer seeds than this: the interval cannot capture demonstration variation (report.md and results.json say so).
FEW_SEEDS = 3
# What an interval is over (an Estimate's `interval`).
CROSSED = (
    "pigeonhole bootstrap (Owen 2007): demonstration seeds and evaluation examples resampled independently, "
    "percentile"
)
EXAMPLES_ONLY = "percentile bootstrap over evaluation examples (seeds averaged within each example)"
WILSON = (
    "Wilson score interval over evaluation examples (one outcome per example: every seed gives the same "
    "outcome on each example, as ZSL's always do, or there is one seed)"
)


@dataclass
class Estimate:
    """One metric: the paper's average, its 95% interval over seeds and examples, per-layer and per-seed values.

    `mean` averages seeds and examples first, then layers, as the paper does. `ci95` is the crossed interval
    (`interval` says what it is over); `ci95_examples_only` conditions on the seeds' demonstrations. `n` and
    `n_seeds` are the evaluation examples and seeds it rests on.
    """

    mean: float | None
    ci95: list[float] | None = None
    interval: str | None = None
    ci95_examples_only: list[float] | None = None
    n: int = 0
    n_seeds: int = 0
    per_layer: list[float | None] | None = None
    per_seed: list[float | None] = field(default_factory=list)
    seed_sd: float | None = None


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _nanmean(values: np.ndarray, axis=None):
    # np.nanmean warns on all-NaN slices; an all-NaN slice is a legitimate "not available".
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 occurs in each row of `indices` (resamples, draws): the resampling weights."""
    indices = np.atleast_2d(np.asarray(indices, dtype=np.intp))
    rows = indices.shape[0]
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(float)


def _observed(table) -> np.ndarray:
    """The (seeds, examples) table without the seeds and examples that have no value at all."""
    table = np.atleast_2d(np.asarray(table, dtype=float))
    present = ~np.isnan(table)
    return table[present.any(axis=1)][:, present.any(axis=0)]


def _seed_averaged(table: np.ndarray) -> np.ndarray:
    """Every cell replaced by its example's mean over seeds (missing cells too).

    An example whose seeds agree takes exactly that value: a mean of identical floats can differ from them in
    the last bit, and the examples-only interval must equal the crossed one bit for bit when seed rows are
    identical.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
    per_example = np.where(low == high, low, _nanmean(table, axis=0))
    return np.ascontiguousarray(np.broadcast_to(per_example, table.shape))


@functools.cache
def _rng_keyword() -> str:
    """scipy >= 1.15 takes the generator as `rng`; older releases as `random_state`."""
    from scipy.stats import bootstrap

    return "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"


def _pigeonhole(table: np.ndarray, *, n_resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of the sub-table mean under independent resampling of rows (seeds) and columns.

    `table` has no all-missing row or column (see `_observed`). The replicate of seed counts w and example
    counts v is Σ w_s v_e x_se / Σ w_s v_e over the present cells: the mean of the resampled sub-table, missing
    cells skipped.
    """
    from scipy.stats import bootstrap

    seeds, examples = table.shape
    present = ~np.isnan(table)
    values = np.where(present, table, 0.0)
    weights = present.astype(float)
    point = float(values.sum() / weights.sum())

    def statistic(example_ids, seed_ids=None, axis=-1):
        one = np.ndim(example_ids) == 1
        v = _counts(example_ids, examples)  # (resamples, E)
        w = np.ones((v.shape[0], 1)) if seed_ids is None else _counts(seed_ids, seeds)  # (resamples, S)
        total = ((w @ values) * v).sum(axis=-1)
        count = ((w @ weights) * v).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            # A resample that drew only missing cells (possible only where they are scattered) has no mean of
            # its own; it counts as the point estimate rather than voiding the interval.
            replicate = np.where(count > 0, total / count, point)
        return replicate[0] if one else replicate

    # Examples first, then seeds: scipy draws each sample's indices in this order from one stream, batch by
    # batch, so the crossed and examples-only intervals of one table shape see the same draws. One seed: nothing
    # to resample (scipy needs two observations per sample), and the interval is over examples only.
    data = (np.arange(examples),) + ((np.arange(seeds),) if seeds > 1 else ())
    # 500 resamples at a time bound the memory.
    result = bootstrap(
        data, statistic, paired=False, vectorized=True, n_resamples=n_resamples, confidence_level=level,
        method="percentile", batch=500, **{_rng_keyword(): np.random.default_rng(seed)},
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _trivial(table: np.ndarray) -> tuple[float, float] | None | bool:
    """The interval of an observed table that needs no bootstrap, or False.

    None with fewer than two examples; a zero-width interval when every value is the same (the bootstrap
    distribution is then a point, and scipy would warn about it).
    """
    if table.shape[1] < 2:
        return None
    finite = table[~np.isnan(table)]
    if np.all(finite == finite[0]):
        return float(finite[0]), float(finite[0])
    return False


def crossed_intervals(
    table, *, n_resamples: int = 9999, seed: int = 0, level: float = LEVEL
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(crossed, examples-only) percentile intervals of the mean of a (seeds, examples) table; NaN = missing.

    None when fewer than two examples have a value. Identical seed rows give two bit-identical intervals.
    """
    table = _observed(table)
    trivial = _trivial(table)
    if trivial is not False:
        return trivial, trivial
    kw = {"n_resamples": n_resamples, "seed": seed, "level": level}
    return _pigeonhole(table, **kw), _pigeonhole(_seed_averaged(table), **kw)


def pigeonhole_ci(
    table, *, n_resamples: int = 9999, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """Owen's pigeonhole bootstrap interval of the mean of a (seeds, examples) table (NaN = missing cell)."""
    table = _observed(table)
    trivial = _trivial(table)
    if trivial is not False:
        return trivial
    return _pigeonhole(table, n_resamples=n_resamples, seed=seed, level=level)


def bootstrap_mean_ci(
    values, *, n_resamples: int = 9999, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (one value per example; NaNs dropped)."""
    data = np.asarray(values, dtype=float).ravel()
    return pigeonhole_ci(data[~np.isnan(data)][None], n_resamples=n_resamples, seed=seed, level=level)


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


def _as_list(interval: tuple[float, float] | None, scale: float = 1.0) -> list[float] | None:
    return None if interval is None else [scale * interval[0], scale * interval[1]]


def estimate(values, *, n_resamples: int = 9999, seed: int = 0, per_layer: bool = True) -> Estimate:
    """A metric's estimate from its values, shaped (seeds, examples, layers) or (seeds, examples); NaN: missing."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 2:
        array = array[:, :, None]
        per_layer = False
    if array.size == 0 or np.all(np.isnan(array)):
        return Estimate(mean=None, per_seed=[None] * array.shape[0] if array.ndim == 3 else [])
    layer_means = _nanmean(array, axis=(0, 1))  # seeds and examples first, then layers: the paper's order
    mean = _finite(_nanmean(layer_means))
    cells = _nanmean(array, axis=2)  # one value per (seed, example): the layers' mean
    observed = _observed(cells)
    crossed, examples_only = crossed_intervals(cells, n_resamples=n_resamples, seed=seed)
    per_seed = [_finite(_nanmean(_nanmean(array[s], axis=0))) for s in range(array.shape[0])]
    return Estimate(
        mean=mean,
        ci95=_as_list(crossed),
        interval=(CROSSED if observed.shape[0] > 1 else EXAMPLES_ONLY) if crossed else None,
        ci95_examples_only=_as_list(examples_only),
        n=int(observed.shape[1]),
        n_seeds=int(observed.shape[0]),
        per_layer=[_finite(v) for v in layer_means] if per_layer else None,
        per_seed=per_seed,
        seed_sd=_seed_spread(per_seed),
    )


def accuracy_estimate(correct, *, n_resamples: int = 9999, seed: int = 0) -> Estimate:
    """Accuracy in % from 0/1 outcomes shaped (seeds, examples): the crossed bootstrap, or Wilson when the
    table holds one outcome per example (one seed, or every seed's outcomes identical, as ZSL's)."""
    outcomes = np.asarray(correct, dtype=float)
    if outcomes.ndim == 1:
        outcomes = outcomes[None]
    if outcomes.size == 0:
        return Estimate(mean=None)
    seeds, n = outcomes.shape
    per_seed = [100.0 * float(row.mean()) for row in outcomes]
    if np.all(outcomes == outcomes[0]):  # one outcome per example, whatever the seed: Bernoulli draws
        crossed = examples_only = wilson_ci(int(outcomes[0].sum()), n)
        interval = WILSON
    else:
        crossed, examples_only = crossed_intervals(outcomes, n_resamples=n_resamples, seed=seed)
        interval = CROSSED
    return Estimate(
        mean=100.0 * float(outcomes.mean()),
        ci95=_as_list(crossed, 100.0),
        interval=interval if crossed else None,
        ci95_examples_only=_as_list(examples_only, 100.0),
        n=n,
        n_seeds=seeds,
        per_seed=per_seed,
        seed_sd=_seed_spread(per_seed),
    )


def describe_intervals(n_seeds: int, level: float = LEVEL) -> dict[str, object]:
    """What every interval of a run with `n_seeds` demonstration seeds is over (results.json: ``statistics``)."""
    description: dict[str, object] = {
        "level": level,
        "design": "crossed: every demonstration seed evaluates the same evaluation examples",
        "n_seeds": n_seeds,
        "metrics": f"ci95: {CROSSED}; cells are (seed, example) means over layers, missing cells skipped",
        "accuracy": "ci95: the same crossed bootstrap of the 0/1 outcomes, except when every seed gives the "
        "same outcome on every example (ZSL, whose outcomes do not depend on the seed, or one seed): the "
        f"{WILSON}",
        "examples_only": f"ci95_examples_only: {EXAMPLES_ONLY}, the same random stream (it conditions on the "
        "seeds' demonstrations; equal to ci95 when every seed gives identical values)",
        "seed_spread": "per_seed holds each seed's estimate, seed_sd their standard deviation",
        "rec2ftp": "counts over (seed, example) pairs, no interval",
        "reference": "Owen (2007), The pigeonhole bootstrap, Annals of Applied Statistics 1(2)",
    }
    if n_seeds < FEW_SEEDS:
        description["note"] = few_seeds_note(n_seeds)
    return description


def few_seeds_note(n_seeds: int) -> str:
    """The caveat of a run with fewer than `FEW_SEEDS` seeds."""
    why = (
        "with one seed it is an interval over evaluation examples only"
        if n_seeds < 2
        else f"with {n_seeds} seeds the seed-to-seed variance is barely estimable"
    )
    return (
        f"The intervals cannot capture demonstration variation: {why}. Run at least {FEW_SEEDS} "
        "demonstration seeds (the default is 5) for intervals that cover other demonstration draws."
    )


__all__ = [
    "CROSSED",
    "EXAMPLES_ONLY",
    "FEW_SEEDS",
    "LEVEL",
    "WILSON",
    "Estimate",
    "accuracy_estimate",
    "bootstrap_mean_ci",
    "crossed_intervals",
    "describe_intervals",
    "estimate",
    "few_seeds_note",
    "pigeonhole_ci",
    "wilson_ci",
]
