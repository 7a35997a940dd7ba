"""``transformers-momentum pretrain``: one pretraining run from the command line (flags = `PretrainArguments`)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

_HELP = {
    "train_files": "training text: .txt files or .jsonl[.xz|.gz] with a 'text' field",
    "validation_files": "held-out text in the same formats (validation perplexity is always reported)",
    "output_dir": "run directory: final checkpoint, checkpoints/, training_summary.json, loss_curve.png",
    "tokenizer": "a saved tokenizer folder to reuse (matched runs must share one); default: train a byte-level BPE",
    "momentum_eta": "momentum coefficient in [0, 1); 0 trains the vanilla GPT-2-style baseline",
    "resume_from_checkpoint": "a checkpoint folder, or 'latest' for the newest under <output_dir>/checkpoints",
    "num_threads": "torch.set_num_threads for this run (1 keeps a shared machine usable)",
    "use_cpu": "train on CPU even if a GPU is visible (also required for CPU multi-process runs under torchrun)",
    "eval_lengths": "input lengths for the final validation perplexity (lengths beyond block_size are skipped)",
}


def _field_type(hint) -> tuple[type, bool]:
    """(element type, is_list) of a dataclass field's annotation, ignoring ``| None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from .recipe import PretrainArguments

    parser = subparsers.add_parser(
        "pretrain",
        help="Pretrain a MomentumGPT (or its eta=0 baseline) on text files with HF Trainer.",
        description=(
            "Train a byte-level BPE tokenizer (or reuse one), pack the text into fixed blocks, train MomentumGPT with "
            "the HF Trainer and report validation perplexity. Multi-process: launch with "
            "`torchrun --nproc_per_node N $(which transformers-momentum) pretrain ...` (add --use-cpu on CPU)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(PretrainArguments)
    for spec in dataclasses.fields(PretrainArguments):
        flag = "--" + spec.name.replace("_", "-")
        element, is_list = _field_type(hints[spec.name])
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        default = (
            None
            if required
            else (spec.default_factory() if spec.default is dataclasses.MISSING else spec.default)
        )
        kwargs: dict = {"dest": spec.name, "help": _HELP.get(spec.name, " "), "default": default}
        if element is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = element
            if is_list:
                kwargs["nargs"] = "+" if required else "*"
        if required:
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from .recipe import PretrainArguments, pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = {spec.name for spec in dataclasses.fields(PretrainArguments)}
    summary = pretrain(PretrainArguments(**{k: v for k, v in vars(args).items() if k in names}))
    if summary:  # empty on non-main ranks of a multi-process run
        ppl = ", ".join(
            f"{length}: {'n/a' if value is None else f'{value:.2f}'}"
            for length, value in summary["validation_perplexity"].items()
        )
        print(
            f"{summary['parameters']['total']:,} parameters, {summary['train_tokens_seen']:,} tokens, "
            f"{summary['train_seconds']:.0f} s; validation perplexity by length: {ppl}"
        )
        print(f"checkpoint: {args.output_dir}")
    return 0
