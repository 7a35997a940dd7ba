"""The analyzer's metric functions on hand-computed cases, and the statistics over examples and seeds."""

import math

import numpy as np
import pytest
import torch

from transformers_momentum.analysis.metrics import (
    cosine,
    delta_simam,
    ft_attention_to_training_tokens,
    kendall,
    order_sensitivity,
    output_kl,
    rec2ftp,
    simam,
    simaou,
    simaou_null,
    topk_recall,
)
from transformers_momentum.analysis.statistics import (
    CROSSED,
    WILSON,
    accuracy_estimate,
    bootstrap_mean_ci,
    estimate,
    wilson_ci,
)

# ------------------------------------------------------------------------------------------------ metrics


def test_cosine_hand_computed():
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2)
    )
    assert cosine(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])).item() == 0.0  # the paper's +1e-20


def test_rec2ftp_hand_computed_and_no_ft_corrected():
    zsl = [False, False, False, True, False]
    ft = [True, True, False, True, True]
    icl = [True, False, True, False, True]
    r = rec2ftp(zsl, icl, ft)  # FT fixes examples 0, 1, 4; ICL also gets 0 and 4 right
    assert (r.n_ft_corrected, r.n_both_corrected) == (3, 2)
    assert r.value == pytest.approx(200 / 3)
    none = rec2ftp([True, False], [True, True], [True, False])  # FT fixes nothing: undefined, not 0 or 100
    assert none.value is None and none.n_ft_corrected == 0


def test_simaou_hand_computed():
    # One layer. Normalized: zsl=(1,0), icl=(0,1), ft=(1,1)/√2 → Δicl=(-1,1), Δft=(1/√2-1, 1/√2).
    h_zsl, h_icl, h_ft = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 1.0]])
    s = 1 / math.sqrt(2)
    expected = (-(s - 1) + s) / (math.sqrt(2) * math.sqrt((s - 1) ** 2 + s**2))
    assert simaou(h_zsl, h_icl, h_ft).item() == pytest.approx(expected)
    assert simaou(h_zsl, h_icl, h_icl).item() == pytest.approx(1.0)  # FT update identical to ICL's


def test_simaou_nulls():
    generator = torch.Generator().manual_seed(0)
    positive = torch.ones(
        3, 4000
    )  # Uniform[0,1) is not zero-mean: its cosine with a positive update is large
    assert simaou_null(positive, "uniform", generator).mean().item() > 0.8
    assert abs(simaou_null(positive, "gaussian", generator).mean().item()) < 0.05
    with pytest.raises(ValueError):
        simaou_null(positive, "laplace", generator)


def test_simam_and_delta_simam_hand_computed():
    # One layer, two heads, two query keys.
    zsl = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    icl = [torch.tensor([[1.0, 1.0], [0.0, 2.0]])]
    ft = [torch.tensor([[2.0, 0.0], [1.0, 1.0]])]
    # head 0: cos((1,1),(2,0)) = 1/√2; head 1: cos((0,2),(1,1)) = 1/√2
    assert simam(icl, ft).item() == pytest.approx(1 / math.sqrt(2))
    # updates: head 0 icl-zsl=(0,1), ft-zsl=(1,0) → 0; head 1 (0,1) vs (1,0) → 0
    assert delta_simam(zsl, icl, ft).item() == pytest.approx(0.0)
    assert delta_simam(zsl, icl, icl).item() == pytest.approx(1.0)


def test_kendall_and_topk_hand_computed():
    # (1,2,3) vs (1,3,2): concordant pairs (0,1),(0,2), discordant (1,2) → (2-1)/3
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1.0], [2.0]))
    assert topk_recall([5, 4, 3, 2, 1], [5, 0, 4, 0, 0], 2) == 0.5
    assert topk_recall([1, 2], [2, 1], 10) == 1.0  # k capped at the length


def test_ft_attention_to_training_tokens():
    queries = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    assert ft_attention_to_training_tokens(queries, torch.tensor([1.0, 1.0])).tolist() == [3.0, 1.0, 3.0]


def test_output_kl_and_order_sensitivity_hand_computed():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert output_kl(p.log(), q.log()) == pytest.approx(expected)
    assert output_kl(q.log(), q.log()) == 0.0
    predictions = np.array([[0, 1, 2], [0, 1, 1], [0, 0, 2]])  # 3 orders x 3 examples
    gold = np.array([[0.9, 0.5, 0.2], [0.9, 0.7, 0.2], [0.9, 0.3, 0.5]])
    flipped, spread = order_sensitivity(predictions, gold)
    assert flipped.tolist() == [False, True, True]
    # population std by hand: (0.9,0.9,0.9) → 0; (0.5,0.7,0.3) → √(0.08/3); (0.2,0.2,0.5) → √(0.06/3)
    assert spread.tolist() == pytest.approx([0.0, math.sqrt(0.08 / 3), math.sqrt(0.06 / 3)])
    with pytest.raises(ValueError, match="orders >= 2"):
        order_sensitivity(predictions[:1], gold[:1])


# ------------------------------------------------------------------------------------------------ statistics


def test_a_seed_repeating_identical_outcomes_does_not_narrow_any_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(0.2, 0.1, size=(1, 40, 3))  # (seeds, examples, layers)
    one, two = estimate(values), estimate(np.concatenate([values, values]))
    # The crossed interval of two identical seeds is the examples-only one, bit for bit, and has the width of the
    # one-seed interval up to Monte Carlo error (the seed draws take their share of the random stream).
    assert two.ci95 == two.ci95_examples_only and one.mean == pytest.approx(two.mean)
    assert two.interval == CROSSED and one.n == two.n == 40 and (one.n_seeds, two.n_seeds) == (1, 2)
    width = one.ci95[1] - one.ci95[0]
    assert two.ci95[1] - two.ci95[0] == pytest.approx(width, rel=0.05)
    # Treating the 80 (seed, example) rows as independent, as pooling does, would narrow it by about √2.
    pooled = np.concatenate([values, values]).mean(axis=2).ravel()
    means = pooled[rng.integers(0, pooled.size, size=(4000, pooled.size))].mean(axis=1)
    pooled_width = np.quantile(means, 0.975) - np.quantile(means, 0.025)
    assert pooled_width < 0.8 * width
    # ZSL outcomes are the same under every seed: the accuracy interval is the one-seed Wilson interval.
    correct = rng.random(30) < 0.6
    assert accuracy_estimate([correct]).ci95 == accuracy_estimate([correct, correct, correct]).ci95
    assert accuracy_estimate([correct, correct]).interval == WILSON


def test_seed_spread_is_reported_separately():
    base = np.linspace(0.0, 1.0, 20)
    values = np.stack([base, base + 0.1, base + 0.2])[:, :, None]  # three seeds, offsets 0, 0.1, 0.2
    result = estimate(values)
    assert result.per_seed == pytest.approx([0.5, 0.6, 0.7])
    assert result.seed_sd == pytest.approx(0.1)  # sample std of (0.5, 0.6, 0.7)
    assert result.mean == pytest.approx(0.6)
    assert result.per_layer == pytest.approx([0.6])


def test_wilson_interval_closed_form():
    z = 1.959963984540054
    for k, n in ((7, 10), (0, 12), (30, 30)):
        p = k / n
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson_ci(k, n) == pytest.approx((center - half, center + half), abs=1e-9)
    accuracy = accuracy_estimate([[True] * 7 + [False] * 3])
    assert accuracy.mean == pytest.approx(70.0) and accuracy.interval == WILSON
    assert accuracy.ci95 == pytest.approx([100 * x for x in wilson_ci(7, 10)])


def test_bootstrap_interval_has_the_width_of_the_standard_error():
    # For n normal draws the 95% interval of the mean is about ±1.96 σ/√n.
    data = np.random.default_rng(3).normal(5.0, 2.0, size=400)
    low, high = bootstrap_mean_ci(data, seed=1)
    assert low < data.mean() < high
    assert (high - low) / 2 == pytest.approx(1.96 * data.std(ddof=1) / math.sqrt(data.size), rel=0.1)
    assert bootstrap_mean_ci([1.0]) is None and bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_estimate_averages_examples_then_layers_and_skips_missing_values():
    values = np.array([[[1.0, 3.0], [3.0, np.nan]]])  # one seed, two examples, two layers
    result = estimate(values)
    assert result.per_layer == [2.0, 3.0] and result.mean == pytest.approx(2.5)  # examples → layers
    assert result.n == 2
    assert estimate(np.full((1, 3, 2), np.nan)).mean is None
