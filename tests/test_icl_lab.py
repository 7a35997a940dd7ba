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
    gradient_descent,
    learner_weights,
    mean_interval,
    momentum_gradient_descent,
    newton_iterations,
    ols,
    paired_difference,
    positive_control,
    reference_learners,
    regression_stream,
    ridge,
    tune_learners,
)
from transformers_momentum.icl_lab.config import ICLLabArguments
from transformers_momentum.icl_lab.tasks import IGNORE_INDEX, seed_generator
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
    # M_0 = a S gives M_j S = I - (I - a S^2)^(2^j): on eigenvalue s, (1 - (1 - a s^2)^(2^j)) / s.
    factor = (1 - (1 - scale[:, None] * values**2) ** (2**steps)) / values
    closed = vectors @ torch.diag_embed(factor) @ vectors.transpose(1, 2) @ xs.transpose(1, 2) @ ys[..., None]
    assert torch.allclose(newton_iterations(xs, ys, steps), closed[..., 0], atol=1e-10)
    assert torch.allclose(newton_iterations(xs, ys, 40), ols(xs, ys), atol=1e-8)


def test_tuning_uses_held_out_prompts_and_beats_untuned_steps():
    task = LinearRegressionTask(n_dims=3, n_points=6)
    learners = reference_learners(steps=2)
    tuned = tune_learners(task, learners, n_prompts=300, seed=11)
    assert set(tuned) == set(learners) and set(tuned["gd"]) == set(range(1, 6))
    assert set(tuned["momentum_gd"][4]) == {"lr", "momentum"} and tuned["ols"][4] == {}
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
    args = ICLLabArguments(n_tune=400, n_align=128, n_probe=8, lsa_n_dims=10, lsa_context=10)
    control = positive_control(args, out=None, train_lsa=False)
    assert control["preds_diff"] <= 1e-5
    assert control["sensitivity_cosine"] >= 0.9999
    assert control["update_cosine"] >= 0.9999
    # The null: FT on shuffled labels is far from the constructed layer's update.
    assert control["rungs"]["a_constructed_lsa"]["update_cosine"]["gd_shuffled_labels"] < 0.5


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
    "--seeds", "1,2", "--steps", "4", "--num-layers", "2", "--hidden-size", "16", "--num-heads", "2",
    "--batch-size", "8", "--n-eval", "48", "--n-tune", "120", "--n-align", "16", "--n-probe", "4",
    "--lsa-steps", "4", "--no-progress",
]  # fmt: skip


def test_cli_end_to_end_regression_resumes_and_exports_cards(tmp_path, capsys):
    out = tmp_path / "lab"
    argv = [
        "icl-lab",
        "--task",
        "linear-regression",
        "--etas",
        "0,0.5",
        "--n-dims",
        "3",
        "--max-examples",
        "5",
    ]
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"config", "curves", "baselines", "alignment", "positive_control"} <= set(results)
    assert set(results["curves"]) == {"0", "0.5"} and len(results["curves"]["0.5"]["mean"]) == 6
    assert {"ols", "ridge", "gd", "momentum_gd", "newton", "gd_1step"} <= set(results["baselines"])
    assert results["baselines"]["ols"]["error"][5] < 1e-12  # noiseless, k = 5 > d = 3
    assert {"preds_diff", "sensitivity_cosine"} <= set(results["alignment"]["0.5"]["gd"])
    assert results["positive_control"]["preds_diff"] <= 1e-5
    assert results["positive_control"]["sensitivity_cosine"] >= 0.9999
    assert "0.5" in results["momentum"]["paired_vs_eta0"]
    for name in ("report.md", "error_vs_k.png", "alignment_per_layer.png"):
        assert (out / name).is_file()
    assert "Positive-control ladder" in (out / "report.md").read_text()

    # A rerun reuses every finished run (nothing retrains) and exports the two checkpoints.
    model_file = out / "runs" / "linear-regression" / "eta=0.5" / "seed=1" / "model" / "model.safetensors"
    stamp = model_file.stat().st_mtime_ns
    cards = tmp_path / "cards"
    assert main([*argv, *TINY, "--out", str(out), "--cards-dir", str(cards)]) == 0
    assert model_file.stat().st_mtime_ns == stamp
    folders = sorted(p.name for p in cards.iterdir())
    assert folders == ["icl-regression-eta0", "icl-regression-eta0.5"]
    card = (cards / folders[1] / "README.md").read_text()
    assert "η = 0.5" in card and folders[0] in card
    loaded = AutoModel.from_pretrained(cards / folders[1])
    assert type(loaded) is MomentumGPTForInContextRegression and loaded.config.momentum_eta == 0.5

    # Runs trained with other settings are never silently reused: one line, exit code 2.
    capsys.readouterr()
    assert main([*argv, *TINY, "--out", str(out), "--hidden-size", "32"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "icl-lab: error" in line]
    assert len(errors) == 1 and "hidden_size: 16 -> 32" in errors[0], errors


def test_cli_end_to_end_mqar(tmp_path):
    out = tmp_path / "mqar"
    argv = ["icl-lab", "--task", "mqar", "--etas", "0,learnable", "--vocab-size", "17", "--max-kv-pairs", "3"]
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"config", "curves", "baselines", "alignment", "positive_control", "accuracy"} <= set(results)
    accuracy = results["accuracy"]["learnable"]
    assert accuracy["kv_pairs"] == [1, 2, 3] and all(0 <= a <= 1 for a in accuracy["mean"])
    assert len(results["momentum"]["learned_eta"]["per_seed"]["1"]) == 2  # one list of head etas per layer
    assert (out / "report.md").is_file() and (out / "error_vs_k.png").is_file()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--etas", "0,1.5"], "eta must be in [0, 1)"),
        (["--etas", "0,fast"], "neither a number nor 'learnable'"),
        (["--task", "sorting"], "--task must be one of"),
        (["--seeds", "1,1"], "repeated seed"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, arguments, message):
    assert main(["icl-lab", "--out", str(tmp_path / "x"), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "x").exists()


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
        # The card's example: a trained recall model answers k1 with v1.
        assert expected[0, -1].argmax().item() == inputs["input_ids"][0, 1].item()
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
