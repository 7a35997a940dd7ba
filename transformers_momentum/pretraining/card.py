"""Model cards for pretrained checkpoints: loss curves, seed tables and the Hub YAML, from training summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot_loss_curves(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Plot training loss and validation loss against tokens seen for each run in ``runs`` (label -> summary)."""
    import matplotlib

    matplotlib.use("Agg")  # no display here and none needed: the plot goes into the card
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # One colour per eta (so the arms are told apart at a glance), seeds of an arm share it.
    etas = sorted(
        {float(summary["model_config"].get("momentum_eta", 0)) for summary in runs.values()}, reverse=True
    )
    for label, summary in runs.items():
        tokens_per_step = summary["tokens_per_step"]
        history = summary["log_history"]
        train = [(h["step"] * tokens_per_step / 1e6, h["loss"]) for h in history if "loss" in h]
        evals = [(h["step"] * tokens_per_step / 1e6, h["eval_loss"]) for h in history if "eval_loss" in h]
        eta = float(summary["model_config"].get("momentum_eta", 0))
        color = colors[etas.index(eta) % len(colors)]
        linestyle = "-" if eta else "--"
        if train:
            ax_train.plot(
                *zip(*train), color=color, linestyle=linestyle, label=label, linewidth=0.8, alpha=0.8
            )
        if evals:
            ax_eval.plot(
                *zip(*evals), color=color, linestyle=linestyle, marker="o", markersize=3, label=label
            )
    for ax, title in ((ax_train, "training loss"), (ax_eval, "validation loss (block length)")):
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if ax_eval.get_legend_handles_labels()[0]:
        ax_eval.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


# --------------------------------------------------------------------------------------------------------------
# Checkpoint folders with model cards
# --------------------------------------------------------------------------------------------------------------

#: Files of a run directory that belong in the published folder (the Trainer's resume state does not).
CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "configuration_momentum_gpt.py",
    "modeling_momentum_gpt.py",
)
HUB_ORGANIZATION = "transformers-momentum"
PAPER = "Dai et al., 2023, *Why Can GPT Learn In-Context? Language Models Implicitly Perform Gradient Descent as Meta-Optimizers* (ACL Findings), §5"


def human_count(value: int) -> str:
    """fla-style size string: 1_383_168 -> '1.4M', 1_638_400 -> '1.6M', 350_000_000 -> '350M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            number = value / scale
            text = f"{number:.1f}" if number < 10 else f"{number:.0f}"
            return text.removesuffix(".0") + unit
    return str(value)


def checkpoint_name(arch: str, summary: Mapping[str, Any]) -> str:
    """``<arch>-<size>-<tokens>``: parameters (tied embeddings once) and training tokens seen."""
    return f"{arch}-{human_count(summary['parameters']['total'])}-{human_count(summary['train_tokens_seen'])}"


def _lengths(summary: Mapping[str, Any]) -> list[str]:
    return list(summary["validation_perplexity"])


def _arm_stats(summaries: list[Mapping[str, Any]]) -> dict[str, tuple[float, float] | None]:
    from .evaluation import mean_and_t_interval

    stats: dict[str, tuple[float, float] | None] = {}
    for length in _lengths(summaries[0]):
        values = [s["validation_perplexity"][length] for s in summaries]
        stats[length] = None if any(v is None for v in values) else mean_and_t_interval(values)
    return stats


def _paired_difference(
    momentum: list[Mapping[str, Any]], vanilla: list[Mapping[str, Any]]
) -> dict[str, tuple[float, float, int] | None]:
    """Per-seed (momentum - vanilla) perplexity, mean and t-interval over the seeds both arms have."""
    from .evaluation import mean_and_t_interval

    by_seed = {s["arguments"]["seed"]: s for s in vanilla}
    pairs = [(m, by_seed[m["arguments"]["seed"]]) for m in momentum if m["arguments"]["seed"] in by_seed]
    out: dict[str, tuple[float, float, int] | None] = {}
    for length in _lengths(momentum[0]):
        diffs = [
            m["validation_perplexity"][length] - v["validation_perplexity"][length]
            for m, v in pairs
            if m["validation_perplexity"][length] is not None
            and v["validation_perplexity"][length] is not None
        ]
        out[length] = (*mean_and_t_interval(diffs), len(diffs)) if diffs else None
    return out


def _per_seed_differences(arms: Mapping[str, list[Mapping[str, Any]]], length: str) -> str:
    vanilla = {s["arguments"]["seed"]: s["validation_perplexity"][length] for s in arms["vanilla"]}
    pairs = sorted(
        (s["arguments"]["seed"], s["validation_perplexity"][length] - vanilla[s["arguments"]["seed"]])
        for s in arms["momentum"]
        if s["arguments"]["seed"] in vanilla
    )
    if not pairs:
        return ""
    listed = ", ".join(f"{diff:+.1f} (seed {seed})" for seed, diff in pairs)
    lower = sum(diff < 0 for _, diff in pairs)
    return f"Per seed, momentum - vanilla = {listed}: momentum is lower in {lower} of {len(pairs)} seeds."


def _stat(stat: tuple[float, float] | None) -> str:
    return "n/a (beyond the position table)" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def verdict(difference: Mapping[str, tuple[float, float, int] | None], block_length: str) -> str:
    """A plain-language reading of the paired momentum-minus-vanilla perplexity difference."""
    item = difference.get(block_length)
    if item is None:
        return "No paired seeds: no verdict."
    mean, half, count = item
    if count < 2:
        return f"Only {count} paired seed: no verdict (momentum - vanilla = {mean:+.2f} perplexity)."
    if mean + half < 0:
        return (
            f"Momentum helped at this scale: validation perplexity at length {block_length} is lower by "
            f"{-mean:.2f} (95% CI of the paired difference {mean - half:+.2f} to {mean + half:+.2f}, {count} seeds)."
        )
    if mean - half > 0:
        return (
            f"Momentum hurt at this scale: validation perplexity at length {block_length} is higher by {mean:.2f} "
            f"(95% CI of the paired difference {mean - half:+.2f} to {mean + half:+.2f}, {count} seeds)."
        )
    return (
        f"No significant difference at this scale: momentum - vanilla = {mean:+.2f} perplexity at length "
        f"{block_length} (95% CI {mean - half:+.2f} to {mean + half:+.2f}, {count} seeds; the interval contains 0)."
    )


def _training_table(summary: Mapping[str, Any], arms: Mapping[str, list[Mapping[str, Any]]]) -> str:
    args, config = summary["arguments"], summary["model_config"]
    wall = [s["train_seconds"] for runs in arms.values() for s in runs]
    env = summary["environment"]
    rows = [
        (
            "Architecture",
            "GPT-2-style pre-LN decoder, learned absolute positions, tied embeddings (MomentumGPT)",
        ),
        (
            "d_model / FFN / heads / layers",
            f"{config['hidden_size']} / {config['intermediate_size']} / "
            f"{config['num_attention_heads']} / {config['num_hidden_layers']}",
        ),
        (
            "Parameters",
            f"{summary['parameters']['total']:,} ({summary['parameters']['non_embedding']:,} non-embedding)",
        ),
        (
            "Vocabulary",
            f"{config['vocab_size']:,} (byte-level BPE trained on the first "
            f"{args['tokenizer_train_chars']:,} characters of the train split)",
        ),
        (
            "Sequence length",
            f"{args['block_size']} (packed blocks; documents separated by the end-of-text token, id 0)",
        ),
        (
            "Batch",
            f"{args['per_device_train_batch_size'] * args['gradient_accumulation_steps'] * summary['world_size']} "
            f"sequences = {summary['tokens_per_step']:,} tokens",
        ),
        (
            "Optimizer",
            f"AdamW, betas ({args['adam_beta1']}, {args['adam_beta2']}), eps {args['adam_epsilon']}, "
            f"weight decay {args['weight_decay']}",
        ),
        ("Peak learning rate", f"{args['learning_rate']}"),
        (
            "Schedule",
            f"{args['lr_scheduler_type']} decay (power 1, to 1e-7) after "
            f"{summary.get('warmup_steps', max(1, round(args['warmup_ratio'] * args['max_steps'])))} "
            f"warm-up steps",
        ),
        (
            "Total steps / tokens",
            f"{summary['global_step']:,} / {summary['train_tokens_seen']:,} "
            f"(of {summary['train_tokens_available']:,} distinct training tokens: less than one epoch)",
        ),
        ("Gradient clipping", f"{args['max_grad_norm']}"),
        ("Dropout", f"{args['dropout']}"),
        (
            "Momentum eta",
            f"{config['momentum_eta']}" + (" (learnable)" if config.get("learnable_eta") else " (fixed)"),
        ),
        (
            "Hardware",
            f"1 CPU thread ({env['device']}), torch {env['torch']}, transformers {env['transformers']}",
        ),
        (
            "Wall time per run",
            f"{min(wall):.0f}-{max(wall):.0f} s of training on 1 thread; the spread is other jobs' load on a shared "
            f"2-core machine (fastest run: {summary['train_tokens_seen'] / min(wall):,.0f} tokens/s)",
        ),
    ]
    return "| Setting | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def render_card(
    *,
    name: str,
    twin_name: str,
    arms: Mapping[str, list[Mapping[str, Any]]],
    own_arm: str,
    sweep: Mapping[float, Mapping[str, Any]],
    dataset_description: str,
    license: str,
    command: str,
    icl_results: Mapping[str, Any] | None = None,
):
    """The `huggingface_hub.ModelCard` of one arm's published checkpoint (seed 0 of that arm)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    published = next(s for s in arms[own_arm] if s["arguments"]["seed"] == 0)
    lengths = _lengths(published)
    block = str(published["arguments"]["block_size"])
    stats = {arm: _arm_stats(runs) for arm, runs in arms.items()}
    difference = _paired_difference(arms["momentum"], arms["vanilla"])
    eta = published["model_config"]["momentum_eta"]
    repo = f"{HUB_ORGANIZATION}/{name}"
    twin_repo = f"{HUB_ORGANIZATION}/{twin_name}"
    eval_results = [
        EvalResult(
            task_type="text-generation",
            task_name="Language modeling",
            dataset_type=dataset_description,
            dataset_name=f"{dataset_description} (held-out validation split)",
            dataset_split="validation",
            metric_type="perplexity",
            metric_name=f"Perplexity (input length {length})",
            metric_value=round(published["validation_perplexity"][length], 3),
        )
        for length in lengths
        if published["validation_perplexity"][length] is not None
    ]
    data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["momentum-attention", "momentum_gpt", "transformers-momentum", "custom_code", "text-generation"]
        + (["baseline"] if own_arm == "vanilla" else []),
        datasets=[dataset_description],
        model_name=name,
        eval_results=eval_results,
        twin_model=twin_repo,
    )

    arm_label = {
        "momentum": f"MomentumGPT (eta = {arms['momentum'][0]['model_config']['momentum_eta']})",
        "vanilla": "Vanilla (eta = 0)",
    }
    header = "| Model | seeds | " + " | ".join(f"Valid {length}" for length in lengths) + " |"
    rule = "|---|---|" + "---|" * len(lengths)
    result_rows = [
        f"| {arm_label[arm]} | {len(runs)} | "
        + " | ".join(_stat(stats[arm][length]) for length in lengths)
        + " |"
        for arm, runs in arms.items()
    ]
    diff_row = (
        "| momentum - vanilla (paired by seed) | "
        + str(max((d[2] for d in difference.values() if d), default=0))
        + " | "
        + " | ".join(
            "n/a"
            if difference[length] is None
            else f"{difference[length][0]:+.2f} ± {difference[length][1]:.2f}"
            for length in lengths
        )
        + " |"
    )

    seed_rows = []
    for arm, runs in arms.items():
        for s in sorted(runs, key=lambda r: r["arguments"]["seed"]):
            ppl = " | ".join(_fmt(s["validation_perplexity"][length]) for length in lengths)
            seed_rows.append(
                f"| {arm_label[arm]} | {s['arguments']['seed']} | {ppl} | {s['final_train_loss']:.3f} | "
                f"{s['train_seconds']:.0f} |"
            )
    seed_table = (
        "| Arm | Seed | "
        + " | ".join(f"PPL {length}" for length in lengths)
        + " | mean train loss | train s |\n"
        "|---|---|" + "---|" * len(lengths) + "---|---|\n" + "\n".join(seed_rows)
    )
    sweep_table = (
        "| eta | "
        + " | ".join(f"PPL {length}" for length in lengths)
        + " |\n|---|"
        + "---|" * len(lengths)
        + "\n"
        + "\n".join(
            f"| {sweep_eta:g} | "
            + " | ".join(_fmt(s["validation_perplexity"][length]) for length in lengths)
            + " |"
            for sweep_eta, s in sorted(sweep.items())
        )
    )
    icl_section = _icl_section(icl_results)
    own = (
        "This is the **momentum** arm"
        if own_arm == "momentum"
        else "This is the **vanilla baseline** arm (eta = 0)"
    )
    body = f"""
# {name}

A tiny GPT-2-style causal language model pretrained from scratch on Project Gutenberg books, with
**momentum attention** on the value vectors ({PAPER}):

    MoAttn(V, K, q_t) = softmax-attention_t + sum_{{i<t}} eta^(t-i) v_i      (per head, eta = {eta})

{own}. Its matched twin [`{twin_repo}`](https://huggingface.co/{twin_repo}) has the same data, tokenizer, size,
token count, schedule and seed{"s" if len(arms["vanilla"]) > 1 else ""}, and differs only in eta. The weights here
are seed 0 of this arm; the tables report all seeds of both arms.

**Result.** {verdict(difference, block)} {_per_seed_differences(arms, block)}

## Install and use

```bash
pip install transformers-momentum        # or, from a clone of the repository: pip install -e .
```

```python
import transformers_momentum  # registers MomentumGPT with the Auto classes
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}")   # or a local folder: "model_cards/{name}"
tokenizer = AutoTokenizer.from_pretrained("{repo}")
inputs = tokenizer("It was a dark and stormy night", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))
```

Without the plugin installed, the modeling code shipped in this repository loads with
`AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)` (read `modeling_momentum_gpt.py` first).

## Results

Validation perplexity (lower is better), mean ± 95% t-interval over seeds, in the shape of the paper's Table 6.
Each input length scores the same {published["validation_tokens"]:,} held-out tokens cut into non-overlapping
windows; a length beyond the {block}-position table is not evaluated.

{header}
{rule}
{chr(10).join(result_rows)}
{diff_row}

For scale: the paper's 350M-parameter models trained on ~2.6e11 tokens reached 15.14 (vanilla) vs 15.02 (momentum)
at length 1024. These models have {human_count(published["parameters"]["total"])} parameters and saw
{human_count(published["train_tokens_seen"])} tokens, so absolute perplexities are not comparable.

### Seeds

{seed_table}

### eta sweep (seed 0, chosen by validation perplexity at length {block}; eta = 0 is the baseline)

{sweep_table}

{icl_section}
### Loss curves

![loss curves of all seeds of both arms](loss_curve.png)

Solid lines: momentum; dashed: vanilla.

## Training details

Data: `{dataset_description}` -- public-domain Project Gutenberg books (front and back matter stripped).
Training text is the first {published["arguments"]["max_train_chars"]:,} characters of the train split; validation
is the first {published["arguments"]["max_validation_chars"]:,} characters of the separate validation split (different books).

{_training_table(published, arms)}

Reproduce with:

```bash
{command}
```

## Intended use

Research on momentum attention and in-context learning at small scale: a matched pair for ablations, tests and
demos of the `transformers-momentum` plugin (e.g. the ICL-vs-finetuning analyzer), and a template for pretraining
larger pairs with the same recipe (`transformers-momentum pretrain`).

## Limitations

- Tiny: {human_count(published["parameters"]["total"])} parameters and {human_count(published["train_tokens_seen"])}
  training tokens, far below compute-optimal. Its samples are Gutenberg-flavoured fragments with little coherence, not facts;
  it is not an assistant, and it is not suitable for any downstream or user-facing application.
- English public-domain fiction and essays only (Gutenberg), with the biases and dated language of those books.
- Differences between the arms at this scale say little about 350M+ models; the paper's own effect was 0.1-0.2
  perplexity.
- Validation uses a slice of held-out books, not a standard benchmark.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _icl_section(icl_results: Mapping[str, Any] | None) -> str:
    if not icl_results:
        return ""
    arms = list(icl_results["arms"])
    lines = [
        "### In-context learning accuracy",
        "",
        icl_results.get("description", ""),
        "",
        "| Task | chance / majority | " + " | ".join(arms) + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    for task in icl_results["tasks"]:
        cells = [icl_results["arms"][arm].get(task, "n/a") for arm in arms]
        lines.append(f"| {task} | {icl_results['baselines'].get(task, 'n/a')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ICL_FILE = "icl_accuracy.json"


def aggregate_icl(arms: Mapping[str, list[Mapping[str, Any]]], runs_dir: Path) -> dict[str, Any] | None:
    """Collect ``icl_accuracy.json`` of every run into the card's ICL table (mean ± t-interval over model seeds)."""
    import json

    from .evaluation import mean_and_t_interval

    per_arm: dict[str, dict[str, list[dict]]] = {}
    for arm, runs in arms.items():
        for summary in runs:
            path = Path(summary["arguments"]["output_dir"]).name
            file = runs_dir / path / ICL_FILE
            if not file.is_file():
                continue
            for task, result in json.loads(file.read_text()).items():
                per_arm.setdefault(arm, {}).setdefault(task, []).append(result)
    if not per_arm:
        return None
    tasks = sorted({task for results in per_arm.values() for task in results})
    table: dict[str, dict[str, str]] = {}
    baselines: dict[str, str] = {}
    example = None
    for arm, results in per_arm.items():
        for mode in ("zero_shot", "icl_mean"):
            label = f"{arm} {'0-shot' if mode == 'zero_shot' else 'ICL'}"
            for task in tasks:
                values = [100 * r[mode] for r in results.get(task, [])]
                if values:
                    mean, half = mean_and_t_interval(values)
                    table.setdefault(label, {})[task] = f"{mean:.1f} ± {half:.1f}"
        for task, rows in results.items():
            example = rows[0]
            baselines[task] = f"{100 * rows[0]['chance']:.0f} / {100 * rows[0]['majority_class']:.0f}"
    description = (
        f"Accuracy (%) on the first {example['n_eval']} shuffled evaluation examples of the analyzer's tasks, "
        f"with k = {example['k']} demonstrations (one fixed draw per demo seed, {len(example['icl_per_seed'])} "
        "demo seeds), mean ± 95% t-interval over the model seeds. Scoring: highest summed log-probability of the "
        "label tokens (`transformers_momentum.pretraining.icl_eval`). At this size both arms are expected near "
        "chance or majority class; the numbers are a sanity check, not evidence of ICL ability."
    )
    return {"description": description, "tasks": tasks, "arms": table, "baselines": baselines}


def build_checkpoint_folders(
    *,
    runs_dir: str | Path,
    momentum_eta: float,
    sweep_etas: list[float],
    seeds: int,
    cards_dir: str | Path,
    dataset_description: str,
    license: str = "apache-2.0",
    command: str = "",
    icl_results: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``<cards_dir>/momentum-gpt-<size>-<tokens>/`` and its ``vanilla-gpt-...`` twin from finished runs.

    Each folder holds exactly what its Hub repository holds: the card, the seed-0 checkpoint of its arm (config with
    ``auto_map``, safetensors, tokenizer, generation config, modeling code), ``loss_curve.png`` and ``results.json``.
    """
    import json
    import shutil

    from .recipe import SUMMARY_FILE

    runs_dir, cards_dir = Path(runs_dir), Path(cards_dir)

    def load(eta: float, seed: int) -> dict | None:
        path = runs_dir / f"eta{eta:g}-seed{seed}" / SUMMARY_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    arms = {
        "momentum": [s for seed in range(seeds) if (s := load(momentum_eta, seed))],
        "vanilla": [s for seed in range(seeds) if (s := load(0.0, seed))],
    }
    for arm, runs in arms.items():
        if not any(s["arguments"]["seed"] == 0 for s in runs):
            raise FileNotFoundError(f"No finished seed-0 run for the {arm} arm under {runs_dir}.")
    sweep = {eta: s for eta in [0.0, *sweep_etas] if (s := load(eta, 0))}
    if icl_results is None:
        icl_results = aggregate_icl(arms, runs_dir)
    names = {
        "momentum": checkpoint_name("momentum-gpt", arms["momentum"][0]),
        "vanilla": checkpoint_name("vanilla-gpt", arms["vanilla"][0]),
    }
    labels = {
        f"{'momentum' if arm == 'momentum' else 'vanilla'} seed {s['arguments']['seed']}": s
        for arm, runs in arms.items()
        for s in runs
    }
    folders = []
    for arm, name in names.items():
        twin = names["vanilla" if arm == "momentum" else "momentum"]
        folder = cards_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        source = runs_dir / f"eta{(momentum_eta if arm == 'momentum' else 0.0):g}-seed0"
        for file_name in CHECKPOINT_FILES:
            if (source / file_name).is_file():
                shutil.copyfile(source / file_name, folder / file_name)
        plot_loss_curves(labels, folder / "loss_curve.png")
        card = render_card(
            name=name,
            twin_name=twin,
            arms=arms,
            own_arm=arm,
            sweep=sweep,
            dataset_description=dataset_description,
            license=license,
            command=command,
            icl_results=icl_results,
        )
        card.save(str(folder / "README.md"))
        results = {
            "name": name,
            "twin": twin,
            "published_seed": 0,
            "validation_perplexity": {
                a: {str(s["arguments"]["seed"]): s["validation_perplexity"] for s in runs}
                for a, runs in arms.items()
            },
            "summary_statistics": {a: _arm_stats(runs) for a, runs in arms.items()},
            "paired_difference": _paired_difference(arms["momentum"], arms["vanilla"]),
            "sweep": {f"{eta:g}": s["validation_perplexity"] for eta, s in sweep.items()},
            "train_seconds": {
                a: {str(s["arguments"]["seed"]): s["train_seconds"] for s in runs} for a, runs in arms.items()
            },
            "parameters": arms[arm][0]["parameters"],
            "train_tokens_seen": arms[arm][0]["train_tokens_seen"],
            "icl": icl_results,
        }
        (folder / "results.json").write_text(json.dumps(results, indent=2))
        folders.append(folder)
    return folders
