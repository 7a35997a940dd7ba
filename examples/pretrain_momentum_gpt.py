"""Pretrain matched MomentumGPT / vanilla checkpoints: an eta sweep, then several seeds per arm, then model cards.

This is the programme behind the checkpoints in ``model_cards/``. It is resumable: a run whose
``training_summary.json`` exists is skipped, so rerunning after an interruption continues where it stopped.

    python examples/pretrain_momentum_gpt.py --corpus /path/to/gutenberg_rcdm-uga --runs-dir runs/pretrain

Stages (all by default, in order):
  tokenizer  train one byte-level BPE tokenizer on the train split (shared by every run: a matched comparison)
  sweep      eta in --sweep-etas, seed 0, plus the vanilla baseline (eta=0) at seed 0
  seeds      the chosen eta (lowest validation perplexity at the block length in the sweep) and the baseline at
             seeds 1..N-1, same data, tokenizer, size, tokens and schedule
  icl        ICL accuracy of every run of both arms on the analyzer's tasks (small n)
  cards      model_cards/momentum-gpt-<size>-<tokens>/ and its vanilla twin, ready for `transformers-momentum publish`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from transformers_momentum.pretraining import PretrainArguments, pretrain, train_bpe_tokenizer
from transformers_momentum.pretraining.data import iter_documents
from transformers_momentum.pretraining.recipe import SUMMARY_FILE

logger = logging.getLogger("pretrain_momentum_gpt")


def run_dir(runs_dir: Path, eta: float, seed: int) -> Path:
    return runs_dir / f"eta{eta:g}-seed{seed}"


def run_one(options: argparse.Namespace, eta: float, seed: int) -> dict:
    out = run_dir(options.runs_dir, eta, seed)
    summary_path = out / SUMMARY_FILE
    if summary_path.is_file():
        logger.info("skip %s (done)", out)
        return json.loads(summary_path.read_text())
    logger.info("=== run eta=%g seed=%d -> %s", eta, seed, out)
    corpus = Path(options.corpus)
    args = PretrainArguments(
        train_files=[str(corpus / "train.jsonl.xz")],
        validation_files=[str(corpus / "valid.jsonl.xz")],
        output_dir=str(out),
        tokenizer=str(options.runs_dir / "tokenizer"),
        max_train_chars=options.max_train_chars,
        max_validation_chars=options.max_validation_chars,
        block_size=options.block_size,
        hidden_size=options.hidden_size,
        num_hidden_layers=options.num_layers,
        num_attention_heads=options.num_heads,
        momentum_eta=eta,
        per_device_train_batch_size=options.batch_size,
        max_steps=options.max_steps,
        learning_rate=options.learning_rate,
        seed=seed,
        num_threads=options.num_threads,
        disable_tqdm=True,
        # Resume an interrupted run from its last checkpoint instead of starting over.
        resume_from_checkpoint="latest" if (out / "checkpoints").is_dir() else None,
    )
    return pretrain(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="folder holding train.jsonl.xz and valid.jsonl.xz")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/pretrain"))
    parser.add_argument("--cards-dir", type=Path, default=Path("model_cards"))
    parser.add_argument("--stages", nargs="+", default=["tokenizer", "sweep", "seeds", "icl", "cards"])
    parser.add_argument("--sweep-etas", type=float, nargs="+", default=[0.25, 0.5, 0.9])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (seed 0 comes from the sweep)")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        metavar="ETA:SEED",
        help="only train these runs (e.g. 0:1 0:2), to spread a programme over processes; then stop",
    )
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--tokenizer-train-chars", type=int, default=4_000_000)
    parser.add_argument("--max-train-chars", type=int, default=7_000_000)
    parser.add_argument("--max-validation-chars", type=int, default=600_000)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--license", default="apache-2.0")
    # ICL accuracy: tasks whose k-shot prompts fit the 512-position table (AGNews and CB prompts would be truncated).
    parser.add_argument("--icl-tasks", nargs="+", default=["sst2", "sst5", "mr", "subj"])
    parser.add_argument("--icl-k", type=int, default=4)
    parser.add_argument("--icl-n-eval", type=int, default=60)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options.runs_dir.mkdir(parents=True, exist_ok=True)
    corpus = Path(options.corpus)

    if "tokenizer" in options.stages and not (options.runs_dir / "tokenizer" / "tokenizer.json").is_file():
        sample = list(iter_documents([corpus / "train.jsonl.xz"], options.tokenizer_train_chars))
        tokenizer = train_bpe_tokenizer(sample, options.vocab_size, model_max_length=options.block_size)
        tokenizer.save_pretrained(str(options.runs_dir / "tokenizer"))
        logger.info("tokenizer: %d tokens -> %s", len(tokenizer), options.runs_dir / "tokenizer")

    if options.runs:
        for item in options.runs:
            eta, seed = item.split(":")
            run_one(options, float(eta), int(seed))
        return 0

    if "sweep" in options.stages:
        for eta in options.sweep_etas:
            run_one(options, eta, 0)
        run_one(options, 0.0, 0)

    chosen = choose_eta(options)
    if "seeds" in options.stages:
        # Interleave the arms so that a programme cut short still has matched pairs.
        for seed in range(1, options.seeds):
            run_one(options, chosen, seed)
            run_one(options, 0.0, seed)

    if "icl" in options.stages:
        run_icl(options, chosen)

    if "cards" in options.stages:
        from transformers_momentum.pretraining.card import build_checkpoint_folders

        folders = build_checkpoint_folders(
            runs_dir=options.runs_dir,
            momentum_eta=chosen,
            sweep_etas=options.sweep_etas,
            seeds=options.seeds,
            cards_dir=options.cards_dir,
            dataset_description=corpus.name,
            license=options.license,
            command=" ".join(["python", "examples/pretrain_momentum_gpt.py", *(argv or sys.argv[1:])]),
        )
        for folder in folders:
            logger.info("checkpoint folder: %s", folder)
    return 0


def run_icl(options: argparse.Namespace, chosen: float) -> None:
    """ICL accuracy of every finished run of both arms on the analyzer's tasks (small n), cached per run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers_momentum.pretraining.card import ICL_FILE
    from transformers_momentum.pretraining.icl_eval import icl_accuracy

    torch.set_num_threads(options.num_threads)
    for eta in (chosen, 0.0):
        for seed in range(options.seeds):
            folder = run_dir(options.runs_dir, eta, seed)
            if not (folder / SUMMARY_FILE).is_file() or (folder / ICL_FILE).is_file():
                continue
            try:  # several `--stages icl` processes may share the work: one claims each run
                os.close(os.open(folder / f"{ICL_FILE}.lock", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            model = AutoModelForCausalLM.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            results = {
                task: icl_accuracy(model, tokenizer, task, k=options.icl_k, n_eval=options.icl_n_eval)
                for task in options.icl_tasks
            }
            (folder / ICL_FILE).write_text(json.dumps(results, indent=2))
            (folder / f"{ICL_FILE}.lock").unlink()
            logger.info("ICL %s: %s", folder.name, {t: round(r["icl_mean"], 3) for t, r in results.items()})


def choose_eta(options: argparse.Namespace) -> float:
    """The sweep's eta with the lowest validation perplexity at the training block length (seed 0)."""
    scores = {}
    for eta in options.sweep_etas:
        path = run_dir(options.runs_dir, eta, 0) / SUMMARY_FILE
        if path.is_file():
            scores[eta] = json.loads(path.read_text())["validation_perplexity"][str(options.block_size)]
    if not scores:
        raise RuntimeError("No finished sweep run: run the 'sweep' stage first.")
    chosen = min(scores, key=scores.get)
    logger.info("sweep perplexities %s -> chosen eta %g", scores, chosen)
    return chosen


if __name__ == "__main__":
    sys.exit(main())
