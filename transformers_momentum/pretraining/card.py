"""Model cards for pretrained checkpoints: `huggingface_hub.ModelCard.from_template` over a Jinja template.

Every statement of a card comes from the runs' own training summaries (what :func:`~.recipe.pretrain` returns and
writes to ``training_summary.json``) and from the arguments of :func:`render_card`: the corpus, the hardware and
the numbers from the summaries, the links from the repository ids passed in. Intervals are 95% Student-t
intervals over model seeds (``scipy.stats.ttest_1samp`` per arm; ``ttest_rel`` for the momentum - vanilla
difference, paired by seed on the same data and tokenizer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

#: The Jinja template of the card (``ModelCard.from_template``); pass another to :func:`render_card` to restyle.
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
ARM_LABELS = {"momentum": "MomentumGPT (eta = {eta:g})", "vanilla": "Vanilla (eta = 0)"}
#: Compute-optimal training sees about 20 tokens per parameter (Hoffmann et al. 2022).
COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20

Summary = Mapping[str, Any]


class Interval(NamedTuple):
    """Mean of ``n`` values with its 95% Student-t interval (``low``/``high`` are NaN when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.half_width:.2f}"


def seed_interval(values: Sequence[float], paired_with: Sequence[float] | None = None) -> Interval:
    """Mean and 95% t-interval of ``values`` over seeds, or of ``values - paired_with`` paired by position."""
    from scipy import stats

    values = [float(v) for v in values]
    differences = values if paired_with is None else [v - float(w) for v, w in zip(values, paired_with)]
    mean = sum(differences) / len(differences)
    if len(differences) < 2:
        return Interval(mean, math.nan, math.nan, len(differences))
    if max(differences) == min(differences):  # zero spread: the interval is the point (scipy would warn)
        return Interval(mean, mean, mean, len(differences))
    test = stats.ttest_1samp(values, 0.0) if paired_with is None else stats.ttest_rel(values, paired_with)
    interval = test.confidence_interval(0.95)
    return Interval(mean, float(interval.low), float(interval.high), len(differences))


def human_count(value: int) -> str:
    """fla-style size string: 1_383_168 -> '1.4M', 1_638_400 -> '1.6M', 350_000_000 -> '350M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            number = value / scale
            text = f"{number:.1f}" if number < 10 else f"{number:.0f}"
            return text.removesuffix(".0") + unit
    return str(value)


def checkpoint_name(arch: str, summary: Summary) -> str:
    """``<arch>-<size>-<tokens>``: parameters (tied embeddings once) and training tokens seen."""
    return f"{arch}-{human_count(summary['parameters']['total'])}-{human_count(summary['train_tokens_seen'])}"


def _seed(summary: Summary) -> int:
    return int(summary["training_arguments"]["seed"])


def _lengths(summary: Summary) -> list[str]:
    return list(summary["validation_perplexity"])


def arm_statistics(arms: Mapping[str, Sequence[Summary]]) -> dict[str, dict[str, Interval | None]]:
    """Per arm and input length: the seed interval of validation perplexity (None if a length was not evaluated)."""
    statistics: dict[str, dict[str, Interval | None]] = {}
    for arm, runs in arms.items():
        statistics[arm] = {}
        for length in _lengths(runs[0]):
            values = [run["validation_perplexity"][length] for run in runs]
            statistics[arm][length] = None if None in values else seed_interval(values)
    return statistics


def paired_difference(arms: Mapping[str, Sequence[Summary]]) -> dict[str, Interval | None]:
    """Per input length: momentum - vanilla perplexity over the seeds both arms have, paired by seed."""
    vanilla = {_seed(run): run for run in arms["vanilla"]}
    pairs = [(run, vanilla[_seed(run)]) for run in arms["momentum"] if _seed(run) in vanilla]
    differences: dict[str, Interval | None] = {}
    for length in _lengths(arms["momentum"][0]):
        kept = [
            (m["validation_perplexity"][length], v["validation_perplexity"][length])
            for m, v in pairs
            if m["validation_perplexity"][length] is not None
            and v["validation_perplexity"][length] is not None
        ]
        differences[length] = seed_interval(*zip(*kept)) if kept else None
    return differences


def verdict(difference: Interval | None, block_length: str) -> str:
    """A plain-language reading of the paired momentum - vanilla perplexity difference at ``block_length``."""
    if difference is None:
        return "No paired seeds: no verdict."
    mean, low, high, count = difference
    if count < 2:
        return f"Only {count} paired seed: no verdict (momentum - vanilla = {mean:+.2f} perplexity)."
    interval = f"95% CI of the paired difference {low:+.2f} to {high:+.2f}, {count} seeds"
    if high < 0:
        return (
            f"Momentum helped at this scale: validation perplexity at length {block_length} is lower by "
            f"{-mean:.2f} ({interval})."
        )
    if low > 0:
        return (
            f"Momentum hurt at this scale: validation perplexity at length {block_length} is higher by "
            f"{mean:.2f} ({interval})."
        )
    return (
        f"No significant difference at this scale: momentum - vanilla = {mean:+.2f} perplexity at length "
        f"{block_length} (95% CI {low:+.2f} to {high:+.2f}, {count} seeds; the interval contains 0)."
    )


def per_seed_differences(arms: Mapping[str, Sequence[Summary]], length: str) -> str:
    vanilla = {_seed(run): run["validation_perplexity"][length] for run in arms["vanilla"]}
    pairs = sorted(
        (_seed(run), run["validation_perplexity"][length] - vanilla[_seed(run)])
        for run in arms["momentum"]
        if _seed(run) in vanilla
    )
    if not pairs:
        return ""
    listed = ", ".join(f"{diff:+.1f} (seed {seed})" for seed, diff in pairs)
    lower = sum(diff < 0 for _, diff in pairs)
    return f"Per seed, momentum - vanilla = {listed}: momentum is lower in {lower} of {len(pairs)} seeds."


def _ppl(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _number(value: float) -> str:
    """1e-07 -> '1e-7', 0.002 -> '0.002'."""
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


def remote_code_requirement(transformers_requirement: str) -> str | None:
    """What the card says the remote code needs, from this package's transformers requirement.

    ``"transformers>=5.23"`` reads "transformers >= 5.23 (CI tests it on 5.23 and on 5.25, the newest tested
    release)": the remote code uses the same v5 internals as the package, tested on the floor and on
    `compat.NEWEST_TESTED`. A capped range (``"...,<5.25"``) names the newest minor below the cap instead.
    """
    from packaging.requirements import Requirement
    from packaging.version import Version

    from ..compat import NEWEST_TESTED

    requirement = Requirement(transformers_requirement)
    floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    ceilings = [Version(spec.version) for spec in requirement.specifier if spec.operator == "<"]
    if not floors:
        return None
    newest = Version(NEWEST_TESTED)
    if ceilings and ceilings[0].minor > 0:
        newest = Version(f"{ceilings[0].major}.{ceilings[0].minor - 1}")
    return f"transformers >= {floors[0]} (CI tests it on {floors[0]} and on {newest.major}.{newest.minor}, the newest tested release)"


def _installed_transformers_requirement() -> str | None:
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        lines = requires("transformers-momentum") or []
    except PackageNotFoundError:
        return None
    return next((line for line in lines if Requirement(line).name == "transformers"), None)


def _schedule(training: Mapping[str, Any], warmup_steps: int) -> str:
    name = str(training["lr_scheduler_type"]).removeprefix("SchedulerType.").lower()
    if name == "polynomial":  # transformers' defaults of get_polynomial_decay_schedule_with_warmup
        options = training.get("lr_scheduler_kwargs") or {}
        name = f"polynomial decay (power {_number(options.get('power', 1.0))}, to {_number(options.get('lr_end', 1e-7))})"
    return f"{name} after {warmup_steps:,} warm-up step{'s' if warmup_steps != 1 else ''}"


def _hardware(env: Mapping[str, Any]) -> str:
    processes, threads = env.get("processes", 1), env.get("torch_threads")
    where = env.get("device_name") or env["device"]
    text = f"{processes} process{'es' if processes > 1 else ''}"
    if threads:
        text += f" x {threads} torch thread{'s' if threads > 1 else ''}"
    text += f" on {where}"
    if env.get("cpu_count"):
        text += f" ({env['cpu_count']}-core machine)"
    return f"{text}; torch {env['torch']}, transformers {env['transformers']}"


def _wall_time(runs: Sequence[Summary], tokens_seen: int) -> str:
    wall = [run["train_seconds"] for run in runs]
    text = f"{min(wall):.0f}-{max(wall):.0f} s of training (fastest run: {tokens_seen / min(wall):,.0f} tokens/s)"
    cpu = [run.get("train_cpu_seconds") for run in runs]
    if None not in cpu:
        text += f", {min(cpu):.0f}-{max(cpu):.0f} s of CPU time"
    if max(wall) > 1.2 * min(wall):
        text += "; every run does the same computation, so the spread is the load of other processes on the machine"
    return text


def render_card(
    arms: Mapping[str, Sequence[Summary]],
    *,
    own_arm: str,
    repo_id: str,
    twin_repo_id: str,
    sweep: Mapping[float, Summary] | None = None,
    license: str = "apache-2.0",
    command: str | None = None,
    icl_results: Mapping[str, Any] | None = None,
    published_seed: int = 0,
    hub_url: str = "https://huggingface.co",
    transformers_requirement: str | None = None,
    template_path: str | Path = TEMPLATE,
):
    """The `huggingface_hub.ModelCard` of one arm's published checkpoint.

    Args:
        arms: ``{"momentum": [summary, ...], "vanilla": [summary, ...]}``, one training summary per seed; the two
            arms share data, tokenizer, size, token count and schedule, and differ in ``momentum_eta`` only.
        own_arm: ``"momentum"`` or ``"vanilla"``: whose weights this card's repository holds.
        repo_id / twin_repo_id: the Hub ids of this checkpoint and of its twin (the card's code and links use them).
        sweep: ``{eta: summary}`` of the eta sweep (seed 0), if one was run.
        command: how the checkpoints were produced, shown under "Reproduce with".
        icl_results: an ICL accuracy table ``{"description", "tasks", "arms": {column: {task: cell}}, "baselines"}``.
        published_seed: the seed whose weights are published.
        hub_url: where ``<twin_repo_id>`` resolves for the link.
        transformers_requirement: e.g. ``"transformers>=5.23,<5.25"``; default: this package's installed metadata.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    published = next(run for run in arms[own_arm] if _seed(run) == published_seed)
    data, training, config = (
        published["data_arguments"],
        published["training_arguments"],
        published["model_config"],
    )
    name = repo_id.split("/")[-1]
    lengths = _lengths(published)
    block = str(data["block_size"])
    dataset_name = data.get("dataset_name") or Path(data["train_files"][0]).resolve().parent.name
    statistics = arm_statistics(arms)
    difference = paired_difference(arms)
    all_runs = [run for runs in arms.values() for run in runs]
    eta = float(config["momentum_eta"])
    momentum_eta = float(arms["momentum"][0]["model_config"]["momentum_eta"])
    labels = {arm: label.format(eta=momentum_eta) for arm, label in ARM_LABELS.items()}
    parameters, tokens_seen = published["parameters"], published["train_tokens_seen"]
    requirement = transformers_requirement or _installed_transformers_requirement()

    card_data = ModelCardData(
        language=data.get("language"),
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["momentum-attention", "momentum_gpt", "transformers-momentum", "custom_code", "text-generation"]
        + (["baseline"] if own_arm == "vanilla" else []),
        datasets=[dataset_name],
        model_name=name,
        eval_results=[
            EvalResult(
                task_type="text-generation",
                task_name="Language modeling",
                dataset_type=dataset_name,
                dataset_name=f"{dataset_name} (held-out validation split)",
                dataset_split="validation",
                metric_type="perplexity",
                metric_name=f"Perplexity (input length {length})",
                metric_value=round(published["validation_perplexity"][length], 3),
            )
            for length in lengths
            if published["validation_perplexity"][length] is not None
        ],
        twin_model=twin_repo_id,
    )
    context = {
        "name": name,
        "repo_id": repo_id,
        "twin_repo_id": twin_repo_id,
        "hub_url": hub_url.rstrip("/"),
        "own_arm": own_arm,
        "eta": eta,
        "published_seed": published_seed,
        "several_seeds": len(arms["vanilla"]) > 1,
        "corpus": data.get("dataset_description") or f"`{dataset_name}`",
        "dataset_name": dataset_name,
        "dataset_description": data.get("dataset_description"),
        "train_files": ", ".join(f"`{Path(f).name}`" for f in data["train_files"]),
        "validation_files": ", ".join(f"`{Path(f).name}`" for f in data["validation_files"]),
        "max_train_chars": data.get("max_train_chars"),
        "max_validation_chars": data.get("max_validation_chars"),
        "size": human_count(parameters["total"]),
        "tokens": human_count(tokens_seen),
        "below_compute_optimal": tokens_seen < COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER * parameters["total"],
        "tokens_per_parameter": COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER,
        "remote_code_requirement": remote_code_requirement(requirement) if requirement else None,
        "verdict": verdict(difference.get(block), block),
        "per_seed": per_seed_differences(arms, block),
        "lengths": lengths,
        "block": block,
        "validation_tokens": published["validation_tokens"],
        "result_rows": [
            (
                labels[arm],
                len(runs),
                [
                    "n/a (beyond the position table)" if s is None else str(s)
                    for s in statistics[arm].values()
                ],
            )
            for arm, runs in arms.items()
        ],
        "difference_row": (
            max((d.n for d in difference.values() if d), default=0),
            ["n/a" if d is None else f"{d.mean:+.2f} ± {d.half_width:.2f}" for d in difference.values()],
        ),
        "seed_rows": [
            (
                labels[arm],
                _seed(run),
                [_ppl(run["validation_perplexity"][length]) for length in lengths],
                f"{run['final_train_loss']:.3f}",
                f"{run['train_seconds']:.0f}",
            )
            for arm, runs in arms.items()
            for run in sorted(runs, key=_seed)
        ],
        "sweep_rows": [
            (f"{sweep_eta:g}", [_ppl(run["validation_perplexity"][length]) for length in lengths])
            for sweep_eta, run in sorted((sweep or {}).items())
        ],
        "icl": icl_results,
        "training_rows": [
            (
                "Architecture",
                "GPT-2-style pre-LN decoder, learned absolute positions, tied embeddings (MomentumGPT)",
            ),
            (
                "d_model / FFN / heads / layers",
                f"{config['hidden_size']} / {config['intermediate_size']} / "
                f"{config['num_attention_heads']} / {config['num_hidden_layers']}",
            ),
            ("Parameters", f"{parameters['total']:,} ({parameters['non_embedding']:,} non-embedding)"),
            (
                "Vocabulary",
                f"{config['vocab_size']:,} (byte-level BPE trained on the first "
                f"{data['tokenizer_train_chars']:,} characters of the training files)",
            ),
            (
                "Sequence length",
                f"{block} (packed blocks; documents separated by the end-of-text token, id {config['eos_token_id']})",
            ),
            (
                "Batch",
                f"{published['tokens_per_step'] // int(block):,} sequences = {published['tokens_per_step']:,} tokens",
            ),
            (
                "Optimizer",
                f"`{str(training['optim']).removeprefix('OptimizerNames.').lower()}`, betas "
                f"({training['adam_beta1']}, {training['adam_beta2']}), eps {training['adam_epsilon']}, "
                f"weight decay {training['weight_decay']}",
            ),
            ("Peak learning rate", f"{training['learning_rate']}"),
            ("Schedule", _schedule(training, published["warmup_steps"])),
            (
                "Total steps / tokens",
                f"{published['global_step']:,} / {tokens_seen:,} (of {published['train_tokens_available']:,} "
                "distinct training tokens: "
                + (
                    "less than one epoch)"
                    if tokens_seen < published["train_tokens_available"]
                    else f"{tokens_seen / published['train_tokens_available']:.1f} epochs)"
                ),
            ),
            ("Gradient clipping", f"{training['max_grad_norm']}"),
            ("Dropout", f"{published['model_arguments']['dropout']}"),
            (
                "Momentum eta",
                f"{config['momentum_eta']}" + (" (learnable)" if config.get("learnable_eta") else " (fixed)"),
            ),
            ("Hardware", _hardware(published["environment"])),
            ("Wall time per run", _wall_time(all_runs, tokens_seen)),
        ],
        "command": command,
    }
    return ModelCard.from_template(card_data, template_path=str(template_path), **context)


def results_record(
    arms: Mapping[str, Sequence[Summary]],
    *,
    own_arm: str,
    name: str,
    twin_name: str,
    sweep: Mapping[float, Summary] | None = None,
    icl_results: Mapping[str, Any] | None = None,
    published_seed: int = 0,
) -> dict[str, Any]:
    """The per-seed numbers behind a card (``results.json`` of a checkpoint folder)."""

    def interval(value: Interval | None, with_count: bool = False) -> list | None:
        if value is None:
            return None
        return [value.mean, value.half_width, value.n] if with_count else [value.mean, value.half_width]

    published = next(run for run in arms[own_arm] if _seed(run) == published_seed)
    return {
        "name": name,
        "twin": twin_name,
        "published_seed": published_seed,
        "validation_perplexity": {
            arm: {str(_seed(run)): run["validation_perplexity"] for run in runs} for arm, runs in arms.items()
        },
        "summary_statistics": {
            arm: {length: interval(value) for length, value in lengths.items()}
            for arm, lengths in arm_statistics(arms).items()
        },
        "paired_difference": {
            length: interval(value, with_count=True) for length, value in paired_difference(arms).items()
        },
        "sweep": {f"{eta:g}": run["validation_perplexity"] for eta, run in sorted((sweep or {}).items())},
        "train_seconds": {
            arm: {str(_seed(run)): run["train_seconds"] for run in runs} for arm, runs in arms.items()
        },
        "parameters": published["parameters"],
        "train_tokens_seen": published["train_tokens_seen"],
        "icl": icl_results,
    }


def plot_loss_curves(runs: Mapping[str, Summary], path: str | Path) -> Path:
    """Plot training and validation loss against tokens seen for each run in ``runs`` (label -> summary)."""
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
