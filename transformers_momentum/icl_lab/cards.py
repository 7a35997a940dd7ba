"""Checkpoint folders with model cards for the lab's models: the best momentum arm and its eta = 0 twin per task."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..models.icl_regression import MomentumGPTForInContextRegression
from ..models.momentum_gpt import MomentumGPTForCausalLM
from .config import LEARNABLE
from .report import _eta_label, _fmt, _interval, plot_error_curves

PAPER = (
    "Dai et al., 2023, *Why Can GPT Learn In-Context? Language Models Implicitly Perform Gradient Descent as "
    "Meta-Optimizers* (ACL Findings)"
)
_TASK_TEXT = {
    "linear-regression": (
        "in-context linear regression (Garg et al., 2022 prompt format): a prompt `(x_1, y_1, ..., x_k, y_k, x_q)` "
        "with `y = w.x`, a fresh `w ~ N(0, I)` per prompt; the model predicts y at every x from the pairs before it"
    ),
    "mqar": (
        "multi-query associative recall (Arora et al., 2023): key-value pairs, then every key again; the model "
        "answers each key with its value"
    ),
}


def _arm_score(results: Mapping, eta: str) -> float:
    """Headline score of an arm, higher is better (minus the mean error, or the mean accuracy)."""
    if "accuracy" in results:
        return results["accuracy"][eta]["mean_accuracy"]["mean"]
    return -results["curves"][eta]["mean_error"]["mean"]


def best_momentum_arm(results: Mapping) -> str:
    arms = [eta for eta in results["curves"] if eta != "0"]
    if not arms:
        raise ValueError("no momentum arm (eta > 0 or learnable) in these results")
    return max(arms, key=lambda eta: _arm_score(results, eta))


def checkpoint_name(task: str, eta: str) -> str:
    """``icl-<task>-eta<η>``, e.g. ``icl-regression-eta0.25`` or ``icl-mqar-learnable-eta``."""
    task_part = "regression" if task == "linear-regression" else "mqar"
    arm = "learnable-eta" if eta == LEARNABLE else f"eta{eta}"
    return f"icl-{task_part}-{arm}"


def _comparison_lines(results: Mapping, eta: str, twin: str) -> list[str]:
    momentum = results["momentum"]
    lines = [f"Measure: {momentum['measure']}.", ""]
    difference = momentum["paired_vs_eta0"].get(eta if eta != "0" else twin)
    if difference:
        lines.append(
            f"Paired difference ({_eta_label(eta if eta != '0' else twin)}) − (η = 0): {_interval(difference, 4)} "
            f"over {difference['n']} seeds: **{difference['verdict']}**."
        )
    return lines


def _curve_table(results: Mapping, etas: list[str]) -> list[str]:
    curves = results["curves"]
    ks = curves[etas[0]]["k"]
    is_mqar = "accuracy" in results
    lines = [
        "| "
        + ("pairs n" if is_mqar else "k")
        + " | "
        + " | ".join(_eta_label(e) for e in etas)
        + " |"
        + "".join(f" {name} |" for name in results["baselines"]),
        "|---" * (len(etas) + 1 + len(results["baselines"])) + "|",
    ]
    for index, k in enumerate(ks):
        cells = [
            f"{_fmt(curves[e]['mean'][index])} [{_fmt(curves[e]['low'][index])}, {_fmt(curves[e]['high'][index])}]"
            for e in etas
        ]
        base = [_fmt(b["error"][index]) for b in results["baselines"].values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |" + "".join(f" {v} |" for v in base))
    return lines


def render_card(results: Mapping, eta: str, twin: str, name: str, twin_name: str, seed: int) -> str:
    config = results["config"]
    task = config["task"]
    is_mqar = task == "mqar"
    auto_class = "AutoModelForCausalLM" if is_mqar else "AutoModel"
    quantity = (
        "error rate (1 − accuracy) per number of key-value pairs" if is_mqar else "squared error / d per k"
    )
    front = [
        "---",
        "library_name: transformers",
        "license: apache-2.0",
        "tags:",
        "- momentum-attention",
        "- in-context-learning",
        "- transformers-momentum",
        "- custom_code",
        f"- {'mqar' if is_mqar else 'in-context-regression'}",
        "---",
        "",
    ]
    if is_mqar:
        setting = f"vocabulary {config['vocab_size']}, up to {config['max_kv_pairs']} key-value pairs"
        n_keys = (config["vocab_size"] - 1) // 2  # ids 1..n_keys are keys, the rest values (0 pads)
        v1, v2 = n_keys + 3, n_keys + 7
        usage_input = f"input_ids = torch.tensor([[1, {v1}, 2, {v2}, 2, {v2}, 1]])  # k1 v1 k2 v2 | k2 v2 k1 -> v1 = {v1}?"
        usage_call = "model(input_ids=input_ids).logits[0, -1].argmax()"
    else:
        setting = (
            f"d = {config['n_dims']}, up to k = {config['max_examples']} examples, x ~ {config['x_distribution']}, "
            f"label noise {config['noise_std']}"
        )
        usage_input = f"xs, w = torch.randn(1, {config['max_examples'] + 1}, {config['n_dims']}), torch.randn({config['n_dims']})"
        usage_call = "model(xs, xs @ w).predictions  # prediction at every x from the pairs before it"
    plugin_module = "transformers_momentum" if is_mqar else "transformers_momentum.models.icl_regression"
    momentum_arms = ", ".join(_eta_label(e) for e in config["eta_list"] if e != "0")
    lines = front + [
        f"# {name}",
        "",
        f"A {config['num_layers']}-layer MomentumGPT (width {config['hidden_size']}, {config['num_heads']} heads) "
        f"trained from scratch on {_TASK_TEXT[task]} ({setting}), with momentum attention on the value vectors "
        f"({PAPER}, §5): `out_t = softmax-attention_t + sum_(i<t) eta^(t-i) v_i`, **{_eta_label(eta)}**.",
        "",
        (
            f"This arm scored best of the momentum arms ({momentum_arms}) on the headline measure below. "
            if eta != "0"
            else f"This is the η = 0 twin of the best momentum arm ({_eta_label(twin)}). "
        )
        + f"Its matched twin is [`{twin_name}`](../{twin_name}): same architecture, data stream, steps "
        f"({config['steps']} × batch {config['batch_size']}), seeds, differing only in η. These weights are seed "
        f"{seed}; the tables report all seeds {config['seed_list']} of both arms, trained by "
        "`transformers-momentum icl-lab` (docs/icl_lab.md in the repository).",
        "",
        f"## In-context learning curves ({quantity}; mean [95% CI] over seeds)",
        "",
        *_curve_table(results, [eta, twin] if eta != "0" else [twin, eta]),
        "",
        "![curves](error_vs_k.png)",
        "",
        "## Comparison with η = 0",
        "",
        *_comparison_lines(results, eta, twin),
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        f"import {plugin_module}  # noqa: F401  (registers the model with the Auto classes)",
        f"from transformers import {auto_class}",
        "",
        f'model = {auto_class}.from_pretrained("model_cards/{name}")  # or trust_remote_code=True without the plugin',
        usage_input,
        usage_call,
        "```",
        "",
        "The folder carries its modeling code (`auto_map`), so `trust_remote_code=True` loads it where the plugin "
        "is not installed (transformers >= 5.23).",
    ]
    return "\n".join(lines) + "\n"


def export_checkpoints(run_out: str | Path, cards_dir: str | Path) -> list[Path]:
    """Copy the best momentum arm's first-seed model and its eta = 0 twin of the lab run in `run_out` into
    `cards_dir/<name>/`, each with a generated card, its results and its curves."""
    results = json.loads((Path(run_out) / "results.json").read_text())
    config = results["config"]
    if "0" not in results["curves"]:
        raise ValueError("exporting checkpoints needs the eta = 0 arm (the twin)")
    best = best_momentum_arm(results)
    seed = config["seed_list"][0]
    names = {best: checkpoint_name(config["task"], best), "0": checkpoint_name(config["task"], "0")}
    written = []
    for eta, twin in ((best, "0"), ("0", best)):
        source = Path(run_out) / "runs" / config["task"] / f"eta={eta}" / f"seed={seed}" / "model"
        target = Path(cards_dir) / names[eta]
        if target.exists():
            shutil.rmtree(target)
        # Load and save rather than copy, so the folder carries today's modeling code for remote-code users.
        model_class = (
            MomentumGPTForCausalLM if config["task"] == "mqar" else MomentumGPTForInContextRegression
        )
        model_class.from_pretrained(source).save_pretrained(target)
        for path in target.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; a published folder is world-readable
        (target / "README.md").write_text(render_card(results, eta, twin, names[eta], names[twin], seed))
        summary = {
            "task": config["task"],
            "eta": eta,
            "seed": seed,
            "curves": {e: results["curves"][e] for e in (eta, twin)},
            "baselines": {n: {"error": b["error"]} for n, b in results["baselines"].items()},
            "momentum": results["momentum"],
            "config": {k: v for k, v in config.items() if not k.startswith("machine")},
        }
        if "accuracy" in results:
            summary["accuracy"] = {e: results["accuracy"][e] for e in (eta, twin)}
        (target / "results.json").write_text(json.dumps(summary, indent=1))
        plot_error_curves(
            {**results, "curves": {e: results["curves"][e] for e in (eta, twin)}}, target / "error_vs_k.png"
        )
        written.append(target)
    return written
