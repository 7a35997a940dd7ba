"""The protocol: which examples are analysed, which tune the learning rate, which demonstrations each seed draws.

* Analysis examples: the evaluation split shuffled with seed 1, the first ``n_eval`` (the paper's released code).
* Tuning split: ``n_tune`` examples held out of the demonstration pool (never analysed), or, with
  ``paper_protocol``, the analysis examples themselves, as Dai et al. 2023 tuned seeds and learning rates on their
  evaluation sets (Appendix B); the report labels which.
* Learning rate: given, or the rate of ``lr_grid`` with the best FT accuracy on the tuning split (ties: the smaller).
* Seeds: all of ``seeds``, or with ``select_seed`` the one whose demonstrations give the best ICL accuracy on the
  tuning split (the paper's seed selection).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import AnalysisConfig
from .engine import Engine
from .errors import AnalysisInputError
from .icl import choose_demos
from .prompt import PromptLayout
from .tasks import TaskData

logger = logging.getLogger(__name__)


@dataclass
class Splits:
    eval_examples: list[dict]
    tune_examples: list[dict]
    demo_pool: object  # datasets.Dataset with a "__pool_index" column
    tuning_split: str


def make_splits(data: TaskData, config: AnalysisConfig) -> Splits:
    if config.n_eval > len(data.eval):
        raise AnalysisInputError(
            f"n_eval={config.n_eval} exceeds the {len(data.eval)} evaluation examples of {data.source}; use "
            f"--n-eval {len(data.eval)} or fewer."
        )
    pool = data.train.add_column("__pool_index", list(range(len(data.train))))
    eval_examples = list(data.eval.shuffle(seed=1).select(range(config.n_eval)))
    needs_tuning = config.lr is None or (config.select_seed and len(config.seeds) > 1)
    if config.paper_protocol:
        return Splits(
            eval_examples,
            eval_examples,
            pool,
            "eval (paper protocol: tuned on the analysis examples themselves)",
        )
    if not needs_tuning:
        return Splits(eval_examples, [], pool, "none (learning rate given)")
    held = pool.shuffle(seed=10_000)
    n_tune = min(config.n_tune, max(len(held) - config.k, 0))
    if n_tune < 1:
        raise AnalysisInputError(
            f"The demo pool ({len(pool)} examples) is too small to hold out a tuning split."
        )
    return Splits(
        eval_examples,
        list(held.select(range(n_tune))),
        held.select(range(n_tune, len(held))),
        f"{n_tune} examples held out of the demo pool",
    )


def draw_demos(
    splits: Splits, seed: int, layout: PromptLayout, config: AnalysisConfig, budget: int, max_length: int
):
    demos = choose_demos(
        splits.demo_pool,
        seed,
        layout,
        config.k,
        budget,
        allow_fewer=config.allow_fewer_demos,
        max_length=max_length,
    )
    if len(demos) < config.k:
        logger.info(
            "seed %d: %d of k=%d demonstrations fit the context (the paper's 'true K')",
            seed,
            len(demos),
            config.k,
        )
    return demos


def tune_learning_rate(
    engine: Engine, sequences: list[list[int]], tune_examples: list[dict], config: AnalysisConfig, seed: int
) -> tuple[float, dict[str, float]]:
    """The rate of the grid with the best FT accuracy on the tuning split (ties: the smaller rate)."""
    scores = {}
    for candidate in config.lr_grid:
        state, _ = engine.finetune(sequences, candidate, seed=config.bootstrap_seed + seed)
        engine.load_state(state)
        finite = engine.deltas_finite()
        scores[candidate] = (
            engine.accuracy(engine.layout.zero_shot_context(), tune_examples, state) if finite else -1.0
        )
    chosen = max(sorted(scores), key=lambda c: scores[c])
    logger.info("seed %d: learning rate %g (FT accuracy on the tuning split: %s)", seed, chosen, scores)
    return chosen, {str(c): s for c, s in scores.items()}


def select_seed(engine: Engine, splits: Splits, layout, config: AnalysisConfig, budget: int, max_length: int):
    """The seed whose demonstrations give the best ICL accuracy on the tuning split (ties: the smaller seed)."""
    scores = {}
    for seed in config.seeds:
        demos = draw_demos(splits, seed, layout, config, budget, max_length)
        scores[seed] = engine.accuracy(layout.context(demos), splits.tune_examples, engine.zero_state)
    chosen = max(config.seeds, key=lambda s: (scores[s], -s))
    logger.info("seed %d selected (ICL accuracy on the tuning split: %s)", chosen, scores)
    return chosen, {"seed_search": {str(s): v for s, v in scores.items()}, "chosen": chosen}


__all__ = ["Splits", "draw_demos", "make_splits", "select_seed", "tune_learning_rate"]
