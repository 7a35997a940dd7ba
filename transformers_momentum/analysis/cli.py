"""``transformers-momentum analyze``: the ICL-vs-finetuning analysis from the command line.

Every option comes from a field of `config.AnalysisConfig`, `config.ModelArguments` or `config.OutputArguments`
(transformers' `HfArgumentParser` rules), so the CLI's defaults are the API's. Only light modules are imported
until the sub-command runs. Bad input of any kind ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from pathlib import Path

from .config import AnalysisConfig, ModelArguments, OutputArguments

_ARGUMENTS = (ModelArguments, AnalysisConfig, OutputArguments)


def add_cli(subparsers) -> None:
    """Register the ``analyze`` sub-command."""
    from transformers import HfArgumentParser

    parser = subparsers.add_parser(
        "analyze",
        help="Compare in-context learning with K/V-only finetuning on a classification task (Dai et al. 2023).",
        description="Compare ICL with K/V-only finetuning on the same demonstrations; writes results.json, "
        "report.md and per-layer plots to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for dataclass_type in _ARGUMENTS:
        group = parser.add_argument_group(dataclass_type.__name__)
        hints = typing.get_type_hints(dataclass_type)
        for field in dataclasses.fields(dataclass_type):
            field.type = hints[field.name]
            HfArgumentParser._parse_dataclass_field(group, field)
    parser.set_defaults(func=run_analyze)


def _dataclass(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


def _check_out(out: Path, overwrite: bool):
    from .errors import AnalysisInputError

    if out.exists() and not out.is_dir():
        raise AnalysisInputError(f"--out {out} is a file; choose a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AnalysisInputError(
            f"--out {out} exists and is not empty; pass --overwrite or choose another folder."
        )
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise AnalysisInputError(f"--out {out}: {parent} is not writable.")


def run_analyze(args: argparse.Namespace) -> int:
    from .errors import AnalysisInputError

    try:
        model_args, output = _dataclass(ModelArguments, args), _dataclass(OutputArguments, args)
        config = _dataclass(AnalysisConfig, args)
        if output.quiet:
            config = config.replace(progress=False)
        _check_out(Path(output.out), output.overwrite)
        # Data first: a wrong task, data folder or n_eval fails before the model loads.
        from .tasks import get_task, load_task_data

        task = get_task(config.task)
        data = load_task_data(task, config.data_dir, hub=config.hub)
        if config.n_eval > len(data.eval):
            raise AnalysisInputError(
                f"--n-eval {config.n_eval} exceeds the {len(data.eval)} evaluation examples of {data.source}; use "
                f"--n-eval {len(data.eval)} or fewer."
            )
        if model_args.threads:
            import torch

            torch.set_num_threads(model_args.threads)
        if not output.quiet:
            _log_decisions()
        from .loading import load_model
        from .pipeline import analyze

        model, tokenizer = load_model(
            model_args.model,
            dtype=model_args.dtype,
            device=model_args.device,
            device_map=model_args.device_map,
            attn_implementation=model_args.attn_implementation,
            progress=config.progress,
        )
        result = analyze(model, tokenizer, config, task=task, data=data, model_name=model_args.model)
        result.save(output.out, plots=output.plots)
    except (AnalysisInputError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    main = result.models["pretrained"]
    gd = main.comparisons["gd"]

    def show(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    print(
        f"{config.task}: ZSL {show(main.accuracy_zsl.mean, 1)}  ICL {show(main.accuracy_icl.mean, 1)}  FT "
        f"{show(gd.accuracy_ft.mean, 1)}  SimAOU {show(gd.simaou.mean)} (Uniform null "
        f"{show(main.simaou_uniform_null.mean)})  SimAM {show(main.simam_before.mean)} -> {show(gd.simam_after.mean)}  "
        f"Kendall {show(gd.kendall.mean)}"
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {output.out}/results.json, report.md" + (" and plots" if output.plots else ""))
    return 0


def _log_decisions() -> None:
    """Print the analyzer's decisions (learning rate chosen, demonstrations dropped, ...) to stderr."""
    logger = logging.getLogger("transformers_momentum.analysis")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


__all__ = ["add_cli", "run_analyze"]
