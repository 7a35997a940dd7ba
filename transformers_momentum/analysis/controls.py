"""Controls that later work showed the paper's metrics need (Deutch et al. 2024; Shen et al. 2024).

* :func:`untrained_copy`: Deutch et al.'s untrained model: the decoder blocks are re-initialised, while the token
  (and position) embeddings, every norm, the final norm and the unembedding keep their pretrained values. It does
  not do ICL, yet reaches similar SimAOU on several tasks, which is the point of running it.
* :func:`random_label_demos`: random labels (Min et al. 2022, "Rethinking the role of demonstrations"): every
  demonstration's label drawn uniformly from the label set, so the gold label is kept only at chance (1/classes).
* :func:`flipped_label_demos`: flipped labels (Wei et al. 2023, "Larger language models do in-context learning
  differently"): every label mapped to another class by one fixed permutation without a fixed point (on binary
  tasks, the other class): a consistent inverted mapping, not noise.
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


def random_label_demos(demos: list[dict], num_classes: int, *, seed: int) -> tuple[list[dict], int]:
    """Copies of `demos` with labels drawn uniformly from all `num_classes` classes, and how many kept their gold label.

    This is the random-label setting of Min et al. (2022): each demo keeps its gold label with probability
    1/classes (half the time on binary tasks), so the count kept is reported beside the control.
    """
    if num_classes < 2:
        raise ValueError("random labels need at least two classes")
    rng = random.Random(seed)
    shuffled = [{**demo, "label": rng.randrange(num_classes)} for demo in demos]
    kept = sum(int(d["label"]) == int(s["label"]) for d, s in zip(demos, shuffled, strict=True))
    return shuffled, kept


def flipped_mapping(num_classes: int) -> list[int]:
    """The fixed label derangement of the flipped-label control: class c -> (c + 1) mod classes.

    For two classes it is the inverse mapping (0 <-> 1); for more it is one cyclic shift, a permutation with no
    fixed point, the same for every seed so that every demonstration of every seed is relabelled consistently.
    """
    if num_classes < 2:
        raise ValueError("flipped labels need at least two classes")
    return [(label + 1) % num_classes for label in range(num_classes)]


def flipped_label_demos(demos: list[dict], num_classes: int) -> tuple[list[dict], list[int]]:
    """Copies of `demos` relabelled by `flipped_mapping` (no demo keeps its gold label), and the mapping."""
    mapping = flipped_mapping(num_classes)
    return [{**demo, "label": mapping[int(demo["label"])]} for demo in demos], mapping


__all__ = [
    "flipped_label_demos",
    "flipped_mapping",
    "random_label_demos",
    "reinitialize_blocks",
    "untrained_copy",
]
