"""``transformers-momentum`` command line: one sub-command per capability.

Each capability registers its sub-commands through an ``add_cli(subparsers)`` function in its ``cli`` module, so
this file only dispatches. Listing the sub-commands (``--help``) imports the package -- which registers MomentumGPT
with the Auto classes and K/V tuning with peft, so torch, transformers and peft load -- and each ``cli`` module,
but nothing a sub-command needs only to run (``datasets``, matplotlib, the `Trainer`, the analyzer, the Hub
client): those load inside the sub-command's function.

A sub-command whose parser is built at run time (``pretrain``: an `HfArgumentParser`) sets
``forwards_arguments=True``; it receives the rest of the command line as ``args.forwarded_arguments``.

Bad input ends the same way in every sub-command: one line on stderr, exit code 2, nothing written. The parsers
report argparse's own errors (a wrong type, a missing value) on one line (`OneLineErrorParser`), each sub-command
checks its values before it loads or trains anything, and `main` turns the project's input errors that reach it
into that line too (`input_error_types`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

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


class OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line: argparse prints the whole usage first, which for a
    sub-command with thirty options is a dozen lines in front of the one that says what is wrong."""

    def error(self, message: str):  # type: ignore[override]
        print_error(self.prog, message)
        self.exit(2)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make an existing parser (an `HfArgumentParser`) report its errors as `OneLineErrorParser` does."""

    def error(message: str):
        print_error(parser.prog, message)
        parser.exit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser


def one_line(message: object) -> str:
    """`message` on one line: the lines of a multi-line message (transformers writes some) joined by spaces."""
    return " ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())


def print_error(prog: str, message: object) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


class CommaSeparatedList(argparse.Action):
    """A list option that takes its values space-separated (``--seeds 1 2``), comma-separated (``--seeds 1,2``)
    or both, so every list-valued flag of every sub-command takes the same forms. The item type is ``item_type``;
    a bad item is an argparse error (one line, exit 2)."""

    item_type: Callable[[str], object] = str

    def __init__(self, option_strings, dest, nargs="+", type=None, **kwargs):  # `type`: argparse's keyword
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.item_type = type or str

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for value in values if isinstance(values, list) else [values]:
            for part in (part.strip() for part in str(value).split(",")):
                if not part:
                    continue
                try:
                    items.append(self.item_type(part))
                except (TypeError, ValueError, argparse.ArgumentTypeError):
                    name = getattr(self.item_type, "__name__", "list")
                    raise argparse.ArgumentError(self, f"invalid {name} value: {part!r}") from None
        if not items:
            raise argparse.ArgumentError(self, "give at least one value")
        setattr(namespace, self.dest, items)


def accept_comma_lists(parser: argparse.ArgumentParser, dests: Sequence[str]) -> None:
    """Let the list options ``dests`` of a built parser (an `HfArgumentParser`'s ``nargs="+"`` fields) also take
    comma-separated values. The parser built them already, so their class is swapped in place: the subclass only
    replaces ``__call__`` and keeps every attribute argparse set (help, default, choices)."""
    for action in parser._actions:
        if action.dest in dests and action.nargs == "+":
            item_type = action.type or str
            action.__class__ = CommaSeparatedList
            action.item_type = item_type  # type: ignore[attr-defined]
            action.type = None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def check_output_folder(path: str | os.PathLike, flag: str, error_type: type[Exception] = ValueError) -> None:
    """Refuse an output folder that cannot be written, before any work: a file, a path under a file, a place where
    no folder can be created. It tries for real (``os.access`` says yes to root everywhere): it creates the missing
    folders and removes them again, so nothing is left behind either way."""
    if not str(path).strip():  # Path("") is the working directory: surely not what was meant
        raise error_type(f"{flag} is empty; give a folder.")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise error_type(f"{flag} {target} is a file; choose a folder.")
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise error_type(
            f"{flag} {target}: {existing} is a file, so no folder can be created there; choose another."
        )
    created: list[Path] = []
    probe = target / f".transformers-momentum-write-check-{os.getpid()}"
    try:
        for folder in reversed([p for p in (target, *target.parents) if not p.exists()]):
            folder.mkdir()
            created.append(folder)
        probe.mkdir()
        created.append(probe)
    except OSError as error:
        raise error_type(
            f"{flag} {target} cannot be written ({error.strerror or error}); choose another folder."
        ) from None
    finally:
        remove_empty_folders(created)


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (listed parents first) that are empty, deepest first: what a failed run created and left
    empty. A folder that holds anything stays."""
    for folder in reversed(list(folders)):
        with contextlib.suppress(OSError):
            folder.rmdir()


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, parents first: what a run creates (for
    `remove_empty_folders` after a failure)."""
    target = Path(path)
    return list(reversed([p for p in (target, *target.parents) if not p.exists()]))


def input_error_types() -> tuple[type[Exception], ...]:
    """The project's bad-input errors (their messages say what to change). Imported here, not at the top, so that
    ``--help`` loads no capability it does not list; each module is light."""
    from .analysis.errors import AnalysisInputError
    from .hub.publish import CheckpointFolderError
    from .icl_lab.config import LabInputError
    from .models.momentum_gpt.convert import ConversionError

    return (AnalysisInputError, LabInputError, CheckpointFolderError, ConversionError)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
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
        try:
            return int(args.func(args) or 0)
        except input_error_types() as error:  # a sub-command that let one through: still one line, exit 2
            print_error(f"{parser.prog} {args.command}", error)
            return 2


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
