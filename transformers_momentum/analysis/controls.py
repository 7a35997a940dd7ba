"""Controls that later work showed the paper's metrics need (Deutch et al. 2024; Shen et al. 2024).

* :func:`untrained_copy`: Deutch et al.'s untrained model: the decoder blocks are re-initialised, while the token
  (and position) embeddings, every norm, the final norm and the unembedding keep their pretrained values. It does
  not do ICL, yet reaches similar SimAOU on several tasks, which is the point of running it.
* :func:`random_label_demos`: the demonstrations with wrong labels (random-label FT).
* Layer-causal GD lives in `finetune.kv_finetune(method="lcgd")`; the FT variants are tabled in `variants.py`.
"""

from __future__ import annotations

import copy
import random

import torch
from torch import nn

from ..architectures import decoder_layers, is_norm, unwrap_peft


@torch.no_grad()
def reinitialize_blocks(model: nn.Module, *, seed: int = 0, std: float | None = None) -> int:
    """Re-initialise, in place, every non-norm weight inside the decoder blocks (normal(0, std), biases 0).

    `std` defaults to the config's ``initializer_range`` (0.02 if absent). Returns the number of tensors reset.
    """
    base = unwrap_peft(model)
    std = std if std is not None else getattr(base.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for block in decoder_layers(base):
        for module in block.modules():
            if is_norm(module):
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
    clone = copy.deepcopy(unwrap_peft(model))
    reinitialize_blocks(clone, seed=seed)
    return clone


def random_label_demos(
    demos: list[dict], num_classes: int, *, seed: int, derangement: bool = True
) -> tuple[list[dict], int]:
    """Copies of `demos` with random labels, and how many demos kept their gold label.

    With `derangement` (the default) every demo gets a label drawn uniformly from the *other* classes, so none keeps
    its gold label; otherwise labels are drawn uniformly from all classes (the expected share kept is 1/classes).
    """
    if num_classes < 2:
        raise ValueError("random labels need at least two classes")
    rng = random.Random(seed)
    shuffled = []
    for demo in demos:
        gold = int(demo["label"])
        if derangement:
            label = rng.randrange(num_classes - 1)
            label += label >= gold  # skip the gold class
        else:
            label = rng.randrange(num_classes)
        shuffled.append({**demo, "label": label})
    kept = sum(int(d["label"]) == int(s["label"]) for d, s in zip(demos, shuffled, strict=True))
    return shuffled, kept


__all__ = ["random_label_demos", "reinitialize_blocks", "untrained_copy"]
