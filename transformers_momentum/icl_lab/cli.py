"""``transformers-momentum icl-lab``: the in-context learning lab from the command line.

Nothing heavy is imported here: torch, transformers and matplotlib load only when the sub-command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import ICLLabArguments, LabInputError

_SHORT_HELP = (
    "In-context learning lab: synthetic tasks where ICL emerges, reference learners, the momentum arms."
)


def _add_fields(parser: argparse.ArgumentParser) -> None:
    """One option per field of `ICLLabArguments` (the Python API and the CLI share one definition)."""
    for spec in dataclasses.fields(ICLLabArguments):
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.metadata.get('help', '')} (default: {spec.default})"
        if spec.type in (bool, "bool"):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=spec.default, help=help_text
            )
            continue
        kind = {"int": int, "float": float}.get(
            spec.type if isinstance(spec.type, str) else spec.type.__name__, str
        )
        parser.add_argument(flag, type=kind, default=spec.default, help=help_text)


def add_cli(subparsers) -> None:
    """Register the ``icl-lab`` sub-command."""
    parser = subparsers.add_parser(
        "icl-lab",
        help=_SHORT_HELP,
        description=_SHORT_HELP
        + " Writes results.json, report.md and plots to --out; finished runs are reused when rerun.",
    )
    _add_fields(parser)
    parser.add_argument(
        "--cards-dir",
        default=None,
        help="After the run, write the best momentum model and its eta = 0 twin (first seed) as model-card "
        "folders here (e.g. model_cards).",
    )
    parser.set_defaults(func=run_icl_lab_command)


def run_icl_lab_command(args: argparse.Namespace) -> int:
    values = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(ICLLabArguments)}
    try:
        lab_args = ICLLabArguments(**values)
    except LabInputError as error:
        print(f"transformers-momentum icl-lab: error: {error}", file=sys.stderr)
        return 2

    from .lab import run_icl_lab

    try:
        run_icl_lab(lab_args)
    except LabInputError as error:
        print(f"transformers-momentum icl-lab: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {lab_args.out}/results.json, report.md and plots")
    if args.cards_dir:
        from .cards import export_checkpoints

        for path in export_checkpoints(lab_args.out, args.cards_dir):
            print(f"wrote model card folder {path}")
    return 0
