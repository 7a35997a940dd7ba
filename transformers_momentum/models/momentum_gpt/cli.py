"""`transformers-momentum convert-gpt2`: turn a GPT-2 checkpoint into a MomentumGPT checkpoint.

Everything that can be checked is checked before anything is written: ``--eta`` (by the parser), the output folder,
that the checkpoint exists and is a GPT-2 (its config), then that its weights are GPT-2's. Any of them failing is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...cli import check_output_folder, print_error

_PROG = "transformers-momentum convert-gpt2"


def _eta(text: str) -> float:
    """argparse type of ``--eta``: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (0 reproduces GPT-2 exactly), got {text}")
    return value


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-gpt2",
        help="Convert a GPT-2 checkpoint (path or Hub id) into MomentumGPT, optionally with momentum.",
        description="At --eta 0 the converted model reproduces GPT-2's logits exactly; a positive eta starts "
        "continued pretraining with momentum attention from GPT-2's weights.",
    )
    parser.add_argument("--model", required=True, help="GPT-2 checkpoint: local folder or Hub id")
    parser.add_argument("--eta", type=_eta, default=0.0, help="momentum coefficient in [0, 1) (default 0)")
    # A string, not a Path: Path("") is ".", and an empty --out must be refused rather than mean the working folder.
    parser.add_argument("--out", required=True, help="output folder for the MomentumGPT checkpoint")
    parser.set_defaults(func=_convert)


def _looks_like_path(name: str) -> bool:
    """A name that can only be a folder (a Hub id is ``name`` or ``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _source(name: str) -> str:
    """The local folder or Hub id to read, refusing without the network what cannot be a checkpoint."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .convert import ConversionError

    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"--model {name} is a file; give a checkpoint folder or a Hub id.")
        if not (path / "config.json").is_file():
            raise ConversionError(
                f"--model {name}: the folder has no config.json, so it is not a checkpoint."
            )
        return str(path)
    if _looks_like_path(name):
        raise ConversionError(f"--model {name}: no such folder (give a GPT-2 checkpoint folder or a Hub id).")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConversionError(
            f"--model {name}: neither an existing folder nor a valid Hub id (org/name)."
        ) from None
    return name


def _read_config(source: str, name: str) -> dict:
    """config.json as a dict: read without building a config class, so a model type transformers does not know
    is named rather than failing on the way."""
    from transformers import PretrainedConfig

    from .convert import ConversionError

    try:
        config, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"--model {name}: could not read its config.json: {first}") from None
    return config


def _load_gpt2(source: str, name: str):
    """The GPT-2, refusing a checkpoint whose weights are not GPT-2's (a model type can lie; missing weights would
    be initialised randomly and converted)."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from .convert import ConversionError

    # transformers' loading report is a table of every missing weight, and its "Loading weights" bar more lines;
    # the refusal below says it in one.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        gpt2, info = GPT2LMHeadModel.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"--model {name}: could not load it as GPT-2: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(key) for key in info.get("mismatched_keys", ()))
    if missing or mismatched:
        problem = (
            f"{len(missing)} GPT-2 weights missing" if missing else f"{len(mismatched)} of the wrong shape"
        )
        example = (missing or mismatched)[0]
        raise ConversionError(
            f"--model {name}: {problem} (e.g. {example}); it is not a complete GPT-2 checkpoint, and the missing "
            "weights would be random."
        )
    return gpt2


def _convert(args: argparse.Namespace) -> int:
    from transformers import GPT2Config

    from .convert import ConversionError, check_is_gpt2, gpt2_config_to_momentum, gpt2_to_momentum_gpt

    try:
        source = _source(args.model)
        check_output_folder(args.out, "--out", ConversionError)
        config = _read_config(source, args.model)
        check_is_gpt2(config)
        gpt2_config_to_momentum(GPT2Config.from_dict(config), momentum_eta=args.eta)  # GPT-2 options it lacks
        gpt2 = _load_gpt2(source, args.model)
        model = gpt2_to_momentum_gpt(gpt2, momentum_eta=args.eta)
    except ConversionError as error:
        print_error(_PROG, error)
        return 2
    model.save_pretrained(args.out)
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(source).save_pretrained(args.out)
    except (OSError, ValueError):
        print(f"note: no tokenizer found at {args.model}; copy one into {args.out} yourself")
    print(f"wrote MomentumGPT (momentum_eta={args.eta}) to {args.out}")
    return 0


__all__ = ["add_cli"]
