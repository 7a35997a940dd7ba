"""``transformers-momentum pretrain``: one pretraining run from the command line.

The flags are `HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))`, as in transformers' `run_clm`
example, with the recipe's defaults for the `TrainingArguments` fields listed in ``RECIPE_TRAINING_DEFAULTS``.
``transformers-momentum pretrain --help`` lists them all; the parser is built only when the sub-command runs.

Bad input is one line on stderr and exit code 2, before a tokenizer trains or a model is built: the dataclasses
check their values, and `check_run` checks the files and folders and the `TrainingArguments` values the recipe
relies on that transformers accepts without a word (a negative learning rate, a batch size of 0, ...).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..cli import accept_comma_lists, check_output_folder, one_line_errors, print_error

DESCRIPTION = (
    "Train a byte-level BPE tokenizer (or reuse one), pack the text into fixed blocks, train MomentumGPT with the HF "
    "Trainer and report validation perplexity. Every TrainingArguments flag works (--learning_rate, "
    "--per_device_train_batch_size, --bf16, ...). Several processes: "
    "`torchrun --nproc_per_node N $(which transformers-momentum) pretrain ...` (add --use_cpu on CPU)."
)
_PROG = "transformers-momentum pretrain"
#: List flags that also take comma-separated values. Not the file lists: a comma is a legal file-name character.
_COMMA_LISTS = ("eval_lengths",)


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
        prog=_PROG,
        usage="%(prog)s --train_files F [F ...] --validation_files F [F ...] --output_dir DIR [options]",
        description=DESCRIPTION,
    )
    parser.set_defaults(**RECIPE_TRAINING_DEFAULTS)
    accept_comma_lists(parser, _COMMA_LISTS)
    return one_line_errors(parser)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_run(data_args, training_args) -> None:
    """Refuse, with a `ValueError` saying what to change, what would otherwise fail only after the tokenizer trained
    or the model was built: missing corpus files, an unusable folder, and `TrainingArguments` values transformers
    accepts but training cannot use."""
    for flag, paths in (
        ("--train_files", data_args.train_files),
        ("--validation_files", data_args.validation_files),
    ):
        for path in paths:
            if not Path(path).is_file():
                what = "a folder" if Path(path).is_dir() else "missing"
                raise ValueError(f"{flag}: {path} is {what}; give .txt or .jsonl[.xz|.gz|.bz2] files.")
    tokenizer = data_args.tokenizer
    # A name that is neither a folder nor path-like may be a Hub id, which from_pretrained resolves.
    if (
        tokenizer is not None
        and not Path(tokenizer).is_dir()
        and (Path(tokenizer).exists() or _looks_like_path(tokenizer))
    ):
        raise ValueError(f"--tokenizer {tokenizer}: not a folder holding a saved tokenizer.")
    check_output_folder(training_args.output_dir, "--output_dir")
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume != "latest" and not Path(resume).is_dir():
        raise ValueError(
            f"--resume_from_checkpoint {resume}: not a checkpoint directory (give one, or 'latest')."
        )
    args = training_args
    if not 0 <= args.learning_rate < math.inf:
        raise ValueError(f"--learning_rate must be a finite number >= 0; got {args.learning_rate}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1; got {getattr(args, name)}.")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(
            f"--max_steps must be at least 1 (or -1: train --num_train_epochs); got {args.max_steps}."
        )
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be positive; got {args.num_train_epochs}.")
    if not 0 <= args.weight_decay < math.inf:
        raise ValueError(f"--weight_decay must be a finite number >= 0; got {args.weight_decay}.")
    for name in ("adam_beta1", "adam_beta2"):  # torch's AdamW refuses them only when the optimizer is built
        if not 0 <= getattr(args, name) < 1:
            raise ValueError(f"--{name} must be in [0, 1); got {getattr(args, name)}.")
    if not 0 <= args.adam_epsilon < math.inf:
        raise ValueError(f"--adam_epsilon must be a finite number >= 0; got {args.adam_epsilon}.")
    if not 0 <= args.label_smoothing_factor < 1:
        raise ValueError(f"--label_smoothing_factor must be in [0, 1); got {args.label_smoothing_factor}.")
    for name in (
        "eval_steps",
        "save_steps",
    ):  # a float below 1 is a fraction of the steps (transformers' rule)
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name} must be positive; got {value}.")
    if args.eval_accumulation_steps is not None and args.eval_accumulation_steps < 1:
        raise ValueError(f"--eval_accumulation_steps must be at least 1; got {args.eval_accumulation_steps}.")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise ValueError(
            f"--save_total_limit must be at least 1 (or unset: keep all); got {args.save_total_limit}."
        )
    for name in ("seed", "data_seed"):  # numpy takes seeds in [0, 2**32)
        value = getattr(args, name)
        if value is not None and not 0 <= value < 2**32:
            raise ValueError(f"--{name} must be in [0, 2**32); got {value}.")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0; got {args.dataloader_num_workers}.")
    _check_report_to(args.report_to)


def _check_report_to(report_to) -> None:
    """Refuse an unknown logging integration now rather than when the Trainer is built, after the tokenizer."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [name for name in names if name not in ("all", "none", *INTEGRATION_TO_CALLBACK)]
    if unknown:
        raise ValueError(
            f"--report_to {', '.join(unknown)}: not a logging integration; use none, all or some of "
            f"{', '.join(INTEGRATION_TO_CALLBACK)}."
        )


def _run(args: argparse.Namespace) -> int:
    import logging

    from .recipe import pretrain

    # An unknown or malformed flag exits with status 2 (argparse, one line); so does an invalid value. ImportError:
    # a flag that needs a package that is not installed (--deepspeed).
    try:
        model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(
            args.forwarded_arguments, look_for_args_file=False
        )
        check_run(data_args, training_args)
    except (ValueError, ImportError) as error:
        print_error(_PROG, error)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        summary = pretrain(model_args, data_args, training_args)
    except FileNotFoundError as error:  # a corpus file that disappeared since the check
        print_error(_PROG, error)
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
