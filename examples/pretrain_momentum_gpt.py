"""Pretrain matched MomentumGPT / vanilla checkpoints: an eta sweep, then several seeds per arm, then model cards.

This is the programme behind the checkpoints in ``model_cards/``, built on the library's one-run recipe
(`transformers_momentum.pretraining.pretrain`). It is resumable: a run whose ``training_summary.json`` exists is
skipped, and an interrupted run continues from its last checkpoint.

    python examples/pretrain_momentum_gpt.py --corpus /path/to/gutenberg_rcdm-uga --runs_dir runs/pretrain \\
        --dataset_description "public-domain English books from Project Gutenberg" --hub_namespace my-org

Stages (all by default, in order):
  tokenizer  train one byte-level BPE tokenizer on the train split (shared by every run: a matched comparison)
  sweep      eta in --sweep_etas, seed 0, plus the vanilla baseline (eta=0) at seed 0
  seeds      the chosen eta (lowest validation perplexity at the block length in the sweep) and the baseline at
             seeds 1..N-1, same data, tokenizer, size, tokens and schedule
  icl        ICL accuracy of every run of both arms on the analyzer's tasks (small n)
  cards      <cards_dir>/momentum-gpt-<size>-<tokens>/ and its vanilla twin, ready for `transformers-momentum publish`

Run folders are ``<runs_dir>/eta<eta>-seed<seed>``. Under a multi-process launch (``torchrun --nproc_per_node N``
or ``accelerate launch``) every training run is data-parallel over all processes (Trainer), and the ICL stage
shares the finished runs out between the processes with accelerate's ``PartialState.split_between_processes``.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from transformers import HfArgumentParser

from transformers_momentum.pretraining import (
    DataArguments,
    ModelArguments,
    iter_documents,
    pretrain,
    recipe_training_arguments,
    seed_interval,
    train_bpe_tokenizer,
)
from transformers_momentum.pretraining.card import (
    checkpoint_name,
    plot_loss_curves,
    render_card,
    results_record,
)
from transformers_momentum.pretraining.recipe import CHECKPOINT_FILES, SUMMARY_FILE

logger = logging.getLogger("pretrain_momentum_gpt")
ICL_FILE = "icl_accuracy.json"
STAGES = ("tokenizer", "sweep", "seeds", "icl", "cards")


@dataclass
class ProgrammeArguments:
    corpus: str = field(metadata={"help": "folder holding train.jsonl.xz and valid.jsonl.xz"})
    runs_dir: str = field(
        default="runs/pretrain", metadata={"help": "one folder per run: eta<eta>-seed<seed>"}
    )
    cards_dir: str = field(default="model_cards", metadata={"help": "where the two checkpoint folders go"})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={"help": f"any of {STAGES}"})
    sweep_etas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.9])
    seeds: int = field(default=3, metadata={"help": "seeds per arm (seed 0 comes from the sweep)"})
    # The corpus, as the cards describe it.
    dataset_description: str | None = field(
        default=None, metadata={"help": "what the corpus is, in a phrase"}
    )
    language: str | None = field(default=None, metadata={"help": "ISO 639-1 code of the corpus"})
    hub_namespace: str = field(
        default="transformers-momentum",
        metadata={"help": "user or organization the cards' repo ids and links use"},
    )
    license: str = "apache-2.0"
    # One run's size and budget (the shipped checkpoints: these defaults).
    vocab_size: int = 4096
    tokenizer_train_chars: int = 4_000_000
    max_train_chars: int = 7_000_000
    max_validation_chars: int = 600_000
    block_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    batch_size: int = 8
    max_steps: int = 400
    learning_rate: float = 2e-3
    num_threads: int | None = field(default=1, metadata={"help": "torch threads per process"})
    use_cpu: bool = field(
        default=False, metadata={"help": "train on CPU (required for CPU multi-process runs)"}
    )
    # ICL accuracy: tasks whose k-shot prompts fit the 512-position table (AGNews and CB prompts would be truncated).
    icl_tasks: list[str] = field(default_factory=lambda: ["sst2", "sst5", "mr", "subj"])
    icl_k: int = 4
    icl_n_eval: int = 60


def run_dir(options: ProgrammeArguments, eta: float, seed: int) -> Path:
    return Path(options.runs_dir) / f"eta{eta:g}-seed{seed}"


def load_summary(options: ProgrammeArguments, eta: float, seed: int) -> dict | None:
    path = run_dir(options, eta, seed) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_one(options: ProgrammeArguments, eta: float, seed: int) -> None:
    """Train one run (data-parallel over all processes of the launch), unless it already finished."""
    out = run_dir(options, eta, seed)
    if (out / SUMMARY_FILE).is_file():
        logger.info("skip %s (done)", out)
        return
    logger.info("=== run eta=%g seed=%d -> %s", eta, seed, out)
    corpus = Path(options.corpus)
    pretrain(
        ModelArguments(
            hidden_size=options.hidden_size,
            num_hidden_layers=options.num_layers,
            num_attention_heads=options.num_heads,
            momentum_eta=eta,
        ),
        DataArguments(
            train_files=[str(corpus / "train.jsonl.xz")],
            validation_files=[str(corpus / "valid.jsonl.xz")],
            dataset_name=corpus.name,
            dataset_description=options.dataset_description,
            language=options.language,
            tokenizer=str(Path(options.runs_dir) / "tokenizer"),
            vocab_size=options.vocab_size,
            tokenizer_train_chars=options.tokenizer_train_chars,
            max_train_chars=options.max_train_chars,
            max_validation_chars=options.max_validation_chars,
            block_size=options.block_size,
            # The paper's Table 6 reads perplexity at half, once and twice the training length.
            eval_lengths=[options.block_size // 2, options.block_size, 2 * options.block_size],
        ),
        recipe_training_arguments(
            str(out),
            per_device_train_batch_size=options.batch_size,
            max_steps=options.max_steps,
            learning_rate=options.learning_rate,
            seed=seed,
            use_cpu=options.use_cpu,
            disable_tqdm=True,
            # Resume an interrupted run from its last checkpoint instead of starting over.
            resume_from_checkpoint="latest" if any(out.glob("checkpoint-*")) else None,
        ),
    )
    PartialState().wait_for_everyone()


def choose_eta(options: ProgrammeArguments) -> float:
    """The sweep's eta with the lowest validation perplexity at the training block length (seed 0)."""
    scores = {
        eta: summary["validation_perplexity"][str(options.block_size)]
        for eta in options.sweep_etas
        if (summary := load_summary(options, eta, 0))
    }
    if not scores:
        raise RuntimeError("No finished sweep run: run the 'sweep' stage first.")
    chosen = min(scores, key=scores.get)
    logger.info("sweep perplexities %s -> chosen eta %g", scores, chosen)
    return chosen


def run_icl(options: ProgrammeArguments, chosen: float) -> None:
    """ICL accuracy of every finished run of both arms, the runs shared out between the launch's processes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers_momentum.pretraining.icl_eval import icl_accuracy

    pending = [
        str(folder)
        for eta in (chosen, 0.0)
        for seed in range(options.seeds)
        if ((folder := run_dir(options, eta, seed)) / SUMMARY_FILE).is_file()
        and not (folder / ICL_FILE).is_file()
    ]
    state = PartialState()
    with state.split_between_processes(pending) as mine:
        for folder in map(Path, mine):
            model = AutoModelForCausalLM.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            results = {
                task: icl_accuracy(model, tokenizer, task, k=options.icl_k, n_eval=options.icl_n_eval)
                for task in options.icl_tasks
            }
            (folder / ICL_FILE).write_text(json.dumps(results, indent=2))
            logger.info("ICL %s: %s", folder.name, {t: round(r["icl_mean"], 3) for t, r in results.items()})
    state.wait_for_everyone()


def aggregate_icl(options: ProgrammeArguments, arms: dict[str, list[dict]], chosen: float) -> dict | None:
    """The cards' ICL table from every run's ``icl_accuracy.json``: mean ± 95% t-interval over model seeds."""
    per_arm: dict[str, dict[str, list[dict]]] = {}
    for arm, eta in (("momentum", chosen), ("vanilla", 0.0)):
        for summary in arms[arm]:
            file = run_dir(options, eta, summary["training_arguments"]["seed"]) / ICL_FILE
            if file.is_file():
                for task, result in json.loads(file.read_text()).items():
                    per_arm.setdefault(arm, {}).setdefault(task, []).append(result)
    if not per_arm:
        return None
    tasks = sorted({task for results in per_arm.values() for task in results})
    table: dict[str, dict[str, str]] = {}
    baselines: dict[str, str] = {}
    for arm, results in per_arm.items():
        for mode, column in (("zero_shot", "0-shot"), ("icl_mean", "ICL")):
            for task in tasks:
                if values := [100 * result[mode] for result in results.get(task, [])]:
                    interval = seed_interval(values)
                    half = 0.0 if interval.n < 2 else interval.half_width
                    table.setdefault(f"{arm} {column}", {})[task] = f"{interval.mean:.1f} ± {half:.1f}"
        for task, rows in results.items():
            baselines[task] = f"{100 * rows[0]['chance']:.0f} / {100 * rows[0]['majority_class']:.0f}"
    example = next(iter(next(iter(per_arm.values())).values()))[0]
    description = (
        f"Accuracy (%) on the first {example['n_eval']} shuffled evaluation examples of the analyzer's tasks, "
        f"with k = {example['k']} demonstrations (one fixed draw per demo seed, {len(example['icl_per_seed'])} "
        "demo seeds), mean ± 95% t-interval over the model seeds. Scoring: highest summed log-probability of the "
        "label tokens (`transformers_momentum.pretraining.icl_eval`). At this size both arms are expected near "
        "chance or majority class; the numbers are a sanity check, not evidence of ICL ability."
    )
    return {"description": description, "tasks": tasks, "arms": table, "baselines": baselines}


def write_cards(options: ProgrammeArguments, chosen: float, command: str) -> list[Path]:
    """The two checkpoint folders: each arm's seed-0 checkpoint, its card, loss curves and ``results.json``."""
    arms = {
        "momentum": [s for seed in range(options.seeds) if (s := load_summary(options, chosen, seed))],
        "vanilla": [s for seed in range(options.seeds) if (s := load_summary(options, 0.0, seed))],
    }
    for arm, runs in arms.items():
        if not any(s["training_arguments"]["seed"] == 0 for s in runs):
            raise FileNotFoundError(f"No finished seed-0 run for the {arm} arm under {options.runs_dir}.")
    sweep = {eta: s for eta in [0.0, *options.sweep_etas] if (s := load_summary(options, eta, 0))}
    icl = aggregate_icl(options, arms, chosen)
    names = {arm: checkpoint_name(f"{arm}-gpt", runs[0]) for arm, runs in arms.items()}
    curves = {f"{arm} seed {s['training_arguments']['seed']}": s for arm, runs in arms.items() for s in runs}
    folders = []
    for arm, name in names.items():
        twin = names["vanilla" if arm == "momentum" else "momentum"]
        folder = Path(options.cards_dir) / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        source = run_dir(options, chosen if arm == "momentum" else 0.0, 0)
        for file_name in CHECKPOINT_FILES:
            if (source / file_name).is_file():
                shutil.copyfile(source / file_name, folder / file_name)
        plot_loss_curves(curves, folder / "loss_curve.png")
        card = render_card(
            arms,
            own_arm=arm,
            repo_id=f"{options.hub_namespace}/{name}",
            twin_repo_id=f"{options.hub_namespace}/{twin}",
            sweep=sweep,
            license=options.license,
            command=command,
            icl_results=icl,
        )
        card.save(str(folder / "README.md"))
        record = results_record(arms, own_arm=arm, name=name, twin_name=twin, sweep=sweep, icl_results=icl)
        (folder / "results.json").write_text(json.dumps(record, indent=2))
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    (options,) = HfArgumentParser(ProgrammeArguments, description=__doc__).parse_args_into_dataclasses(
        argv, look_for_args_file=False
    )
    unknown = set(options.stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"error: unknown stages {sorted(unknown)}; choose from {STAGES}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if options.num_threads:
        import torch

        torch.set_num_threads(options.num_threads)
    state = PartialState(cpu=options.use_cpu)
    tokenizer_dir = Path(options.runs_dir) / "tokenizer"
    if (
        "tokenizer" in options.stages
        and state.is_main_process
        and not (tokenizer_dir / "tokenizer.json").is_file()
    ):
        sample = list(
            iter_documents([Path(options.corpus) / "train.jsonl.xz"], options.tokenizer_train_chars)
        )
        tokenizer = train_bpe_tokenizer(sample, options.vocab_size, model_max_length=options.block_size)
        tokenizer.save_pretrained(tokenizer_dir)
        logger.info("tokenizer: %d tokens -> %s", len(tokenizer), tokenizer_dir)
    state.wait_for_everyone()

    if "sweep" in options.stages:
        for eta in [*options.sweep_etas, 0.0]:
            run_one(options, eta, 0)
    if not set(options.stages) & {"seeds", "icl", "cards"}:
        return 0
    chosen = choose_eta(options)
    if "seeds" in options.stages:
        for seed in range(
            1, options.seeds
        ):  # arms interleaved: a programme cut short still has matched pairs
            run_one(options, chosen, seed)
            run_one(options, 0.0, seed)
    if "icl" in options.stages:
        run_icl(options, chosen)
    if "cards" in options.stages and PartialState().is_main_process:
        command = shlex.join(["python", "examples/pretrain_momentum_gpt.py", *(argv or sys.argv[1:])])
        for folder in write_cards(options, chosen, command):
            logger.info("checkpoint folder: %s", folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
