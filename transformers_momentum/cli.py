"""``transformers-momentum`` command line: one sub-command per capability.

Each capability registers its own sub-commands through an ``add_cli(subparsers)`` function in its package, so
this file only dispatches; the heavy imports happen when a sub-command runs, not at ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module that defines add_cli) -- each adds one or more sub-commands.
_CLI_MODULES = (
    "transformers_momentum.models.momentum_gpt.cli",
    "transformers_momentum.analysis.cli",
    "transformers_momentum.pretraining.cli",
    "transformers_momentum.hub.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformers-momentum",
        description="Momentum attention, K/V-only finetuning and the ICL-vs-finetuning analyzer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _CLI_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:  # a capability whose CLI is not written yet
            if error.name != module_name:
                raise
            continue
        module.add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
