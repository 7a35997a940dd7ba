"""Crossed (seed × example) intervals: Owen's pigeonhole bootstrap against its defining properties.

Fast: every test here runs in about a second on one core (the coverage study uses 999 resamples per interval).
"""

import numpy as np
import pytest

from transformers_momentum.analysis.statistics import (
    CROSSED,
    EXAMPLES_ONLY,
    FEW_SEEDS,
    WILSON,
    accuracy_estimate,
    crossed_intervals,
    describe_intervals,
    estimate,
    pigeonhole_ci,
)


def _width(interval) -> float:
    return interval[1] - interval[0]


def test_the_replicates_are_means_of_independently_resampled_seed_by_example_tables():
    # An independent implementation: draw the example and seed indices as scipy does (one stream, examples first),
    # gather the sub-table, average its present cells, take the 2.5/97.5 percentiles.
    rng = np.random.default_rng(7)
    table = rng.normal(size=(4, 15))
    table[1, 3] = table[2, 8] = table[0, 0] = np.nan  # scattered missing cells are skipped, not zeros
    draws = np.random.default_rng(11)
    examples = draws.integers(0, 15, (500, 15))
    seeds = draws.integers(0, 4, (500, 4))
    sub = table[seeds[:, :, None], examples[:, None, :]]  # (resamples, seeds, examples)
    replicates = np.nanmean(sub.reshape(500, -1), axis=1)
    expected = np.percentile(replicates, [2.5, 97.5])
    assert pigeonhole_ci(table, n_resamples=500, seed=11) == pytest.approx(tuple(expected), rel=1e-12)


@pytest.mark.parametrize("seeds", [2, 5])
def test_identical_seeds_give_exactly_the_examples_only_interval(seeds):
    rng = np.random.default_rng(0)
    values = rng.normal(0.2, 0.1, size=(1, 40, 3))  # (seeds, examples, layers)
    values[0, 30:, :] = np.nan  # e.g. Kendall τ beyond --kendall-n: those examples have no value
    values[0, 5, 1] = np.nan  # a missing layer
    same = estimate(np.repeat(values, seeds, axis=0))
    assert same.ci95 == same.ci95_examples_only  # bit for bit, not approximately
    assert same.interval == CROSSED and same.n == 30 and same.n_seeds == seeds
    assert same.per_seed == [same.per_seed[0]] * seeds and same.seed_sd == 0.0
    # Values like 0.1 whose mean over seeds is not exactly 0.1 in floating point still match exactly.
    tenths = np.repeat(np.round(rng.random((1, 25)), 1), 3, axis=0)
    crossed, examples_only = crossed_intervals(tenths, n_resamples=999)
    assert crossed == examples_only
    # With one seed there is nothing else to resample: the interval is over examples only, and says so.
    one = estimate(values)
    assert one.ci95 == one.ci95_examples_only and one.interval == EXAMPLES_ONLY and one.n_seeds == 1


def test_seeds_shifted_by_a_constant_widen_the_interval_monotonically():
    rng = np.random.default_rng(1)
    base = rng.normal(0.3, 0.1, size=60)
    widths, examples_only = [], []
    for c in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        table = base[None, :] + c * np.arange(5)[:, None]  # seed s shifted by c·s
        crossed, fixed = crossed_intervals(table, n_resamples=2000)
        widths.append(_width(crossed))
        examples_only.append(_width(fixed))
    assert all(a < b for a, b in zip(widths, widths[1:])), widths
    assert widths[0] == examples_only[0]
    # Holding the demonstrations fixed, a shift between seeds is invisible: the examples-only width stays put.
    assert examples_only == pytest.approx([examples_only[0]] * len(examples_only), rel=1e-9)
    # Far out the width grows like c times the spread of a resampled mean of the offsets 0..4.
    assert widths[-1] > 5 * widths[0]


def test_crossed_interval_covers_a_known_mean_in_simulated_seed_by_example_tables():
    # y[s, e] = μ + seed effect + example effect + noise: 5 seeds (the default) × 40 examples, 200 tables.
    mu, runs = 0.3, 200
    rng = np.random.default_rng(12345)
    covered = covered_examples_only = 0
    for run in range(runs):
        table = (
            mu
            + rng.normal(0, 0.05, size=(5, 1))  # which demonstrations were drawn
            + rng.normal(0, 0.1, size=(1, 40))  # which examples are scored
            + rng.normal(0, 0.1, size=(5, 40))  # their interaction and noise
        )
        crossed, examples_only = crossed_intervals(table, n_resamples=999, seed=run)
        covered += crossed[0] <= mu <= crossed[1]
        covered_examples_only += examples_only[0] <= mu <= examples_only[1]
    coverage, coverage_examples_only = covered / runs, covered_examples_only / runs
    print(
        f"coverage of μ: crossed {coverage:.3f}, examples only {coverage_examples_only:.3f} ({runs} tables)"
    )
    assert coverage >= 0.90
    # Conditioning on the drawn demonstrations misses the seed term: well below nominal on the same tables.
    assert coverage_examples_only < coverage - 0.1


def test_accuracies_use_the_crossed_bootstrap_and_wilson_only_for_one_outcome_per_example():
    rng = np.random.default_rng(2)
    correct = rng.random(30) < 0.6
    # ZSL outcomes do not depend on the seed: independent Bernoulli outcomes, one per example.
    zsl = accuracy_estimate([correct, correct, correct])
    assert zsl.interval == WILSON and zsl.ci95 == zsl.ci95_examples_only == accuracy_estimate([correct]).ci95
    assert zsl.n == 30 and zsl.n_seeds == 3
    # Seeds that disagree: the crossed bootstrap of the 0/1 table, wider than the examples-only interval.
    seeds = np.stack([rng.random(30) < p for p in (0.3, 0.5, 0.7, 0.9)])
    icl = accuracy_estimate(seeds)
    assert icl.interval == CROSSED and icl.mean == pytest.approx(100 * seeds.mean())
    assert icl.per_seed == pytest.approx([100 * row.mean() for row in seeds])
    assert _width(icl.ci95) > _width(icl.ci95_examples_only)
    assert icl.ci95[0] <= icl.mean <= icl.ci95[1]


def test_missing_seeds_and_examples_are_left_out_of_the_table():
    values = np.full((3, 6), np.nan)
    values[:2, :4] = [[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.5, 0.6]]  # seed 3 and examples 5, 6: no value
    result = estimate(values)
    assert (result.n, result.n_seeds) == (4, 2) and result.per_seed[2] is None
    assert result.mean == pytest.approx(np.nanmean(values))
    assert result.ci95[0] <= result.mean <= result.ci95[1]
    assert estimate(np.full((2, 3), np.nan)).mean is None
    assert crossed_intervals([[0.5], [0.7]]) == (None, None)  # one example: no interval
    assert crossed_intervals([[0.5, 0.5], [0.5, 0.5]]) == ((0.5, 0.5), (0.5, 0.5))


def test_the_statistics_description_flags_fewer_than_three_seeds():
    assert FEW_SEEDS == 3
    for seeds in (1, 2):
        assert "cannot capture demonstration variation" in describe_intervals(seeds)["note"]
    assert "note" not in describe_intervals(3) and "Owen (2007)" in describe_intervals(5)["reference"]


def test_results_written_with_examples_only_intervals_are_refused_not_misread():
    from transformers_momentum.analysis import AnalysisResult

    with pytest.raises(ValueError, match="earlier version of the analyzer: rerun"):
        AnalysisResult.from_dict({"schema": "transformers-momentum/analysis/2"})
    with pytest.raises(ValueError, match="not an analysis results file") as error:
        AnalysisResult.from_dict({"schema": "something/else"})
    assert "earlier version" not in str(error.value)
