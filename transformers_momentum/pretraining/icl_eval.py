"""In-context-learning accuracy of a pretrained checkpoint on the analyzer's classification tasks.

This is the analyzer's ICL core (`transformers_momentum.analysis.icl`), so the numbers are comparable with its
reports: the tasks, data and prompt layout of the code released with Dai et al. 2023; demonstrations drawn by
shuffling the pool with ``datasets.Dataset.shuffle(seed)`` and keeping the first k that fit the context (the
paper's "true K"); and the paper's prediction rule, the candidate whose label tokens get the highest *mean*
log-probability under a full-vocabulary log-softmax. The context runs once and its cache serves every example.
"""

from __future__ import annotations

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
    *,
    max_length: int = 2048,
    batch_size: int = 8,
) -> dict:
    """Zero-shot and k-shot accuracy (fractions) on the first ``n_eval`` examples of the task's evaluation split.

    Each seed draws one fixed set of up to ``k`` demonstrations from the training pool. Demonstrations that do not
    fit ``max_length`` (capped by the model's position table) after room for the longest evaluation example are
    dropped; ``demos_dropped`` counts them over all seeds, so a truncated context is visible.
    """
    from transformers_momentum.analysis.icl import CandidateScorer, choose_demos, context_budget
    from transformers_momentum.analysis.prompt import PromptLayout
    from transformers_momentum.analysis.tasks import get_task, load_task_data

    task = get_task(task_name)
    data = load_task_data(task)
    layout = PromptLayout(tokenizer, task)
    eval_rows = list(data.eval.shuffle(seed=1).select(range(min(n_eval, len(data.eval)))))
    budget, max_length = context_budget(model, layout, eval_rows, max_length)
    scorer = CandidateScorer(model, layout, batch_size=batch_size, keep_next_token=False)
    model.eval()

    def accuracy(context) -> float:
        scores = scorer.score(scorer.prefix(context), eval_rows)
        correct = [s.predicted == int(ex["label"]) for s, ex in zip(scores, eval_rows, strict=True)]
        return sum(correct) / len(correct)

    zero_shot = accuracy(layout.zero_shot_context())
    per_seed, k_effective = {}, {}
    for seed in seeds:
        demos = choose_demos(
            data.train, seed, layout, k, budget, allow_fewer=True, allow_none=True, max_length=max_length
        )
        k_effective[seed] = len(demos)
        per_seed[seed] = accuracy(layout.context(demos))
    labels = [int(row["label"]) for row in eval_rows]
    return {
        "task": task_name,
        "n_eval": len(eval_rows),
        "k": k,
        "k_effective": k_effective,
        "zero_shot": zero_shot,
        "icl_per_seed": per_seed,
        "icl_mean": sum(per_seed.values()) / len(per_seed),
        "majority_class": max(labels.count(c) for c in set(labels)) / len(labels),
        "chance": 1 / task.num_classes,
        "demos_dropped": sum(k - n for n in k_effective.values()),
    }
