"""``transformers-momentum`` command line: one sub-command per capability.

Each capability registers its sub-commands through an ``add_cli(subparsers)`` function in its ``cli`` module, so
this file only dispatches. Listing the sub-commands (``--help``) imports the package -- which registers MomentumGPT
with the Auto classes and K/V tuning with peft, so torch, transformers and peft load -- and each ``cli`` module,
but nothing a sub-command needs only to run (``datasets``, matplotlib, the `Trainer`, the analyzer, the Hub
client): those load inside the sub-command's function.

A sub-command whose parser is built at run time (``pretrain``: an `HfArgumentParser`) sets
``forwards_arguments=True``; it receives the rest of the command line as ``args.forwarded_arguments``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator

# (module that defines add_cli) -- each adds one or more sub-commands.
_CLI_MODULES = (
    "transformers_momentum.models.momentum_gpt.cli",
    "transformers_momentum.analysis.cli",
    "transformers_momentum.pretraining.cli",
    "transformers_momentum.hub.cli",
    "transformers_momentum.icl_lab.cli",
)
#: The loggers of the libraries whose warnings and notices ``--quiet`` silences.
_LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "peft", "accelerate", "torch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformers-momentum",
        description="Momentum attention, K/V-only finetuning and the ICL-vs-finetuning analyzer.",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest="quiet_libraries",
        action="store_true",
        help="silence library warnings and notices (FutureWarning, deprecations); errors still print",
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
    args, rest = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "forwards_arguments", False):
        args.forwarded_arguments = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # A sub-command's own --quiet (dest "quiet") silences the libraries too.
    quiet = args.quiet_libraries or getattr(args, "quiet", False)
    with _quiet_libraries() if quiet else contextlib.nullcontext():
        return int(args.func(args) or 0)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Ignore warnings and raise the libraries' log level to ERROR, then restore both (``main`` may run in-process)."""
    import logging

    levels = {name: logging.getLogger(name).level for name in _LIBRARY_LOGGERS}
    # A library imported later sets its level from these variables when it configures its logger.
    variables = {f"{name.upper()}_VERBOSITY": "error" for name in ("transformers", "datasets")}
    variables["HF_HUB_VERBOSITY"] = "error"
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    sys.exit(main())
