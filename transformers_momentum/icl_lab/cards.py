"""Checkpoint folders with model cards for the lab's models: per task, the η = 0 baseline and the best momentum arm.

Cards come from `huggingface_hub.ModelCard.from_template` over ``templates/model_card.md`` (the path the
pretraining checkpoints' cards take), with `model-index` results: the error at k = d and k = 2d for regression,
the accuracy with the most key-value pairs (and the mean over 1..n) for MQAR. Every number comes from the run's
`LabResults` (results.json), nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import LEARNABLE
from .plots import eta_label, plot_error_curves
from .report import fmt, gate_line, interval
from .results import LabResults, to_jsonable
from .runs import Job, RunStore

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
_TASK_TEXT = {
    "linear-regression": (
        "in-context linear regression (Garg et al., 2022 prompt format): a prompt `(x_1, y_1, ..., x_k, y_k, x_q)` "
        "with `y = w.x`, a fresh `w ~ N(0, I)` per prompt; the model predicts y at every x from the pairs before it"
    ),
    "mqar": (
        "multi-query associative recall (Arora et al., 2024, Zoology): key-value pairs, then every key again; the "
        "model answers each key with its value"
    ),
}


def best_momentum_arm(results: LabResults) -> str:
    arms = [eta for eta in results.arms if eta != "0"]
    if not arms:
        raise ValueError("no momentum arm (eta > 0 or learnable) in these results")
    return min(arms, key=lambda eta: results.arms[eta].headline.mean)


def checkpoint_name(task: str, eta: str) -> str:
    """``icl-<task>-eta<η>``, e.g. ``icl-regression-eta0.5`` or ``icl-mqar-learnable-eta``."""
    task_part = "regression" if task == "linear-regression" else "mqar"
    arm = "learnable-eta" if eta == LEARNABLE else f"eta{eta}"
    return f"icl-{task_part}-{arm}"


def _setting(results: LabResults) -> str:
    config = results.config
    if results.task == "mqar":
        return f"vocabulary {config['vocab_size']}, up to {config['max_kv_pairs']} key-value pairs"
    text = (
        f"d = {config['n_dims']}, up to k = {config['max_examples']} examples, x ~ {config['x_distribution']}, "
        f"label noise {config['noise_std']}"
    )
    if config.get("drift_std"):
        text += f", w drifting with step {config['drift_std']}"
    return text


def _eval_results(results: LabResults, eta: str, seed: str):
    from huggingface_hub import EvalResult

    run = results.runs[eta][seed]
    config = results.config
    dataset = f"synthetic-{results.task}"
    if results.task == "mqar":
        n = config["max_kv_pairs"]
        return [
            EvalResult(
                task_type="multi-query-associative-recall",
                task_name="Multi-query associative recall (in context)",
                dataset_type=dataset,
                dataset_name=f"MQAR, vocabulary {config['vocab_size']}, {n} key-value pairs (generated, seed 1000003)",
                metric_type="accuracy",
                metric_name=f"accuracy with {n} key-value pairs",
                metric_value=round(1 - run.curve[-1], 4),
            ),
            EvalResult(
                task_type="multi-query-associative-recall",
                task_name="Multi-query associative recall (in context)",
                dataset_type=dataset,
                dataset_name=f"MQAR, vocabulary {config['vocab_size']}, 1..{n} key-value pairs (generated)",
                metric_type="accuracy",
                metric_name=f"mean accuracy over 1..{n} key-value pairs",
                metric_value=round(1 - run.headline, 4),
            ),
        ]
    names = {config["n_dims"]: "k = d", 2 * config["n_dims"]: "k = 2d"}
    return [
        EvalResult(
            task_type="in-context-regression",
            task_name="In-context linear regression",
            dataset_type=dataset,
            dataset_name=f"linear regression, {_setting(results)} (generated, seed 1000003)",
            metric_type="mse",
            metric_name=f"squared error / d at {names.get(k, f'k = {k}')} (k = {k})",
            metric_value=round(run.curve[k], 5),
        )
        for k in results.headline_ks
    ]


def _rows(results: LabResults, etas: list[str]):
    curves = [results.arms[eta].curve for eta in etas]
    ks = curves[0].k
    if results.task == "mqar":
        references = {name: values for name, values in results.baselines.items()}
    else:
        references = {
            name: results.learners[name].curve.mean
            for name in ("ols", "ridge", "gd")
            if name in results.learners
        }
    rows = []
    for index, k in enumerate(ks):
        cells = [interval(c.at(k), 4) for c in curves]
        rows.append((k, cells, [fmt(values[index], 4) for values in references.values()]))
    return rows, list(references)


def _ood_rows(results: LabResults, etas: list[str]):
    rows = []
    for variant in results.ood_variants:
        curves = [results.arms[eta].ood.get(variant) for eta in etas]
        if any(c is None for c in curves):
            continue
        for k in sorted(set(results.headline_ks) | {curves[0].k[-1]}):
            ols = results.learners["ols"].ood[variant].mean[k] if "ols" in results.learners else None
            rows.append((variant, k, [interval(c.at(k), 4) for c in curves], fmt(ols, 4)))
    return rows


def _verdict_text(results: LabResults, momentum_eta: str) -> str:
    momentum = results.momentum
    comparison = momentum.comparisons.get(momentum_eta)
    if comparison is None:
        return "No comparison."
    numbers = (
        f"{momentum.measure}, {eta_label(momentum_eta)} − η = 0, paired over {comparison.n} seeds: "
        f"{comparison.mean:+.4f} [{comparison.low:+.4f}, {comparison.high:+.4f}] (95% t-interval), median "
        f"{comparison.median:+.4f} [{comparison.median_low:+.4f}, {comparison.median_high:+.4f}] (bootstrap); "
        f"equivalence margin ±{momentum.margin:.4f} ({momentum.margin_rule}), TOST p {comparison.p_tost_holm:.3f} "
        f"and difference p {comparison.p_holm:.3f} after Holm over the arms"
    )
    if not momentum.verdicts_given:
        return f"**No verdict: {momentum.withheld_reason}.** Descriptive only: {numbers}."
    return f"**{comparison.verdict}.** {numbers}."


def render_card(results: LabResults, eta: str, twin: str, seed: str, history: str | None = None):
    """The `huggingface_hub.ModelCard` of arm `eta`'s seed-`seed` checkpoint (twin: the other arm)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = results.config
    is_mqar = results.task == "mqar"
    name, twin_name = checkpoint_name(results.task, eta), checkpoint_name(results.task, twin)
    momentum_eta = eta if eta != "0" else twin
    etas = [eta, twin] if eta == "0" else [twin, eta]
    rows, reference_names = _rows(results, etas)
    gate = results.gate
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        tags=["momentum-attention", "in-context-learning", "transformers-momentum", "custom_code"]
        + (["mqar"] if is_mqar else ["in-context-regression"])
        + (["baseline"] if eta == "0" else []),
        model_name=name,
        eval_results=_eval_results(results, eta, seed),
    )
    if is_mqar:
        n_keys = (config["vocab_size"] - 1) // 2  # ids 1..n_keys are keys, the rest values (0 pads)
        v1, v2 = n_keys + 3, n_keys + 7
        usage_input = (
            f"input_ids = torch.tensor([[1, {v1}, 2, {v2}, 2, {v2}, 1]])  # k1 v1 k2 v2 | k2 v2 k1 -> v1?"
        )
        usage_call = "model(input_ids=input_ids).logits[0, -1].argmax()"
    else:
        points, d = config["max_examples"] + 1, config["n_dims"]
        usage_input = f"xs, w = torch.randn(1, {points}, {d}), torch.randn({d})"
        usage_call = "model(xs, xs @ w).predictions  # the prediction at every x from the pairs before it"
    role = (
        f"This is the best momentum arm of {', '.join(eta_label(e) for e in results.arms if e != '0')} on the "
        "headline measure."
        if eta != "0"
        else f"This is the η = 0 baseline (the twin of the best momentum arm, {eta_label(twin)})."
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        name=name,
        twin_name=twin_name,
        num_layers=config["num_layers"],
        hidden_size=config["hidden_size"],
        num_heads=config["num_heads"],
        task_text=_TASK_TEXT[results.task],
        setting=_setting(results),
        arm_label=eta_label(eta),
        role=role,
        steps=config["steps"],
        batch_size=config["batch_size"],
        learning_rate=f"{results.arms[eta].learning_rate:g}",
        seed=seed,
        seeds=config["seed_list"],
        gate_status=gate_line(gate.message) + ".",
        gate_criterion=gate.criterion,
        gate_anchor=gate.anchor,
        verdict_text=_verdict_text(results, momentum_eta),
        quantity="error rate (1 − accuracy) per number of key-value pairs"
        if is_mqar
        else "squared error / d per number of examples k",
        k_name="pairs n" if is_mqar else "k",
        arm_labels=[eta_label(e) for e in etas],
        reference_names=reference_names,
        rows=rows,
        ood_rows=_ood_rows(results, etas),
        plugin_module="transformers_momentum" if is_mqar else "transformers_momentum.models.icl_regression",
        auto_class="AutoModelForCausalLM" if is_mqar else "AutoModel",
        usage_input=usage_input,
        usage_call=usage_call,
        history=history,
    )


def export_checkpoints(run_out: str | Path, cards_dir: str | Path, history: str | None = None) -> list[Path]:
    """Copy the first seed's model of the η = 0 arm and of the best momentum arm of the lab run in `run_out` into
    `cards_dir/<name>/`, each with its card, its results (`results.json`, the lab's schema) and its curves."""
    import shutil

    from ..models.icl_regression import MomentumGPTForInContextRegression
    from ..models.momentum_gpt import MomentumGPTForCausalLM

    results = LabResults.load(Path(run_out) / "results.json")
    if "0" not in results.arms:
        raise ValueError("exporting checkpoints needs the eta = 0 arm (the twin)")
    best = best_momentum_arm(results)
    seed = str(results.config["seed_list"][0])
    store = RunStore(run_out)
    model_class = MomentumGPTForCausalLM if results.task == "mqar" else MomentumGPTForInContextRegression
    written = []
    for eta, twin in ((best, "0"), ("0", best)):
        job = Job(results.task, eta, results.arms[eta].learning_rate, int(seed))
        target = Path(cards_dir) / checkpoint_name(results.task, eta)
        if target.exists():
            shutil.rmtree(target)
        # Load and save rather than copy, so the folder carries today's modeling code for remote-code users.
        model_class.from_pretrained(store.folder(job) / "model").save_pretrained(target)
        for path in target.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; a published folder is world-readable
        render_card(results, eta, twin, seed, history).save(target / "README.md")
        pair = {e: results.arms[e] for e in (eta, twin)}
        summary = {
            "task": results.task,
            "eta": eta,
            "seed": seed,
            "gate": results.gate,
            "momentum": results.momentum,
            "arms": pair,
            "config": results.config,
        }
        (target / "results.json").write_text(json.dumps(to_jsonable(summary), indent=1))
        subset = LabResults.load(Path(run_out) / "results.json")
        subset.arms = pair
        plot_error_curves(subset, target / "error_vs_k.png")
        written.append(target)
    return written


__all__ = ["TEMPLATE", "best_momentum_arm", "checkpoint_name", "export_checkpoints", "render_card"]
