"""The finetuning variants compared with ICL, as one table.

Every variant is one epoch of batch-1 SGD on k formatted sequences with the same learning rate; they differ in the
training sequences and the loss:

| name            | switched on by          | sequences                                          | loss                  | Kendall |
|-----------------|-------------------------|----------------------------------------------------|-----------------------|---------|
| `gd`            | always (Dai et al.)     | the demonstrations, in order                       | token-mean NLL        | yes     |
| `lcgd`          | control `lcgd`          | the demonstrations, in order                       | layer-causal (Deutch) | yes     |
| `random_label`  | control `random_label`  | the demonstrations, labels drawn uniformly (Min)   | token-mean NLL        | yes     |
| `flipped_label` | control `flipped_label` | the demonstrations, labels flipped (Wei)           | token-mean NLL        | yes     |
| `other_task`    | control `other_task`    | k demonstrations of another task, its format       | token-mean NLL        | no      |

Random labels (Min et al. 2022) are drawn uniformly from the label set, so a demo keeps its gold label at chance
(the count is in the variant's info); flipped labels (Wei et al. 2023) map every label by one fixed derangement (the
other class on binary tasks): `controls.random_label_demos` and `controls.flipped_label_demos`.

Kendall τ compares ICL's attention to the demonstration tokens with FT's query similarity to the training tokens,
so it needs the two token lists to line up: a variant's training token and a context token pair up when they sit at
the same place of the same demonstration (input tokens always; label tokens when the two labels have equally many
tokens). For `gd` and `lcgd` that is every demonstration token, exactly the paper's slicing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .controls import flipped_label_demos, random_label_demos
from .prompt import Context, PromptLayout


@dataclass
class VariantInputs:
    """What a variant builds its training data from (one seed)."""

    layout: PromptLayout
    demos: list[dict]
    seed: int
    other: tuple[PromptLayout, object] | None = None  # (layout, demo pool) of the other task


@dataclass
class TrainingData:
    """A variant's training sequences, the demonstrations they were formatted from, and facts for the report."""

    sequences: list[list[int]]
    demos: list[dict] | None  # None when they are not this task's demonstrations (no Kendall)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FTVariant:
    name: str
    control: str | None  # the control that switches it on; None: always run
    method: str  # kv_finetune's method: "gd" or "lcgd"
    label: str  # row label in the report
    training_data: Callable[[VariantInputs], TrainingData]


def _demonstrations(inputs: VariantInputs) -> TrainingData:
    return TrainingData([inputs.layout.ft_sequence(d) for d in inputs.demos], inputs.demos)


def _random_labels(inputs: VariantInputs) -> TrainingData:
    classes = inputs.layout.task.num_classes
    # An offset keeps this draw apart from the demonstration draw of the same seed.
    demos, kept = random_label_demos(inputs.demos, classes, seed=inputs.seed + 7919)
    info = {"labels_kept": kept, "labels": [int(d["label"]) for d in demos], "chance": 1.0 / classes}
    return TrainingData([inputs.layout.ft_sequence(d) for d in demos], demos, info)


def _flipped_labels(inputs: VariantInputs) -> TrainingData:
    task = inputs.layout.task
    demos, mapping = flipped_label_demos(inputs.demos, task.num_classes)
    info = {
        "labels_kept": 0,
        "labels": [int(d["label"]) for d in demos],
        "mapping": mapping,  # label id -> the id it is trained as
        "label_words": list(task.label_words),
    }
    return TrainingData([inputs.layout.ft_sequence(d) for d in demos], demos, info)


def _other_task(inputs: VariantInputs) -> TrainingData:
    # k demonstrations of another task in its own format: an update that teaches nothing about this task.
    layout, pool = inputs.other
    demos = list(pool.shuffle(seed=inputs.seed).select(range(min(len(inputs.demos), len(pool)))))
    return TrainingData([layout.ft_sequence(d) for d in demos], None, {"task": layout.task.name})


FT_VARIANTS: dict[str, FTVariant] = {
    v.name: v
    for v in (
        FTVariant("gd", None, "gd", "vanilla GD (Dai et al.)", _demonstrations),
        FTVariant("lcgd", "lcgd", "lcgd", "layer-causal GD (Deutch et al.)", _demonstrations),
        FTVariant("random_label", "random_label", "gd", "random-label FT (Min et al.)", _random_labels),
        FTVariant("flipped_label", "flipped_label", "gd", "flipped-label FT (Wei et al.)", _flipped_labels),
        FTVariant("other_task", "other_task", "gd", "FT on another task", _other_task),
    )
}


def variants_for(controls) -> list[FTVariant]:
    """The variants a run with `controls` finetunes, in table order."""
    return [v for v in FT_VARIANTS.values() if v.control is None or v.control in controls]


def aligned_tokens(
    layout: PromptLayout, context: Context, icl_demos: list[dict], ft_demos: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context positions, indices into the concatenated training tokens) of the tokens that line up.

    Training tokens are the FT sequences without their START tokens, concatenated in order (as the probe records
    them). See the module docstring for the rule.
    """
    icl_positions, ft_indices, offset = [], [], 0
    for (start, _), icl_demo, ft_demo in zip(context.demo_spans, icl_demos, ft_demos, strict=True):
        n_input = len(layout.input_ids(icl_demo))
        gold, trained = (layout.label_ids[int(d["label"])] for d in (icl_demo, ft_demo))
        shared = n_input + (len(gold) if len(gold) == len(trained) else 0)
        icl_positions += range(start, start + shared)
        ft_indices += range(offset, offset + shared)
        offset += n_input + len(trained)
    return torch.tensor(icl_positions, dtype=torch.long), torch.tensor(ft_indices, dtype=torch.long)


__all__ = ["FT_VARIANTS", "FTVariant", "TrainingData", "VariantInputs", "aligned_tokens", "variants_for"]
