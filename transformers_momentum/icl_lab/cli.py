"""``transformers-momentum icl-lab``: the in-context learning lab from the command line.

The options are the fields of `ICLLabArguments` exactly as transformers' `HfArgumentParser` builds them (the public
API: `build_parser()` is an `HfArgumentParser`, so ``build_parser().parse_args_into_dataclasses(argv)`` gives the
settings in a script of one's own): dash-case flags like ``analyze``'s (``--n-eval``, ``--learning-rate``; the
underscore spellings work too), booleans as ``--ood`` / ``--no-ood``, lists space-separated (``--seeds 1 2 3``) with
comma-separated values accepted too. The sub-command's parser takes them over as its parent, and the values it
parsed become `ICLLabArguments` through `HfArgumentParser.parse_dict`.

Nothing heavy is imported here: torch, the `Trainer` and matplotlib load only when the sub-command runs. Every
setting, ``--out``, ``--cards-dir`` and ``--device`` are checked before anything trains; bad input is one line on
stderr and exit code 2, and a failed run leaves no folder it created empty behind. Several processes started by
``torchrun`` or ``accelerate launch`` share one ``--out`` (each trains its share of the runs; rank 0 reports).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from ..cli import (
    accept_comma_lists,
    check_output_folder,
    missing_folders,
    one_line_errors,
    print_error,
    remove_empty_folders,
)
from .config import ICLLabArguments, LabInputError

_PROG = "transformers-momentum icl-lab"
#: List settings: space-separated values, comma-separated accepted too.
_LIST_FIELDS = ("etas", "seeds", "learning_rates")

_SHORT_HELP = (
    "In-context learning lab: synthetic tasks where ICL emerges, reference learners, the momentum arms, verdicts "
    "only once the eta = 0 baseline reaches the literature's anchor."
)


def build_parser(**kwargs):
    """The `HfArgumentParser` of `ICLLabArguments`, its list options taking comma-separated values too and its
    errors on one line."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ICLLabArguments, prog=kwargs.pop("prog", _PROG), **kwargs)
    accept_comma_lists(parser, _LIST_FIELDS)
    return one_line_errors(parser)


def add_cli(subparsers) -> None:
    """Register the ``icl-lab`` sub-command, whose options are those of `build_parser()`."""
    parser = subparsers.add_parser(
        "icl-lab",
        parents=[build_parser(add_help=False)],
        help=_SHORT_HELP,
        description=_SHORT_HELP
        + " Writes results.json, report.md and plots to --out; finished runs are reused when rerun.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(func=run_icl_lab_command)


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise LabInputError(
            f"--device {device}: this machine has {count} CUDA device(s); use --device cpu or another index"
        )


def settings_from(args: argparse.Namespace) -> ICLLabArguments:
    """The parsed options as `ICLLabArguments` (through `HfArgumentParser.parse_dict`, which runs its checks)."""
    values = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(ICLLabArguments)}
    (lab_args,) = build_parser().parse_dict(values)
    return lab_args


def run_icl_lab_command(args: argparse.Namespace) -> int:
    try:
        lab_args = settings_from(args)
        check_output_folder(lab_args.out, "--out", LabInputError)
        if lab_args.cards_dir is not None:
            check_output_folder(lab_args.cards_dir, "--cards-dir", LabInputError)
        _check_device(lab_args.device)
    except LabInputError as error:
        print_error(_PROG, error)
        return 2

    from . import lab

    created = missing_folders(lab_args.out)  # what the run creates; removed again if it fails
    try:
        results = lab.run_icl_lab(lab_args)
    except LabInputError as error:
        _clean_up(created, everything=True)
        print_error(_PROG, error)
        return 2
    except BaseException:
        _clean_up(created, everything=False)  # finished runs inside are kept: a rerun resumes from them
        raise
    if results is None:  # a rank > 0 of a launch: its share is trained, rank 0 reports
        return 0
    print(f"{results.gate.message}")
    for eta, comparison in results.momentum.comparisons.items():
        print(
            f"eta = {eta} vs 0: {comparison.mean:+.4f} [{comparison.low:+.4f}, {comparison.high:+.4f}]: "
            f"{comparison.verdict}"
        )
    print(f"wrote {lab_args.out}/results.json, report.md and plots")
    if lab_args.cards_dir:
        from .cards import export_checkpoints

        for path in export_checkpoints(lab_args.out, lab_args.cards_dir):
            print(f"wrote model card folder {path}")
    return 0


def _clean_up(created: list[Path], *, everything: bool) -> None:
    """After a failed run, remove the output folders it created: all of them after bad input (nothing it wrote is
    worth keeping), else only those left empty."""
    if not created:
        return
    if everything:
        shutil.rmtree(created[0], ignore_errors=True)
        return
    out = created[-1]
    if out.is_dir():
        for folder in sorted(
            (p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            remove_empty_folders([folder])
    remove_empty_folders(created)


__all__ = ["add_cli", "build_parser", "run_icl_lab_command", "settings_from"]
