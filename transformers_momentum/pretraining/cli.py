"""``transformers-momentum pretrain``: one pretraining run from the command line.

The flags are `HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))`, as in transformers' `run_clm`
example, with the recipe's defaults for the `TrainingArguments` fields listed in ``RECIPE_TRAINING_DEFAULTS``.
``transformers-momentum pretrain --help`` lists them all; the parser is built only when the sub-command runs.
"""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Train a byte-level BPE tokenizer (or reuse one), pack the text into fixed blocks, train MomentumGPT with the HF "
    "Trainer and report validation perplexity. Every TrainingArguments flag works (--learning_rate, "
    "--per_device_train_batch_size, --bf16, ...). Several processes: "
    "`torchrun --nproc_per_node N $(which transformers-momentum) pretrain ...` (add --use_cpu on CPU)."
)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="Pretrain a MomentumGPT (or its eta=0 baseline) on text files with HF Trainer.",
        description=DESCRIPTION,
        add_help=False,  # --help goes to the HfArgumentParser below, which knows every flag
    )
    parser.set_defaults(func=_run, forwards_arguments=True)


def build_parser():
    """The `HfArgumentParser` of the recipe: model, data and training arguments with the recipe's defaults."""
    from transformers import HfArgumentParser, TrainingArguments

    from .arguments import RECIPE_TRAINING_DEFAULTS, DataArguments, ModelArguments

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments),
        prog="transformers-momentum pretrain",
        usage="%(prog)s --train_files F [F ...] --validation_files F [F ...] --output_dir DIR [options]",
        description=DESCRIPTION,
    )
    parser.set_defaults(**RECIPE_TRAINING_DEFAULTS)
    return parser


def _run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from .recipe import pretrain

    try:  # an unknown or malformed flag exits with status 2 (argparse); so does an invalid value
        model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(
            args.forwarded_arguments, look_for_args_file=False
        )
    except ValueError as error:
        print(f"transformers-momentum pretrain: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        summary = pretrain(model_args, data_args, training_args)
    except FileNotFoundError as error:  # a corpus file or --resume_from_checkpoint that does not exist
        print(f"transformers-momentum pretrain: error: {error}", file=sys.stderr)
        return 2
    if summary:  # empty on non-main ranks of a multi-process run
        ppl = ", ".join(
            f"{length}: {'n/a' if value is None else f'{value:.2f}'}"
            for length, value in summary["validation_perplexity"].items()
        )
        print(
            f"{summary['parameters']['total']:,} parameters, {summary['train_tokens_seen']:,} tokens, "
            f"{summary['train_seconds']:.0f} s; validation perplexity by length: {ppl}"
        )
        print(f"checkpoint: {training_args.output_dir}")
    return 0
