"""Evaluation of one trained (or constructed) model: error curves, alignment with the learners, update cosines, MQAR
accuracy. Everything here runs under `torch.no_grad()` except the input sensitivities (autograd on x_q)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .learners import Learner, gradient_descent, learner_predictions, learner_weights, ols
from .measures import normalized_squared_error, preds_diff, sensitivity_cosine, update_cosine
from .tasks import IGNORE_INDEX, LinearRegressionTask, MQARTask, RegressionPrompts, seed_generator

_BATCH = 512  # prompts per forward pass in evaluation (bounded memory)


def _query_predictions(model, xs: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the model's prediction at the last point of each prompt: L tensors of shape (n,)."""
    output = model(xs, ys, output_layer_predictions=True)
    return [p[:, -1] if p.dim() == 2 else p for p in output.layer_predictions]


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def model_curve(model, prompts: RegressionPrompts, n_dims: int) -> torch.Tensor:
    """Normalised squared error of a MomentumGPT regression model at every k: (n_prompts, P)."""
    dtype, device = _model_dtype(model), _model_device(model)
    errors = []
    for start in range(0, len(prompts), _BATCH):
        chunk = prompts[start : start + _BATCH]
        predictions = model(chunk.xs.to(device, dtype), chunk.ys.to(device, dtype)).predictions.cpu()
        errors.append(normalized_squared_error(predictions, chunk.ys, n_dims))
    return torch.cat(errors)


def anchor_gap(curve: torch.Tensor, reference: torch.Tensor, ks: Sequence[int]) -> float:
    """The gate's regression quantity: max over `ks` of (model error - reference learner error), both mean
    curves over prompts (1-D, indexed by k)."""
    return max(float(curve[k] - reference[k]) for k in ks)


def regression_anchor_measure(
    prompts: RegressionPrompts, reference: torch.Tensor, ks: Sequence[int], n_dims: int
):
    """`measure(model)` for `AnchorProbe`: the anchor gap on held-out `prompts` (the reference curve measured on
    the same prompts)."""

    def measure(model) -> float:
        return anchor_gap(model_curve(model, prompts, n_dims).mean(0), reference, ks)

    return measure


def mqar_anchor_measure(task: MQARTask, n_prompts: int, seed: int):
    """`measure(model)` for `AnchorProbe`: 1 - accuracy with the most key-value pairs, on held-out prompts."""

    def measure(model) -> float:
        return 1.0 - mqar_accuracy(model, task, [task.max_kv_pairs], n_prompts, seed)[task.max_kv_pairs]

    return measure


@torch.no_grad()
def lsa_curve(model, prompts: RegressionPrompts, n_dims: int, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Normalised squared error of an LSA model with k context points (the query is point k + 1 of the prompt)."""
    dtype = _model_dtype(model)
    curve = {}
    for k in ks:
        xs, ys = prompts.xs[:, : k + 1].to(dtype), prompts.ys[:, : k + 1].to(dtype)
        curve[k] = normalized_squared_error(model(xs, ys).predictions, prompts.ys[:, k], n_dims)
    return curve


def layer_outputs(model, prompts: RegressionPrompts, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, the prediction at x_{k+1} after k examples and its sensitivity d(prediction)/d(x_{k+1}):
    shapes (L, n) and (L, n, d)."""
    dtype, device = _model_dtype(model), _model_device(model)
    xs = prompts.xs[:, : k + 1].to(device, dtype).clone().requires_grad_(True)
    ys = prompts.ys[:, : k + 1].to(device, dtype)
    predictions = _query_predictions(model, xs, ys)
    gradients = []
    for index, prediction in enumerate(predictions):
        # Each prompt's prediction depends on its own inputs only, so the gradient of the sum is per prompt.
        (gradient,) = torch.autograd.grad(prediction.sum(), xs, retain_graph=index < len(predictions) - 1)
        gradients.append(gradient[:, k])
    return torch.stack(predictions).detach().double().cpu(), torch.stack(gradients).double().cpu()


def alignment(
    model,
    prompts: RegressionPrompts,
    ks: Sequence[int],
    weights: Mapping[str, torch.Tensor],
) -> dict[str, dict]:
    """von Oswald et al.'s "preds diff" and "model cos" between the model (per layer) and every learner.

    `weights[learner]` are the learner's fitted weights on `prompts` for every k (`learner_weights`). Returns, per
    learner, per k and per layer, and the last layer averaged over `ks` (the headline numbers)."""
    result: dict[str, dict] = {name: {"per_k": {}} for name in weights}
    for k in ks:
        predictions, sensitivities = layer_outputs(model, prompts, k)
        for name, w in weights.items():
            learner_prediction = (w[:, k] * prompts.xs[:, k].double()).sum(-1)
            result[name]["per_k"][k] = [
                {
                    "preds_diff": preds_diff(predictions[layer], learner_prediction),
                    "sensitivity_cosine": sensitivity_cosine(sensitivities[layer], w[:, k]),
                }
                for layer in range(predictions.shape[0])
            ]
    for name in weights:
        per_k = result[name]["per_k"]
        n_layers = len(next(iter(per_k.values())))
        result[name]["per_layer"] = [
            {
                measure: sum(per_k[k][layer][measure] for k in ks) / len(ks)
                for measure in ("preds_diff", "sensitivity_cosine")
            }
            for layer in range(n_layers)
        ]
        result[name]["preds_diff"] = result[name]["per_layer"][-1]["preds_diff"]
        result[name]["sensitivity_cosine"] = result[name]["per_layer"][-1]["sensitivity_cosine"]
    return result


@torch.no_grad()
def icl_update(model, prompts: RegressionPrompts, k: int, probes: torch.Tensor) -> torch.Tensor:
    """The change in-context learning makes to the model's predictions at the probe queries: prediction after the
    k demonstrations minus the zero-shot prediction (no demonstrations). probes (n, M, d) -> (n, M)."""
    dtype, device = _model_dtype(model), _model_device(model)
    n, n_probe, n_dims = probes.shape
    flat_probes = probes.reshape(n * n_probe, 1, n_dims).to(device, dtype)
    zero = flat_probes.new_zeros(n * n_probe, 1)
    context_x = prompts.xs[:, :k].to(device, dtype).repeat_interleave(n_probe, dim=0)
    context_y = prompts.ys[:, :k].to(device, dtype).repeat_interleave(n_probe, dim=0)
    icl, zsl = [], []
    for start in range(0, n * n_probe, _BATCH * 4):
        part = slice(start, start + _BATCH * 4)
        xs = torch.cat([context_x[part], flat_probes[part]], dim=1)
        ys = torch.cat([context_y[part], zero[part]], dim=1)
        icl.append(_query_predictions(model, xs, ys)[-1])
        zsl.append(_query_predictions(model, flat_probes[part], zero[part])[-1])
    return (torch.cat(icl) - torch.cat(zsl)).double().cpu().reshape(n, n_probe)


def finetuning_updates(
    prompts: RegressionPrompts,
    k: int,
    probes: torch.Tensor,
    lr: float,
    steps: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The changes explicit finetuning on the same k demonstrations makes to a linear regressor's predictions at
    the probes (from w = 0, whose predictions are 0), for the FT variants the ladder reports:

    * ``gd``: `steps` GD steps on the demonstrations with the learning rate tuned on held-out prompts;
    * ``gd_shuffled_labels``: the same on the demonstrations with their y's shuffled within the prompt (a null: FT
      on wrong labels);
    * ``ols``: training to convergence (min-norm least squares)."""
    xs, ys = prompts.xs[:, :k].double(), prompts.ys[:, :k].double()
    permutation = torch.argsort(torch.rand(ys.shape, generator=generator, dtype=torch.float64), dim=1)
    shuffled = torch.gather(ys, 1, permutation)
    weights = {
        "gd": gradient_descent(xs, ys, lr, steps),
        "gd_shuffled_labels": gradient_descent(xs, shuffled, lr, steps),
        "ols": ols(xs, ys),
    }
    return {name: torch.einsum("nmd,nd->nm", probes.double(), w) for name, w in weights.items()}


def update_cosines(
    model,
    prompts: RegressionPrompts,
    task: LinearRegressionTask,
    ks: Sequence[int],
    lrs: Mapping[int, float],
    steps: int,
    n_probe: int,
    seed: int,
) -> dict[str, dict]:
    """SimAOU-style cos(ICL update, FT update) per FT variant (`finetuning_updates`), per k and averaged over ks."""
    generator = seed_generator(seed)
    result: dict[str, dict] = {}
    for k in ks:
        probes = task.sample_inputs((len(prompts), n_probe), generator)
        icl = icl_update(model, prompts, k, probes)
        for name, ft in finetuning_updates(prompts, k, probes, lrs[k], steps, generator).items():
            value = update_cosine(icl, torch.zeros_like(icl), ft, torch.zeros_like(ft)).mean().item()
            result.setdefault(name, {"per_k": {}})["per_k"][k] = value
    for name, entry in result.items():
        entry["mean"] = update_cosine_mean(name, entry["per_k"])
    return result


def update_cosine_mean(name: str, per_k: Mapping) -> float:
    """Mean over k of an update cosine. The shuffled-label null counts only k >= 2: one demonstration has nothing
    to shuffle, so there the null would equal real FT."""
    values = [value for k, value in per_k.items() if name != "gd_shuffled_labels" or int(k) >= 2]
    return sum(values) / len(values) if values else float("nan")


def fitted_weights(
    learners: Mapping[str, Learner], tuned: Mapping[str, Mapping[int, dict]], prompts: RegressionPrompts
) -> dict[str, torch.Tensor]:
    return {name: learner_weights(learner, prompts, tuned[name]) for name, learner in learners.items()}


def learner_curves(
    weights: Mapping[str, torch.Tensor], prompts: RegressionPrompts, n_dims: int
) -> dict[str, torch.Tensor]:
    """Normalised squared error of every learner at every k: name -> (n_prompts, P)."""
    return {
        name: normalized_squared_error(learner_predictions(w, prompts), prompts.ys, n_dims)
        for name, w in weights.items()
    }


@torch.no_grad()
def mqar_accuracy(
    model, task: MQARTask, kv_counts: Sequence[int], n_prompts: int, seed: int, reassigned: dict | None = None
) -> dict[int, float]:
    """Fraction of queried keys answered with their value (argmax at the query position), per number of pairs.

    With a `reassigned` dict and `task.reassign`, also fills `reassigned[count]` with the accuracy on the queries
    of the re-assigned keys alone (whose answer is the latest value)."""
    device = _model_device(model)
    accuracy = {}
    for count in kv_counts:
        input_ids, labels = task.sample(n_prompts, seed_generator(seed + count), num_kv_pairs=count)
        late = task.reassigned_positions(input_ids)
        correct = total = late_correct = late_total = 0
        for start in range(0, n_prompts, _BATCH):
            ids, target = input_ids[start : start + _BATCH], labels[start : start + _BATCH]
            logits = model(input_ids=ids.to(device), use_cache=False).logits[:, :-1].cpu()
            answer = target[:, 1:]
            mask = answer != IGNORE_INDEX
            hits = logits.argmax(-1) == answer
            correct += hits[mask].sum().item()
            total += mask.sum().item()
            late_mask = late[start : start + _BATCH, 1:]
            late_correct += hits[late_mask].sum().item()
            late_total += late_mask.sum().item()
        accuracy[count] = correct / total
        if reassigned is not None and late_total:
            reassigned[count] = late_correct / late_total
    return accuracy
