"""The in-context learning lab: tasks, reference learners against closed forms, the constructed GD layer, the lab
models' save/load (plugin and remote code), the measures, and a tiny end-to-end run of the CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from remote_code import run_without_plugin
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import transformers_momentum
from transformers_momentum.cli import main
from transformers_momentum.icl_lab import (
    LinearRegressionTask,
    MQARTask,
    aggregate,
    control,
    gradient_descent,
    kalman_filter,
    learner_weights,
    mean_interval,
    momentum_gradient_descent,
    newton_iterations,
    ols,
    online_momentum_sgd,
    online_sgd,
    paired_difference,
    reference_learners,
    regression_stream,
    ridge,
    statistics,
    tune_learners,
)
from transformers_momentum.icl_lab.config import ICLLabArguments
from transformers_momentum.icl_lab.results import LabResults, RunRecord
from transformers_momentum.icl_lab.tasks import (
    IGNORE_INDEX,
    Curriculum,
    StepCounter,
    seed_generator,
    skewed_scales,
)
from transformers_momentum.models.icl_regression import (
    LinearSelfAttentionConfig,
    LinearSelfAttentionForInContextRegression,
    MomentumGPTForInContextRegression,
    MomentumGPTICLRegressionConfig,
)


def tiny_regression_model(**overrides) -> MomentumGPTForInContextRegression:
    settings = dict(n_dims=3, max_points=6, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    settings.update(overrides)
    torch.manual_seed(0)
    return MomentumGPTForInContextRegression(MomentumGPTICLRegressionConfig(**settings)).eval()


def well_posed_prompts(n=16, k=8, d=3, seed=0):
    """k > d examples, so X^T X is invertible and the closed forms below apply."""
    prompts = LinearRegressionTask(n_dims=d, n_points=k, noise_std=0.1).sample(n, seed_generator(seed))
    return prompts.xs, prompts.ys


# ---------------------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_regression_task_shapes_seeds_and_labels(distribution):
    task = LinearRegressionTask(n_dims=4, n_points=7, noise_std=0.0, x_distribution=distribution)
    a, b = task.sample(5, seed_generator(3)), task.sample(5, seed_generator(3))
    assert a.xs.shape == (5, 7, 4) and a.ys.shape == (5, 7) and a.ws.shape == (5, 4)
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)
    assert not torch.equal(a.xs, task.sample(5, seed_generator(4)).xs)
    assert torch.allclose(a.ys, (a.xs * a.ws[:, None]).sum(-1))
    if distribution == "uniform":
        assert a.xs.abs().max() <= 1
    noisy = LinearRegressionTask(n_dims=4, n_points=50, noise_std=0.5).sample(400, seed_generator(1))
    residual = noisy.ys - (noisy.xs * noisy.ws[:, None]).sum(-1)
    assert abs(residual.std().item() - 0.5) < 0.02


def test_regression_task_rejects_bad_settings():
    with pytest.raises(ValueError, match="x_distribution"):
        LinearRegressionTask(x_distribution="laplace")
    with pytest.raises(ValueError, match="noise_std"):
        LinearRegressionTask(noise_std=-1)


def test_mqar_prompts_answer_every_key_with_its_value():
    task = MQARTask(vocab_size=33, max_kv_pairs=6, min_kv_pairs=2)
    input_ids, labels = task.sample(20, seed_generator(0))
    assert input_ids.shape == labels.shape == (20, 24)
    again, _ = task.sample(20, seed_generator(0))
    assert torch.equal(input_ids, again)
    for ids, target in zip(input_ids.tolist(), labels.tolist()):
        n = sum(1 for token in ids if token) // 4
        assert 2 <= n <= 6 and all(token == 0 for token in ids[4 * n :])
        keys, values = ids[0 : 2 * n : 2], ids[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(
            1 <= key <= task.n_keys < value for key, value in zip(keys, values)
        )
        memory = dict(zip(keys, values))
        queries = ids[2 * n : 4 * n : 2]
        assert sorted(queries) == sorted(keys)
        # The causal-LM loss predicts labels[t] at position t - 1: the value right after each queried key.
        answered = [(ids[t - 1], target[t]) for t in range(len(ids)) if target[t] != IGNORE_INDEX]
        assert answered == [(query, memory[query]) for query in queries]
    fixed_ids, _ = task.sample(3, seed_generator(1), num_kv_pairs=5)
    assert (fixed_ids[:, :20] != 0).all() and (fixed_ids[:, 20:] == 0).all()


def test_prompt_stream_is_seeded_and_endless():
    task = LinearRegressionTask(n_dims=2, n_points=3)
    first = [item["xs"] for _, item in zip(range(300), regression_stream(task, seed=5))]
    second = [item["xs"] for _, item in zip(range(300), regression_stream(task, seed=5))]
    other = next(iter(regression_stream(task, seed=6)))["xs"]
    assert len(first) == 300 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].dtype == torch.float32 and not torch.equal(first[0], other)


# ---------------------------------------------------------------------------------------------------- learners


def test_ols_and_ridge_match_closed_forms():
    xs, ys = well_posed_prompts()
    normal_equations = torch.linalg.solve(xs.transpose(1, 2) @ xs, xs.transpose(1, 2) @ ys[..., None])[..., 0]
    assert torch.allclose(ols(xs, ys), normal_equations, atol=1e-10)
    # Fewer examples than dimensions: the minimum-norm interpolant X^T (X X^T)^-1 y.
    few_x, few_y = xs[:, :2], ys[:, :2]
    min_norm = (few_x.transpose(1, 2) @ torch.linalg.solve(few_x @ few_x.transpose(1, 2), few_y[..., None]))[
        ..., 0
    ]
    assert torch.allclose(ols(few_x, few_y), min_norm, atol=1e-10)
    # Ridge in its dual form X^T (X X^T + lam I)^-1 y (the identity behind kernel ridge regression).
    lam = 0.7
    dual = xs.transpose(1, 2) @ torch.linalg.solve(
        xs @ xs.transpose(1, 2) + lam * torch.eye(xs.shape[1], dtype=xs.dtype), ys[..., None]
    )
    assert torch.allclose(ridge(xs, ys, lam), dual[..., 0], atol=1e-10)


def test_gradient_descent_matches_its_closed_form():
    xs, ys = well_posed_prompts()
    k, eye = xs.shape[1], torch.eye(xs.shape[-1], dtype=xs.dtype)
    a = xs.transpose(1, 2) @ xs / k
    b = (xs.transpose(1, 2) @ ys[..., None]) / k
    for lr, steps in ((0.3, 1), (0.2, 5)):
        # w_n = A^-1 (I - (I - lr A)^n) b, the sum of the geometric series of GD from w = 0.
        closed = torch.linalg.solve(a, (eye - torch.linalg.matrix_power(eye - lr * a, steps)) @ b)[..., 0]
        assert torch.allclose(gradient_descent(xs, ys, lr, steps), closed, atol=1e-10)
    one_step = 0.3 * (xs * ys[..., None]).sum(1) / k  # one step from 0: (lr / N) sum_i y_i x_i
    assert torch.allclose(gradient_descent(xs, ys, 0.3, 1), one_step, atol=1e-12)


def test_momentum_gradient_descent_matches_dai_sum_and_companion_matrix():
    xs, ys = well_posed_prompts()
    lr, beta, steps = 0.15, 0.6, 6
    k, d = xs.shape[1], xs.shape[-1]
    eye = torch.eye(d, dtype=xs.dtype).expand(xs.shape[0], d, d)
    a = xs.transpose(1, 2) @ xs / k
    b = (xs.transpose(1, 2) @ ys[..., None])[..., 0] / k
    # Dai et al.'s sum, literally: w_t = w_{t-1} - lr * sum_{i<=t} beta^(t-i) grad(w_{i-1}), keeping the history.
    w, gradients = torch.zeros_like(b), []
    for t in range(1, steps + 1):
        gradients.append((a @ w[..., None])[..., 0] - b)
        w = w - lr * sum(beta ** (t - i) * gradients[i - 1] for i in range(1, t + 1))
    expected = momentum_gradient_descent(xs, ys, lr, beta, steps)
    assert torch.allclose(expected, w, atol=1e-12)
    # Heavy ball as a linear recurrence: [w_t; w_{t-1}] = M [w_{t-1}; w_{t-2}] + [lr b; 0].
    top = torch.cat([(1 + beta) * eye - lr * a, -beta * eye], dim=2)
    bottom = torch.cat([eye, torch.zeros_like(eye)], dim=2)
    companion = torch.cat([top, bottom], dim=1)
    drive = torch.cat([lr * b, torch.zeros_like(b)], dim=1)[..., None]
    state = sum(torch.linalg.matrix_power(companion, j) @ drive for j in range(steps))
    assert torch.allclose(expected, state[:, :d, 0], atol=1e-10)
    assert torch.allclose(
        momentum_gradient_descent(xs, ys, lr, 0.0, steps), gradient_descent(xs, ys, lr, steps)
    )


def test_newton_iterations_match_eigen_closed_form_and_converge_to_ols():
    xs, ys = well_posed_prompts()
    gram = xs.transpose(1, 2) @ xs
    values, vectors = torch.linalg.eigh(gram)
    scale = 1.0 / values.max(-1).values ** 2  # 1 / ||S S^T||_2 for symmetric S
    steps = 3
    for c in (1.0, 1.6):  # the step scale is tuned like the other learners' steps: a = c / ||S S^T||_2
        # M_0 = a S gives M_j S = I - (I - a S^2)^(2^j): on eigenvalue s, (1 - (1 - a s^2)^(2^j)) / s.
        factor = (1 - (1 - c * scale[:, None] * values**2) ** (2**steps)) / values
        closed = (
            vectors @ torch.diag_embed(factor) @ vectors.transpose(1, 2) @ xs.transpose(1, 2) @ ys[..., None]
        )
        assert torch.allclose(newton_iterations(xs, ys, steps, c), closed[..., 0], atol=1e-10)
    assert torch.allclose(newton_iterations(xs, ys, 40), ols(xs, ys), atol=1e-8)


def test_tuning_uses_held_out_prompts_and_beats_untuned_steps():
    task = LinearRegressionTask(n_dims=3, n_points=6)
    learners = reference_learners(steps=2)
    tuned = tune_learners(task, learners, n_prompts=300, seed=11)
    assert set(tuned) == set(learners) and set(tuned["gd"]) == set(range(1, 6))
    assert set(tuned["momentum_gd"][4]) == {"lr", "momentum"} and tuned["ols"][4] == {}
    assert set(tuned["newton"][4]) == {"scale"} and set(tuned["online_momentum_sgd"][4]) == {"lr", "momentum"}
    assert 0.0 in learners["ridge"].grid["lam"]  # lambda = 0 (least squares) is a candidate
    assert torch.equal(ridge(*well_posed_prompts(k=2), 0.0), ols(*well_posed_prompts(k=2)))  # k < d: min norm
    evaluation = task.sample(400, seed_generator(12))
    weights = learner_weights(learners["gd"], evaluation, tuned["gd"])
    assert torch.equal(weights[:, 0], torch.zeros_like(weights[:, 0]))  # no examples: w = 0
    error = ((weights[:, 5] * evaluation.xs[:, 5]).sum(-1) - evaluation.ys[:, 5]).pow(2).mean()
    worst = min(
        ((gradient_descent(evaluation.xs[:, :5], evaluation.ys[:, :5], lr, 2) * evaluation.xs[:, 5]).sum(-1)
         - evaluation.ys[:, 5]).pow(2).mean()
        for lr in (0.01, 3.0)
    )  # fmt: skip
    assert error < worst


def test_online_momentum_sgd_matches_its_unrolled_recursion():
    xs, ys = well_posed_prompts(k=7)
    lr, beta = 0.07, 0.6
    # Dai et al.'s momentum over token positions, literally: w_i = w_(i-1) - lr sum_(j<=i) beta^(i-j) g_j, with
    # g_j = (w_(j-1).x_j - y_j) x_j the gradient of example j at the weights before it (one pass, prompt order).
    w, gradients = torch.zeros(xs.shape[0], xs.shape[-1], dtype=xs.dtype), []
    for i in range(xs.shape[1]):
        gradients.append(((w * xs[:, i]).sum(-1) - ys[:, i])[:, None] * xs[:, i])
        w = w - lr * sum(beta ** (i - j) * gradients[j] for j in range(i + 1))
    assert torch.allclose(online_momentum_sgd(xs, ys, lr, beta), w, atol=1e-12)
    # The same as a product of per-position companion matrices acting on (w, v), from (0, 0):
    #   v_i = beta v_(i-1) + x_i x_i^T w_(i-1) - y_i x_i,   w_i = w_(i-1) - lr v_i.
    n, k, d = xs.shape
    eye = torch.eye(d, dtype=xs.dtype).expand(n, d, d)
    state = torch.zeros(n, 2 * d, 1, dtype=xs.dtype)
    for i in range(k):
        outer = xs[:, i, :, None] * xs[:, i, None, :]
        top = torch.cat([eye - lr * outer, -lr * beta * eye], dim=2)
        bottom = torch.cat([outer, beta * eye], dim=2)
        drive = torch.cat([lr * ys[:, i, None] * xs[:, i], -ys[:, i, None] * xs[:, i]], dim=1)[..., None]
        state = torch.cat([top, bottom], dim=1) @ state + drive
    assert torch.allclose(online_momentum_sgd(xs, ys, lr, beta), state[:, :d, 0], atol=1e-12)
    # beta = 0 is online SGD; one example is one SGD step from 0: w = lr y_1 x_1.
    assert torch.equal(online_momentum_sgd(xs, ys, lr, 0.0), online_sgd(xs, ys, lr))
    assert torch.allclose(online_sgd(xs[:, :1], ys[:, :1], lr), lr * ys[:, :1] * xs[:, 0], atol=1e-15)


def test_kalman_filter_is_the_gaussian_posterior_mean():
    xs, ys = well_posed_prompts(n=6, k=6, d=3, seed=4)
    sigma = 0.3
    # No drift: the posterior mean under w ~ N(0, I) is ridge with lambda = sigma^2.
    assert torch.allclose(kalman_filter(xs, ys, 0.0, sigma), ridge(xs, ys, sigma**2), atol=1e-10)
    # With drift: E[w_k | y] from the joint Gaussian, Cov(w_i, w_j) = (1 + delta^2 (min(i, j) - 1)) I (1-based).
    delta = 0.4
    k = xs.shape[1]
    index = torch.arange(1, k + 1, dtype=xs.dtype)
    scale = 1 + delta**2 * (torch.minimum(index[:, None], index[None, :]) - 1)
    cov_y = scale * (xs @ xs.transpose(1, 2)) + sigma**2 * torch.eye(k, dtype=xs.dtype)
    cov_wy = xs.transpose(1, 2) * (1 + delta**2 * (index - 1))  # Cov(w_k, y_j) = (1 + delta^2 (j - 1)) x_j
    expected = (cov_wy @ torch.linalg.solve(cov_y, ys[..., None]))[..., 0]
    assert torch.allclose(kalman_filter(xs, ys, delta, sigma), expected, atol=1e-10)


def test_drifting_regression_task_draws_a_random_walk():
    task = LinearRegressionTask(n_dims=3, n_points=40, drift_std=0.2)
    prompts = task.sample(500, seed_generator(0))
    assert prompts.ws.shape == (500, 40, 3)
    assert torch.allclose(prompts.ys, (prompts.xs * prompts.ws).sum(-1))
    steps = prompts.ws[:, 1:] - prompts.ws[:, :-1]
    assert abs(steps.std().item() - 0.2) < 0.01 and abs(prompts.ws[:, 0].std().item() - 1) < 0.05
    # Recency matters: the Kalman filter (which discounts old examples) beats least squares on late queries.
    k = 30
    xs, ys = prompts.xs[:, :k], prompts.ys[:, :k]
    query = prompts.xs[:, k]
    kalman_error = ((kalman_filter(xs, ys, 0.2, 0.0) * query).sum(-1) - prompts.ys[:, k]).pow(2).mean()
    ols_error = ((ols(xs, ys) * query).sum(-1) - prompts.ys[:, k]).pow(2).mean()
    assert kalman_error < 0.5 * ols_error


def test_label_noise_separates_ols_ridge_and_gd():
    """With noisy labels, tuned ridge beats OLS near k = d (where OLS's variance peaks), as in Akyürek et al."""
    task = LinearRegressionTask(n_dims=4, n_points=9, noise_std=0.5)
    learners = {
        name: learner for name, learner in reference_learners(2).items() if name in ("ols", "ridge", "gd")
    }
    tuned = tune_learners(task, learners, n_prompts=500, seed=1)
    prompts = task.sample(2000, seed_generator(2))
    errors = {
        name: (
            (learner_weights(learner, prompts, tuned[name])[:, 4] * prompts.xs[:, 4]).sum(-1)
            - prompts.ys[:, 4]
        )
        .pow(2)
        .mean()
        .item()
        for name, learner in learners.items()
    }
    assert tuned["ridge"][4]["lam"] > 0
    assert errors["ridge"] < 0.7 * errors["ols"] and errors["ridge"] < errors["gd"]


def test_out_of_distribution_inputs():
    base = LinearRegressionTask(n_dims=4, n_points=5)
    twice = base.replace(input_scale=2.0).sample(10, seed_generator(3))
    assert torch.allclose(twice.xs, 2 * base.sample(10, seed_generator(3)).xs)
    skewed = base.replace(covariance="skewed").sample(20000, seed_generator(3))
    variances = skewed.xs.reshape(-1, 4).var(0)
    expected = 1 / torch.arange(1, 5, dtype=torch.float64) ** 2
    expected = expected * 4 / expected.sum()
    assert torch.allclose(variances, expected, rtol=0.05) and torch.allclose(skewed_scales(4) ** 2, expected)
    with pytest.raises(ValueError, match="skewed"):
        LinearRegressionTask(x_distribution="uniform", covariance="skewed")


def test_mqar_reassignment_makes_the_latest_value_the_answer():
    task = MQARTask(vocab_size=33, max_kv_pairs=5, reassign=True)
    input_ids, labels = task.sample(50, seed_generator(5))
    assert input_ids.shape == (50, task.sequence_length) == (50, 22)
    late = task.reassigned_positions(input_ids)
    for row, (ids, target) in enumerate(zip(input_ids.tolist(), labels.tolist())):
        n = (sum(1 for token in ids if token) - 2) // 4
        keys, values = ids[0 : 2 * n : 2], ids[1 : 2 * n : 2]
        key, new_value = ids[2 * n], ids[2 * n + 1]
        old_value = values[keys.index(key)]
        assert key in keys and new_value != old_value and new_value > task.n_keys
        memory = {**dict(zip(keys, values)), key: new_value}
        answered = [(ids[t - 1], target[t]) for t in range(len(ids)) if target[t] != IGNORE_INDEX]
        assert [q for q, _ in answered] == ids[2 * n + 2 : 4 * n + 2 : 2] and sorted(
            q for q, _ in answered
        ) == sorted(keys)
        assert all(answer == memory[query] for query, answer in answered)
        marked = [t for t in range(len(ids)) if late[row, t]]
        assert len(marked) == 1 and ids[marked[0] - 1] == key and target[marked[0]] == new_value


def test_curriculum_grows_dimensions_and_points():
    curriculum = Curriculum(start_dims=1, start_points=3, interval=10, dims_increment=1, points_increment=2)
    assert curriculum.stage(0, 4, 9) == (1, 3) and curriculum.stage(25, 4, 9) == (3, 7)
    assert curriculum.stage(1000, 4, 9) == (4, 9)
    counter = StepCounter()
    stream = iter(regression_stream(LinearRegressionTask(n_dims=4, n_points=9), 0, curriculum=curriculum,
                                    counter=counter, block=4))  # fmt: skip
    first = [next(stream) for _ in range(4)]
    assert first[0]["xs"].shape == (3, 4) and (first[0]["xs"][:, 1:] == 0).all()
    counter.step = 25
    later = [next(stream) for _ in range(4)]
    assert (
        later[0]["xs"].shape == (7, 4)
        and (later[0]["xs"][:, 3:] == 0).all()
        and (later[0]["xs"][:, :3] != 0).all()
    )


# ---------------------------------------------------------------------------------------------------- statistics


def test_tost_p_values_by_hand():
    # d = [1, 2, 3]: mean 2, sd 1, se = 1/sqrt(3), 2 degrees of freedom, whose t CDF is 1/2 + t / (2 sqrt(2 + t^2)).
    def cdf(t):
        return 0.5 + t / (2 * math.sqrt(2 + t * t))

    se = 1 / math.sqrt(3)
    result = statistics.tost([1.0, 2.0, 3.0], margin=4.0)
    assert result.p_lower == pytest.approx(1 - cdf((2 + 4) / se), abs=1e-12)  # 0.004566
    assert result.p_upper == pytest.approx(cdf((2 - 4) / se), abs=1e-12)  # 0.037090
    assert result.p_value == pytest.approx(0.037090, abs=1e-6)
    # p_TOST < 0.05 exactly when the 90% interval lies inside the margin: 2 +- 2.919986 / sqrt(3).
    assert result.low == pytest.approx(2 - 2.919986 / math.sqrt(3), abs=1e-5) and result.high < 4
    assert statistics.tost([1.0, 2.0, 3.0], margin=3.0).p_value > 0.05  # the interval reaches past +3


def test_holm_on_a_known_vector():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max(0.06, 0.04) = 0.06.
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_median_and_divergence_rule():
    median, low, high = statistics.bootstrap_median([1.0, 2.0, 3.0, 4.0, 100.0])
    assert median == 3.0 and 1.0 <= low <= 3.0 <= high <= 100.0
    assert statistics.bootstrap_median([1.0, 2.0, 3.0, 4.0, 100.0]) == (
        median,
        low,
        high,
    )  # fixed random state
    divergence = statistics.diverged_seeds({1: 0.10, 2: 0.12, 3: 0.11, 4: 0.50, 5: 0.10, 6: None})
    assert divergence.median == pytest.approx(0.11) and set(divergence.seeds) == {4, 6}


def test_verdicts_better_worse_equivalent_inconclusive_with_holm():
    baseline = {seed: 1.0 + 0.01 * seed for seed in range(1, 7)}
    arms = {
        "same": {s: v + 0.001 * (-1) ** s for s, v in baseline.items()},
        "worse": {s: v + 0.3 + 0.01 * (-1) ** s for s, v in baseline.items()},
        "better": {s: v - 0.3 + 0.01 * (-1) ** s for s, v in baseline.items()},
        "noisy": {s: v + 0.4 * (-1) ** s + 0.1 for s, v in baseline.items()},
    }
    comparisons = statistics.compare_arms(baseline, arms, margin=0.05)
    assert {name: c.verdict for name, c in comparisons.items()} == {
        "same": "equivalent", "worse": "worse", "better": "better", "noisy": "inconclusive",
    }  # fmt: skip
    assert all(c.p_holm >= c.p_value for c in comparisons.values())
    assert comparisons["noisy"].seeds_for_equivalence is None  # its mean is outside the margin
    # A diverged baseline seed is left out of every pair.
    excluded = statistics.compare_arms(baseline, arms, margin=0.05, exclude_seeds=[3])
    assert excluded["worse"].seeds == [1, 2, 4, 5, 6]


def _record(eta, seed, headline, gap, loss=0.1):
    return RunRecord(eta=eta, seed=seed, learning_rate=1e-3, steps=10, headline=headline, anchor_gap=gap,
                     curve=[1.0, headline, gap], final_loss=loss)  # fmt: skip


def test_a_baseline_below_the_anchor_gets_no_verdict():
    def gap(curve):
        return curve[-1], f"error {curve[-1]:.3f}"

    def lab(baseline_gap):
        records = {
            "0": {s: _record("0", s, 0.2 + 0.001 * s, baseline_gap) for s in range(1, 6)},
            "0.5": {s: _record("0.5", s, 0.5 + 0.001 * s, baseline_gap) for s in range(1, 6)},
        }
        gate = aggregate.gate("linear-regression", records["0"], [], gap, True, "criterion")
        return gate, aggregate.momentum(records, gate, "mean error", 0.05, None, 2.0)

    gate, momentum = lab(0.05)
    assert not gate.reached and gate.message.startswith("baseline below anchor")
    assert "error 0.050" in gate.message and "Garg" in gate.message
    assert not momentum.verdicts_given and momentum.comparisons["0.5"].verdict == "no verdict"
    gate, momentum = lab(0.005)  # the same arms, the baseline at the anchor: now a verdict
    assert gate.reached and momentum.verdicts_given and momentum.comparisons["0.5"].verdict == "worse"
    # MQAR: the gate asks 0.99 accuracy with the most pairs.
    mqar_gate = aggregate.gate(
        "mqar", {1: _record("0", 1, 0.3, 0.4)}, [], lambda c: (0.4, "0.6000 accuracy"), True, "c"
    )
    assert not mqar_gate.reached and "0.6000 accuracy" in mqar_gate.message and "Zoology" in mqar_gate.message


# ---------------------------------------------------------------------------------------------------- models


def test_constructed_lsa_layers_are_gd_steps():
    task = LinearRegressionTask(n_dims=4, n_points=9, x_distribution="uniform")
    prompts = task.sample(32, seed_generator(2))
    for steps in (1, 3):
        model = LinearSelfAttentionForInContextRegression.from_gradient_descent(4, 0.8, steps, torch.float64)
        predictions = model(prompts.xs, prompts.ys).predictions
        w = gradient_descent(prompts.xs[:, :8], prompts.ys[:, :8], 0.8, steps)
        assert torch.allclose(predictions, (w * prompts.xs[:, 8]).sum(-1), atol=1e-12)


def test_positive_control_rung_a_constructed_gd_layer():
    args = ICLLabArguments(n_tune=400, n_align=128, n_probe=8, lsa_n_dims=10, lsa_context=10, n_eval=200)
    rung = control.constructed_rung(control.prepare(args))
    assert rung.preds_diff.mean <= 1e-5
    assert rung.sensitivity_cosine.mean >= 0.9999
    assert rung.update_cosine["gd"].mean >= 0.9999
    # The null: FT on shuffled labels is far from the constructed layer's update.
    assert rung.update_cosine["gd_shuffled_labels"].mean < 0.5


def test_regression_model_is_causal_and_reads_out_every_layer():
    model = tiny_regression_model(momentum_eta=0.5)
    xs, ys = torch.randn(4, 6, 3), torch.randn(4, 6)
    output = model(xs, ys, output_layer_predictions=True)
    assert output.predictions.shape == (4, 6) and len(output.layer_predictions) == 2
    assert torch.equal(output.layer_predictions[-1], output.predictions)
    assert torch.allclose(output.loss, (output.predictions - ys).pow(2).mean() / 3)
    # The prediction at point i sees x_1..x_i and y_1..y_{i-1} only.
    changed_x, changed_y = xs.clone(), ys.clone()
    changed_x[:, 4:] += 1.0
    changed_y[:, 3:] += 1.0
    assert torch.allclose(
        model(changed_x, changed_y).predictions[:, :4], output.predictions[:, :4], atol=1e-6
    )
    assert not torch.allclose(model(changed_x, changed_y).predictions[:, 4], output.predictions[:, 4])
    with pytest.raises(ValueError, match="max_points=6"):
        model(torch.randn(1, 7, 3))


def test_lab_models_save_and_load_through_the_auto_classes(tmp_path):
    model = tiny_regression_model(momentum_eta=0.5, learnable_eta=True)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.eta_logit.uniform_(-2, 2)
    model.save_pretrained(tmp_path / "regression")
    files = set(os.listdir(tmp_path / "regression"))
    assert {
        "configuration_momentum_gpt.py",
        "modeling_momentum_gpt.py",
        "modeling_icl_regression.py",
    } <= files
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "regression"), MomentumGPTICLRegressionConfig)
    reloaded = AutoModel.from_pretrained(tmp_path / "regression").eval()
    assert type(reloaded) is MomentumGPTForInContextRegression
    xs, ys = torch.randn(2, 6, 3), torch.randn(2, 6)
    assert torch.equal(reloaded(xs, ys).predictions, model(xs, ys).predictions)

    torch.manual_seed(0)
    lsa = LinearSelfAttentionForInContextRegression(LinearSelfAttentionConfig(n_dims=3, num_hidden_layers=2))
    lsa.save_pretrained(tmp_path / "lsa")
    lsa_reloaded = AutoModel.from_pretrained(tmp_path / "lsa")
    assert type(lsa_reloaded) is LinearSelfAttentionForInContextRegression
    assert torch.equal(lsa_reloaded(xs, ys).predictions, lsa(xs, ys).predictions)


@pytest.mark.slow
def test_lab_models_load_as_remote_code_without_the_plugin(tmp_path):
    model = tiny_regression_model(momentum_eta=0.25)
    model.save_pretrained(tmp_path / "regression")
    lsa = LinearSelfAttentionForInContextRegression.from_gradient_descent(3, 0.5, 2)
    lsa.save_pretrained(tmp_path / "lsa")
    xs, ys = torch.randn(2, 6, 3), torch.randn(2, 6)
    with torch.no_grad():
        expected = {
            "xs": xs,
            "ys": ys,
            "regression": model(xs, ys).predictions,
            "lsa": lsa(xs, ys).predictions,
        }
    save_file(expected, tmp_path / "expected.safetensors")
    script = f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel
        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        for name in ("regression", "lsa"):
            model = AutoModel.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                assert torch.equal(model(expected["xs"], expected["ys"]).predictions, expected[name])
            print("REMOTE_OK", type(model).__name__)
        """
    result = run_without_plugin(script, tmp_path / "modules")
    assert "REMOTE_OK MomentumGPTForInContextRegression" in result.stdout, result.stderr[-3000:]
    assert "REMOTE_OK LinearSelfAttentionForInContextRegression" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------- measures


def test_intervals_match_hand_computed_t_intervals():
    # a - b = [1, 2, 3]: mean 2, sd 1, t_{0.975, 2} = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138.
    difference = paired_difference([3.0, 5.0, 8.0], [2.0, 3.0, 5.0])
    assert difference["mean"] == pytest.approx(2.0)
    assert difference["low"] == pytest.approx(2.0 - 2.484138, abs=1e-5)
    assert difference["high"] == pytest.approx(2.0 + 2.484138, abs=1e-5)
    single = mean_interval([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["low"])


# ---------------------------------------------------------------------------------------------------- CLI


TINY = [
    "--seeds", "1", "2", "--steps", "4", "--num-layers", "2", "--hidden-size", "16", "--num-heads", "2",
    "--batch-size", "8", "--n-eval", "48", "--n-tune", "120", "--n-align", "16", "--n-probe", "4", "--n-gate", "16",
    "--n-ood", "16", "--lsa-steps", "4", "--no-progress",
]  # fmt: skip


def test_cli_end_to_end_regression_gates_resumes_and_exports_cards(tmp_path, capsys):
    out = tmp_path / "lab"
    argv = ["icl-lab", "--task", "linear-regression", "--etas", "0,0.5", "--n-dims", "2", "--max-examples", "5",
            "--noise-std", "0.1", "--learning-rates", "1e-3", "3e-3"]  # fmt: skip
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    results = LabResults.load(out / "results.json")  # the one schema: typed all the way down
    assert results.task == "linear-regression" and set(results.arms) == {"0", "0.5"}
    assert len(results.arms["0.5"].curve.mean) == 6 and set(results.runs["0"]) == {"1", "2"}
    learners = {
        "ols",
        "ridge",
        "gd",
        "momentum_gd",
        "newton",
        "gd_1step",
        "online_sgd",
        "online_momentum_sgd",
    }
    assert learners <= set(results.learners) and results.learners["ols"].curve.n == 48
    assert {"scale"} == set(results.learners["newton"].hyperparameters["3"])
    assert set(results.sweeps) == {"0", "0.5"} and set(results.sweeps["0"].held_out) == {"0.001", "0.003"}
    assert results.arms["0"].learning_rate == results.sweeps["0"].chosen
    # Four steps of training are far below the anchor: no verdict, and the report says why.
    assert not results.gate.reached and results.gate.message.startswith("baseline below anchor")
    assert not results.momentum.verdicts_given
    assert all(c.verdict == "no verdict" for c in results.momentum.comparisons.values())
    report = (out / "report.md").read_text()
    assert "**Baseline below anchor**" in report and "No verdict: baseline below anchor" in report
    assert "Garg et al. 2022" in report and "TOST" in report and "Holm" in report
    assert set(results.ood_variants) == {"inputs_x2", "inputs_x0.5", "skewed_covariance", "longer_prompts"}
    assert len(results.arms["0"].ood["longer_prompts"].k) == 11  # K + K examples: beyond training
    assert "online_momentum_sgd_at_eta" in results.alignment["0.5"]
    assert set(results.update_cosine["0"]["ols"]) == {"1", "2", "3", "4", "5", "mean"}  # per k
    assert results.positive_control.rungs[0].preds_diff.mean <= 1e-5
    assert len(results.runs["0"]["1"].anchor_trace) >= 1  # steps-to-threshold was watched
    for name in ("report.md", "error_vs_k.png", "alignment_per_layer.png", "anchor_trace.png"):
        assert (out / name).is_file()

    # A rerun reuses every finished run (nothing retrains) and exports the two checkpoints.
    model_file = (
        out / "runs" / "linear-regression" / "eta=0.5" / "lr=0.003" / "seed=2" / "model" / "model.safetensors"
    )
    stamp = model_file.stat().st_mtime_ns
    cards = tmp_path / "cards"
    assert main([*argv, *TINY, "--out", str(out), "--cards-dir", str(cards)]) == 0
    assert model_file.stat().st_mtime_ns == stamp
    folders = sorted(p.name for p in cards.iterdir())
    assert folders == ["icl-regression-eta0", "icl-regression-eta0.5"]
    card = (cards / folders[1] / "README.md").read_text()
    assert "model-index" in card and "squared error / d at k = d (k = 2)" in card and "k = 2d (k = 4)" in card
    assert "Baseline below anchor" in card and folders[0] in card
    loaded = AutoModel.from_pretrained(cards / folders[1])
    assert type(loaded) is MomentumGPTForInContextRegression and loaded.config.momentum_eta == 0.5

    # Runs trained with other settings are never silently reused: one line, exit code 2.
    capsys.readouterr()
    assert main([*argv, *TINY, "--out", str(out), "--hidden-size", "32"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "hidden_size: 16 -> 32" in errors[0], errors


def test_cli_end_to_end_mqar_with_a_late_reassignment(tmp_path):
    out = tmp_path / "mqar"
    argv = ["icl-lab", "--task", "mqar", "--etas", "0", "learnable", "--vocab-size", "17", "--max-kv-pairs", "3",
            "--mqar-reassign"]  # fmt: skip
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    results = LabResults.load(out / "results.json")
    arm = results.arms["learnable"]
    assert arm.curve.k == [1, 2, 3] and all(0 <= e <= 1 for e in arm.curve.mean)
    assert {"reassigned_accuracy_1", "reassigned_accuracy_3"} <= set(arm.extra)
    assert len(results.runs["learnable"]["1"].learned_etas) == 2  # one list of head etas per layer
    assert not results.gate.reached and "accuracy with 3 key-value pairs" in results.gate.message
    assert results.momentum.comparisons["learnable"].verdict == "no verdict"
    assert "Zoology" in (out / "report.md").read_text() and (out / "error_vs_k.png").is_file()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--etas", "0,1.5"], "eta must be in [0, 1)"),
        (["--etas", "0,fast"], "neither a number nor 'learnable'"),
        (["--etas", "0.5"], "--etas must include 0"),
        (["--task", "sorting"], "--task"),
        (["--seeds", "1,1"], "repeated seed"),
        (["--learning-rates", "1e-3", "-1"], "--learning-rates"),
        (["--margin-relative", "0"], "--margin-relative"),
        (["--mqar-reassign"], "--mqar-reassign applies to --task mqar"),
        (["--device", "cuda:99"], "--device"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, arguments, message):
    try:
        code = main(["icl-lab", "--out", str(tmp_path / "x"), *arguments])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "x").exists()


def test_results_round_trip_through_json(tmp_path):
    records = {eta: {s: _record(eta, s, 0.1 * s, 0.005) for s in (1, 2, 3)} for eta in ("0", "0.5")}
    gate = aggregate.gate("linear-regression", records["0"], [], lambda c: (c[-1], "x"), True, "criterion")
    results = LabResults(
        task="linear-regression",
        config={"eta_list": ["0", "0.5"], "seed_list": [1, 2, 3]},
        environment={},
        arms={eta: aggregate.summarize_arm(eta, runs, [0, 1, 2], 2.0) for eta, runs in records.items()},
        runs={eta: {str(s): r for s, r in runs.items()} for eta, runs in records.items()},
        gate=gate,
        momentum=aggregate.momentum(records, gate, "mean error", 0.05, None, 2.0),
    )
    again = LabResults.load(results.save(tmp_path / "results.json"))
    assert again.momentum.comparisons["0.5"] == results.momentum.comparisons["0.5"]
    assert (
        again.arms["0"].curve == results.arms["0"].curve
        and again.runs["0.5"]["2"] == results.runs["0.5"]["2"]
    )


# ---------------------------------------------------------------------------------------------------- checkpoints

LAB_CARDS = sorted((Path(__file__).parents[1] / "model_cards").glob("icl-*-*eta*"))


def _card_input(folder: Path) -> tuple[type, dict[str, torch.Tensor]]:
    config = json.loads((folder / "config.json").read_text())
    if config["model_type"] == "momentum_gpt":  # MQAR: k1 v1 k2 v2 | k2 v2 k1 -> v1
        n_keys = (config["vocab_size"] - 1) // 2
        return AutoModelForCausalLM, {
            "input_ids": torch.tensor([[1, n_keys + 3, 2, n_keys + 7, 2, n_keys + 7, 1]])
        }
    generator = seed_generator(0)
    xs = torch.randn(4, config["max_points"], config["n_dims"], generator=generator)
    w = torch.randn(4, config["n_dims"], generator=generator)
    return AutoModel, {"xs": xs, "ys": (xs * w[:, None]).sum(-1)}


@pytest.mark.slow
@pytest.mark.parametrize("folder", LAB_CARDS, ids=[p.name for p in LAB_CARDS])
def test_lab_checkpoint_loads_with_the_plugin_and_as_remote_code(folder, tmp_path):
    auto_class, inputs = _card_input(folder)
    # The code a trust_remote_code user runs is the package's own (refresh: load and save_pretrained the folder).
    package = Path(transformers_momentum.__file__).parent / "models"
    for code in folder.glob("*.py"):
        source = package / ("momentum_gpt" if "momentum_gpt" in code.name else "icl_regression") / code.name
        assert code.read_text() == source.read_text(), f"{folder.name}/{code.name} is stale"
    model = auto_class.from_pretrained(folder).eval()
    assert type(model).__module__.startswith("transformers_momentum")
    assert "η = " in (folder / "README.md").read_text()
    with torch.no_grad():
        output = model(**inputs)
    expected = output.logits if auto_class is AutoModelForCausalLM else output.predictions
    if auto_class is AutoModelForCausalLM:
        # The card's example asks for k1's value with 2 pairs in the prompt: a model at the anchor (error <= 0.01
        # with 2 pairs, by its own results.json) answers v1; any trained recall model answers with a value token.
        summary = json.loads((folder / "results.json").read_text())
        answer = expected[0, -1].argmax().item()
        n_keys = (model.config.vocab_size - 1) // 2
        assert answer > n_keys
        if summary["arms"][summary["eta"]]["curve"]["mean"][1] <= 0.01:
            assert answer == inputs["input_ids"][0, 1].item()
    save_file({**inputs, "expected": expected.contiguous()}, tmp_path / "expected.safetensors")
    script = f"""
        import torch, transformers
        from safetensors.torch import load_file
        model = transformers.{auto_class.__name__}.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = load_file({str(tmp_path / "expected.safetensors")!r})
        expected = data.pop("expected")
        with torch.no_grad():
            output = model(**data)
        got = output.logits if hasattr(output, "logits") else output.predictions
        assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
        print("REMOTE_OK")
        """
    result = run_without_plugin(script, tmp_path / "modules")
    assert "REMOTE_OK" in result.stdout, result.stderr[-3000:]
