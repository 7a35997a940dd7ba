"""In-context-learning accuracy of a pretrained checkpoint on the analyzer's classification tasks.

The tasks, data and prompt layout are the analyzer's (`transformers_momentum.analysis`: `get_task`,
`load_task_data`, `PromptLayout`), so the numbers are comparable with its reports. The scoring is a plain
full-sequence forward pass per candidate label. This is the paper's prediction rule: the candidate whose label
tokens get the highest log-probability wins. It needs no prefix cache, so it works for any causal LM whose
context fits its position table.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def icl_accuracy(
    model: PreTrainedModel,
    tokenizer,
    task_name: str,
    k: int = 4,
    n_eval: int = 100,
    seeds: Sequence[int] = (1, 2, 3),
) -> dict:
    """Zero-shot and k-shot accuracy on the first ``n_eval`` examples of the task's evaluation split.

    Each seed draws one fixed set of ``k`` demonstrations from the training pool (as in the paper's code). Demos are
    dropped from the front if a prompt would exceed the model's position table. The ``demos_dropped`` count is
    reported, so a truncated context is visible.
    """
    from transformers_momentum.analysis import PromptLayout, get_task, load_task_data

    task = get_task(task_name)
    data = load_task_data(task)
    layout = PromptLayout(tokenizer, task)
    eval_rows = data.eval.shuffle(seed=1).select(range(min(n_eval, len(data.eval))))
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    model.eval()

    def predict(context_ids: list[int], example: dict) -> int:
        scores = []
        for candidate, label_ids in enumerate(layout.label_ids):
            ids = context_ids + layout.query_ids(example, candidate)
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            log_probs = torch.log_softmax(logits[-len(label_ids) - 1 : -1], dim=-1)
            scores.append(float(log_probs[torch.arange(len(label_ids)), torch.tensor(label_ids)].sum()))
        return max(range(len(scores)), key=scores.__getitem__)

    def accuracy_with(demos: list[dict]) -> tuple[float, int]:
        correct, dropped = 0, 0
        for example in eval_rows:
            kept = list(demos)
            longest = max(len(layout.query_ids(example, c)) for c in range(task.num_classes))
            while kept and len(layout.context(kept).input_ids) + longest > limit:
                kept.pop(0)
                dropped += 1
            context = layout.context(kept) if kept else layout.zero_shot_context()
            if len(context.input_ids) + longest > limit:
                raise ValueError(f"A {task_name} query alone exceeds the model's {limit} positions.")
            correct += predict(context.input_ids, example) == int(example["label"])
        return correct / len(eval_rows), dropped

    zero_shot, _ = accuracy_with([])
    per_seed, dropped = {}, 0
    for seed in seeds:
        indices = random.Random(seed).sample(range(len(data.train)), k)
        per_seed[seed], seed_dropped = accuracy_with([data.train[i] for i in indices])
        dropped += seed_dropped
    labels = [int(row["label"]) for row in eval_rows]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    return {
        "task": task_name,
        "n_eval": len(eval_rows),
        "k": k,
        "zero_shot": zero_shot,
        "icl_per_seed": per_seed,
        "icl_mean": sum(per_seed.values()) / len(per_seed),
        "majority_class": majority,
        "chance": 1 / task.num_classes,
        "demos_dropped": dropped,
    }
