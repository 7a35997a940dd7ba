"""Controls that later work showed the paper's metrics need (field_notes.md §2.1, §2.6).

* :func:`untrained_copy`: Deutch et al.'s untrained model: the decoder blocks are re-initialised, while the token
  (and position) embeddings, every norm, the final norm and the unembedding keep their pretrained values. It does
  not do ICL, yet reaches similar SimAOU on several tasks, which is the point of running it.
* :func:`random_label_demos`: the demonstrations with labels drawn uniformly at random (for random-label FT).
* Layer-causal GD lives in `finetune.kv_finetune(method="lcgd")`.
"""

from __future__ import annotations

import copy
import random

import torch
from torch import nn

from ..architectures import decoder_layers
from .probe import unwrap_model


def _is_norm(module: nn.Module) -> bool:
    # Norm classes differ per architecture (LayerNorm, LlamaRMSNorm, Gemma3RMSNorm, ...); all carry "Norm".
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


@torch.no_grad()
def reinitialize_blocks(model: nn.Module, *, seed: int = 0, std: float | None = None) -> int:
    """Re-initialise, in place, every non-norm weight inside the decoder blocks (normal(0, std), biases 0).

    `std` defaults to the config's ``initializer_range`` (0.02 if absent). Returns the number of tensors reset.
    """
    base = unwrap_model(model)
    std = std if std is not None else getattr(base.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for block in decoder_layers(base):
        for module in block.modules():
            if _is_norm(module):
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if name == "bias" or name.endswith("_bias"):
                    parameter.zero_()
                else:
                    noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                    parameter.copy_((noise * std).to(parameter.dtype))
                count += 1
    return count


def untrained_copy(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A deep copy of `model` with re-initialised decoder blocks (embeddings, norms and unembedding kept)."""
    clone = copy.deepcopy(unwrap_model(model))
    reinitialize_blocks(clone, seed=seed)
    return clone


def random_label_demos(demos: list[dict], num_classes: int, *, seed: int) -> list[dict]:
    """Copies of `demos` whose labels are drawn uniformly from ``range(num_classes)`` with `seed`."""
    rng = random.Random(seed)
    return [{**demo, "label": rng.randrange(num_classes)} for demo in demos]


__all__ = ["random_label_demos", "reinitialize_blocks", "untrained_copy"]
