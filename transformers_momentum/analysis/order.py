"""Shen et al.'s order test: are ICL and FT equally sensitive to the order of the same demonstrations?

The demonstrations are presented in ``1 + order_permutations`` orders: as the prompt order for ICL and as the SGD
order for FT. Per evaluation example: whether the prediction changes across orders, and the standard deviation of
P(gold) (softmax over the candidates' scores) across orders.
"""

from __future__ import annotations

import numpy as np

from .engine import Engine
from .metrics import order_sensitivity


def order_control(
    engine: Engine,
    demos: list[dict],
    eval_examples: list[dict],
    lr: float,
    seed: int,
    permutations: int,
    in_order: dict[str, tuple[list[int], list[float]]],
    dropout_seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"icl" | "ft": (changed across orders, std of P(gold) across orders)}, each per example.

    `in_order` holds the predictions and gold probabilities already computed in the demonstrations' own order.
    """
    layout = engine.layout
    gold = [int(ex["label"]) for ex in eval_examples]
    runs = {setting: ([list(p)], [list(g)]) for setting, (p, g) in in_order.items()}
    rng = np.random.default_rng(seed + 104_729)
    for _ in range(permutations):
        permuted = [demos[i] for i in rng.permutation(len(demos))]
        icl = engine.predictions(layout.context(permuted), eval_examples, engine.zero_state)
        state, _ = engine.finetune([layout.ft_sequence(d) for d in permuted], lr, seed=dropout_seed + seed)
        ft = engine.predictions(layout.zero_shot_context(), eval_examples, state)
        for setting, scores in (("icl", icl), ("ft", ft)):
            runs[setting][0].append([s.predicted for s in scores])
            runs[setting][1].append([float(s.probabilities[g]) for s, g in zip(scores, gold, strict=True)])
    return {
        setting: order_sensitivity(np.array(predictions), np.array(probabilities))
        for setting, (predictions, probabilities) in runs.items()
    }


__all__ = ["order_control"]
