"""``transformers-momentum analyze``: the ICL-vs-finetuning analysis from the command line.

Every option comes from a field of `config.AnalysisConfig`, `config.ModelArguments` or `config.OutputArguments`
(transformers' `HfArgumentParser` rules), so the CLI's defaults are the API's. Only light modules are imported
until the sub-command runs. Bad input of any kind ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from ..cli import accept_comma_lists, check_output_folder, one_line
from .config import DTYPE_ALIASES, AnalysisConfig, ModelArguments, OutputArguments

_ARGUMENTS = (ModelArguments, AnalysisConfig, OutputArguments)
#: Strings `from_pretrained` takes as ``device_map`` besides a device.
_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


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
    # Every list option also takes comma-separated values (--seeds 1,2 as well as --seeds 1 2), as icl-lab's do.
    accept_comma_lists(
        parser,
        [
            f.name
            for t in _ARGUMENTS
            for f in dataclasses.fields(t)
            if typing.get_origin(typing.get_type_hints(t)[f.name]) is list
        ],
    )
    for action in parser._actions:  # torch's names of the precisions too; ModelArguments maps them
        if action.dest == "dtype" and action.choices is not None:
            action.choices = [*action.choices, *DTYPE_ALIASES]
    parser.set_defaults(func=run_analyze)


def _dataclass(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


def _check_out(out_text: str, overwrite: bool):
    from .errors import AnalysisInputError

    if not out_text.strip():  # Path("") would be the working folder
        raise AnalysisInputError("--out is empty; give a folder.")
    out = Path(out_text)
    if out.exists() and not out.is_dir():
        raise AnalysisInputError(f"--out {out} is a file; choose a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AnalysisInputError(
            f"--out {out} exists and is not empty; pass --overwrite or choose another folder."
        )
    # Create the folder (and its missing parents) and remove them again: a place where that fails (under a file, a
    # read-only mount) is refused now, not after the whole analysis ran.
    check_output_folder(out, "--out", AnalysisInputError)


def _check_device(device: str, flag: str) -> None:
    """Refuse a device torch does not know or this machine does not have (``--device cuda`` without CUDA)."""
    import torch

    from .errors import AnalysisInputError

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise AnalysisInputError(
            f"{flag} {device!r} is not a device; use cpu, cuda, cuda:1, mps, ..."
        ) from None
    if parsed.type == "meta":
        raise AnalysisInputError(f"{flag} meta holds no weights; use cpu, cuda, cuda:1, mps, ...")
    if parsed.type == "cpu":
        return
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise AnalysisInputError(
            f"{flag} {device}: {parsed.type} is not available on this machine; use --device cpu."
        )
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise AnalysisInputError(
            f"{flag} {device}: this machine has {count()} {parsed.type} device(s), numbered from 0."
        )


def _check_model_arguments(model_args: ModelArguments) -> None:
    """Everything about the model that can be checked without loading it."""
    from .errors import AnalysisInputError
    from .loading import resolve_model

    resolve_model(model_args.model)  # a missing folder or a near-miss of an offline name, without the network
    if model_args.device is not None:
        _check_device(model_args.device, "--device")
    if model_args.device_map is not None and model_args.device_map not in _DEVICE_MAP_STRATEGIES:
        if model_args.device_map.split(":")[0] not in ("cpu", "cuda", "mps", "xpu", "npu", "hpu", "disk"):
            raise AnalysisInputError(
                f"--device-map {model_args.device_map!r}: use {', '.join(_DEVICE_MAP_STRATEGIES)} or a device."
            )
        if model_args.device_map != "disk":
            _check_device(model_args.device_map, "--device-map")
    if model_args.attn_implementation is not None:
        _check_attention(model_args.attn_implementation)
    if model_args.offload_folder is not None:
        check_output_folder(model_args.offload_folder, "--offload-folder", AnalysisInputError)


def _check_attention(name: str) -> None:
    """Refuse an attention implementation transformers does not have (it would only say so once the model loads).
    A kernels-hub repo (``org/name``) is left to transformers."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from .errors import AnalysisInputError

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if name not in known and name.removeprefix("paged|") not in known and "/" not in name:
        raise AnalysisInputError(
            f"--attn-implementation {name!r} is not an attention implementation; use one of {', '.join(known)} "
            "(or a kernels-hub repo, org/name)."
        )


def _load_data(task, config: AnalysisConfig):
    """The task's data; an unreachable Hub (--hub) is one line, not a retry log and a traceback."""
    from .errors import AnalysisInputError
    from .tasks import load_task_data

    if not config.hub or config.data_dir is not None:
        return load_task_data(task, config.data_dir, hub=config.hub)
    # huggingface_hub logs every retry ("Retrying in 8s") as a warning; the error below says it once.
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        return load_task_data(task, None, hub=True)
    except OSError as error:  # ConnectionError, offline mode, a dataset the Hub does not have
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AnalysisInputError(
            f"--hub: could not load {task.hub_path} from the Hub ({first}); check the network, HF_ENDPOINT and "
            "HF_HUB_OFFLINE, or drop --hub to use the bundled subset."
        ) from None
    finally:
        hub_logger.setLevel(level)


def run_analyze(args: argparse.Namespace) -> int:
    """Under ``torchrun`` / ``accelerate launch`` every process joins the process group and evaluates a share of the
    examples; the main process alone checks and writes ``--out`` and prints (distributed.py). Alone: no group."""
    from . import distributed

    device = str(getattr(args, "device", None) or "")
    distributed.start(cpu=True if device.strip().lower().startswith("cpu") else None)
    code = _run_analyze(args, distributed.is_main())
    distributed.finish()
    return code


def _check_arguments(output: OutputArguments, model_args: ModelArguments) -> None:
    _check_out(output.out, output.overwrite)
    _check_model_arguments(model_args)


def _run_analyze(args: argparse.Namespace, main_process: bool) -> int:
    from . import distributed
    from .errors import AnalysisInputError

    try:
        model_args, output = _dataclass(ModelArguments, args), _dataclass(OutputArguments, args)
        config = _dataclass(AnalysisConfig, args)
        if output.quiet or not main_process:
            config = config.replace(progress=False)
        # These checks create and remove folders: only the main process runs them, the others wait for its verdict.
        distributed.main_only(lambda: _check_arguments(output, model_args))
        # Data first: a wrong task, data folder or n_eval fails before the model loads.
        from .tasks import get_task

        task = get_task(config.task)
        other_task = get_task(config.other_task) if config.other_task is not None else None
        if other_task is not None and other_task.name == task.name and "other_task" in config.controls:
            # the pipeline would say so only after the model loaded
            raise AnalysisInputError(f"--other-task must differ from --task ({task.name}).")
        data = _load_data(task, config)
        if config.n_eval > len(data.eval):
            raise AnalysisInputError(
                f"--n-eval {config.n_eval} exceeds the {len(data.eval)} evaluation examples of {data.source}; use "
                f"--n-eval {len(data.eval)} or fewer."
            )
        if model_args.threads:
            import torch

            torch.set_num_threads(model_args.threads)
        if not output.quiet and main_process:
            _log_decisions()
        from .loading import load_model
        from .pipeline import analyze

        # Several processes on one machine: each loads the model on its own GPU unless told otherwise.
        own_device = distributed.accelerator_device() if model_args.device_map is None else None
        model, tokenizer = load_model(
            model_args.model,
            dtype=model_args.dtype,
            device=model_args.device or own_device,
            device_map=model_args.device_map,
            max_memory=model_args.max_memory,
            offload_folder=model_args.offload_folder,
            autocast=model_args.autocast,
            attn_implementation=model_args.attn_implementation,
            progress=config.progress,
        )
        result = analyze(model, tokenizer, config, task=task, data=data, model_name=model_args.model)
        if not main_process:
            return 0
        result.save(output.out, plots=output.plots)
    except (AnalysisInputError, FileExistsError) as error:
        if main_process:  # input errors are the same on every process: said once
            print(f"error: {one_line(error)}", file=sys.stderr)
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
