"""Model and tokenizer for the analyzer: an offline name, a local folder or a Hub id, with one-line errors.

The attention implementation is left to transformers unless asked for (sdpa where the model supports it, eager
otherwise: XGLM, the architecture of the paper's GPT 1.3B/2.7B, has no sdpa). ``dtype`` sets the precision of the
weights and forwards; the analyzer computes its metrics in fp32/fp64 whatever it is (and trains the K/V deltas in
fp32). ``device_map="auto"`` spreads a model over the available devices with accelerate; ``max_memory`` (a dict as
`from_pretrained` takes it, or accelerate's command-line form ``"0=20GiB,cpu=60GiB"``) caps each device, and what does
not fit is offloaded to CPU memory and then to disk (``offload_folder``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import AnalysisInputError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# The device names accelerate's `max_memory` takes besides GPU indices (`accelerate.utils.get_max_memory`).
MEMORY_DEVICES = ("cpu", "disk", "mps")


def parse_max_memory(text: str) -> dict[int | str, int | str]:
    """``"0=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", "cpu": "60GiB"}``: the dict `from_pretrained(max_memory=...)`
    takes (GPU indices as ints). Sizes are checked with accelerate's own parser; a bare number is bytes."""
    from accelerate.utils import convert_file_size_to_int

    example = "e.g. --max-memory 0=20GiB,cpu=60GiB"
    result: dict[int | str, int | str] = {}
    for item in (part.strip() for part in text.split(",")):
        key, sep, size = (x.strip() for x in item.partition("="))
        if not item or not sep or not key or not size:
            raise AnalysisInputError(f"--max-memory {text!r}: {item!r} is not DEVICE=SIZE ({example}).")
        device: int | str = int(key) if key.isdigit() else key.lower()
        if isinstance(device, str) and device not in MEMORY_DEVICES:
            raise AnalysisInputError(
                f"--max-memory {text!r}: device {key!r} is neither a GPU index nor one of {', '.join(MEMORY_DEVICES)}."
            )
        if device in result:
            raise AnalysisInputError(f"--max-memory {text!r}: device {key!r} is given twice.")
        value: int | str = int(size) if size.isdigit() else size
        try:
            convert_file_size_to_int(value)
        except ValueError:
            raise AnalysisInputError(
                f"--max-memory {text!r}: {size!r} is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB)."
            ) from None
        result[device] = value
    return result


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or os.sep in name.replace("/", "")
    )


def resolve_model(name: str) -> str:
    """The folder or Hub id to load `name` from; raises AnalysisInputError without touching the network when
    `name` cannot be a model (a missing folder, a file, a near-miss of an offline name)."""
    from ..assets import OFFLINE_MODELS, offline_model_path

    if name in OFFLINE_MODELS:
        try:
            return str(offline_model_path(name))
        except ModuleNotFoundError as error:
            raise AnalysisInputError(str(error)) from None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AnalysisInputError(
                f"--model {name}: is a file, not a model folder (config.json, weights, tokenizer)."
            )
        if not (path / "config.json").is_file():
            raise AnalysisInputError(
                f"--model {name}: the folder has no config.json, so it is not a model folder."
            )
        _check_safetensors(path)
        return str(path)
    known = sorted(OFFLINE_MODELS)
    if _looks_like_path(name):
        raise AnalysisInputError(f"--model {name}: no such folder (offline models: {', '.join(known)}).")
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if near:
        raise AnalysisInputError(
            f"--model {name}: not a local folder or an offline model; did you mean {near[0]!r}? Offline models: "
            f"{', '.join(known)}."
        )
    return name  # a Hub id


def _check_safetensors(folder: Path) -> None:
    """Open every safetensors file's header, so a truncated or corrupt file is named before loading starts."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error type for every header problem
            raise AnalysisInputError(
                f"--model: the weights file {file} is truncated or corrupt ({error})."
            ) from None


def load_model(
    name: str,
    *,
    dtype: str = "fp32",
    device: str | None = None,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
    autocast: bool = False,
    progress: bool = True,
):
    """(model, tokenizer) from an offline name (`transformers_momentum.assets`), a local folder or a Hub id.

    `max_memory` or `offload_folder` without a `device_map` mean ``device_map="auto"`` (accelerate only places and
    offloads weights through a device map); `device` is then unused. With `autocast` and a half-precision `dtype`
    the weights stay fp32 and the model is marked (``model.tm_autocast_dtype``) for the analyzer to run its forwards
    under ``torch.autocast`` in `dtype`: the mixed precision of ``Trainer(bf16=True)``, see `engine.py`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise AnalysisInputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    source = resolve_model(name)
    compute_dtype = getattr(torch, DTYPES[dtype])
    kwargs = {"dtype": torch.float32 if autocast else compute_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if isinstance(max_memory, str):
        max_memory = parse_max_memory(max_memory)
    if device_map is None and (max_memory or offload_folder is not None):
        device_map = "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as error:
        from ..assets import OFFLINE_MODELS

        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "" if Path(source).exists() else f" (offline models: {', '.join(sorted(OFFLINE_MODELS))})"
        raise AnalysisInputError(f"--model {name}: could not load it: {first}{hint}") from None
    finally:
        if bars and not progress:
            hf_logging.enable_progress_bar()
    if device_map is None:
        model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if autocast and compute_dtype != torch.float32:
        # The analyzer's engine runs this model's forwards under torch.autocast(compute_dtype) (engine.py).
        model.tm_autocast_dtype = compute_dtype
    return model.eval(), tokenizer


__all__ = ["DTYPES", "load_model", "parse_max_memory", "resolve_model"]
