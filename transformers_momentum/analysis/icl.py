"""The ICL core shared by the analyzer and the pretraining ICL evaluation: demonstrations, context, scoring.

* Demonstrations (Dai et al. 2023, §4.1 and the released code): the pool is shuffled with
  ``datasets.Dataset.shuffle(seed)`` and the first k examples are taken in that order, as long as
  ``len(context) + len(demo) + longest evaluation sequence < max_length``; demonstrations that do not fit are
  dropped (the code's "true K").
* Prediction (§4.1 and the released code): every candidate answer is scored by the **mean** log-probability of its
  label tokens under a full-vocabulary log-softmax; the highest score wins. With single-token answers the last
  prompt position's distribution scores every candidate, so only candidate 0's sequence is run (the code's
  shortcut); longer answers get one sequence per candidate.
* Speed: the demonstration context runs once and its KV cache is shared by every evaluation example. Evaluation
  sequences are sorted by length and right-padded into batches of up to ``batch_size`` sequences (right padding
  keeps every real token at the position it has unpadded); with a cached context, each batch gets the cache repeated
  along the batch axis. Results come back in the examples' order.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..architectures import cache_can_repeat_batch, cache_is_croppable, max_positions
from ..compat import cache_kwargs, output_cache
from .errors import AnalysisInputError
from .geometry import AttentionGeometry, input_device
from .prompt import Context, PromptLayout


def context_budget(
    model: nn.Module,
    layout: PromptLayout,
    examples: Sequence[dict],
    max_length: int,
    *,
    geometry: AttentionGeometry | None = None,
) -> tuple[int, int]:
    """(tokens available to the demonstrations, the effective maximum length) for evaluating `examples`."""
    limit = geometry.max_positions if geometry is not None else max_positions(model)
    effective = min(max_length, limit) if limit else max_length
    longest = layout.longest_query(examples)
    if effective - longest <= len(layout.start_ids):
        raise AnalysisInputError(
            f"The longest evaluation example ({longest} tokens) does not fit in {effective} tokens."
        )
    return effective - longest, effective


def choose_demos(
    pool,
    seed: int,
    layout: PromptLayout,
    k: int,
    budget: int,
    *,
    allow_fewer: bool = False,
    allow_none: bool = False,
    max_length: int = 0,
) -> list[dict]:
    """The first `k` demos of `pool` shuffled with `seed` whose context stays under `budget` tokens.

    Fewer than `k` is an error unless `allow_fewer` (then at least one must fit, unless `allow_none`).
    """
    demos, length = [], len(layout.start_ids)
    for example in pool.shuffle(seed=seed):
        if len(demos) == k:
            break
        size = len(layout.demo_ids(example)) + len(layout.separator_ids)
        if length + size >= budget:
            break
        demos.append(example)
        length += size
    if len(demos) < k and (not allow_fewer or (not demos and not allow_none)):
        raise AnalysisInputError(
            f"k={k} demonstrations do not fit the context: with seed {seed} only {len(demos)} fit in "
            f"{max_length or budget} tokens after reserving room for the longest evaluation example. Use --k "
            f"{max(len(demos), 1)} or smaller, raise --max-length, or pass --allow-fewer-demos (the paper's 'true K')."
        )
    return demos


@dataclass
class CandidateScores:
    """One example's candidate scores (mean label-token log-probabilities) and prediction."""

    scores: np.ndarray
    next_token_log_probs: torch.Tensor | None  # (vocab,) fp32 at the last prompt position, on the CPU

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax over the candidates' scores."""
        return np.exp(self.scores - np.logaddexp.reduce(self.scores))


@dataclass(frozen=True)
class Row:
    """One sequence of a batched forward: example `example`'s candidate `candidate`."""

    example: int  # index into the examples being scored
    candidate: int
    ids: list[int]  # the forward's new tokens (after a cached context)
    label_start: int  # index in `ids` of the first label token
    query_start: int  # index in `ids` of the first query-example token (after START when not cached)
    analysis_index: int | None  # index in `ids` of the analysis position (recorded rows only)


@dataclass
class Prefix:
    """A context ready for scoring: its ids, and its KV cache when it was run once (None: re-run in every row)."""

    context: Context
    cache: Any | None


Observer = Callable[[list[Row]], contextlib.AbstractContextManager]


class CandidateScorer:
    """Scores every candidate label of evaluation examples after a (cached) context, in batches.

    Args:
        model: a causal LM (or a peft model around one).
        layout: the task's prompt layout.
        batch_size: sequences per forward.
        analysis_position: where recorded rows are analysed: ``"label"`` (candidate 0's label token, the paper
            code's choice) or ``"prompt"`` (the last prompt token).
        reuse_cache: run the context once and reuse its cache (False: every sequence carries the whole context).
        geometry: the model's `AttentionGeometry`, for where input ids go (read from the model when not given).
    """

    def __init__(
        self,
        model: nn.Module,
        layout: PromptLayout,
        *,
        batch_size: int = 8,
        analysis_position: str = "label",
        reuse_cache: bool = True,
        keep_next_token: bool = True,
        geometry: AttentionGeometry | None = None,
    ):
        self.model = model
        self.geometry = geometry
        self.layout = layout
        self.batch_size = batch_size
        self.analysis_position = analysis_position
        self.reuse_cache = reuse_cache
        self.keep_next_token = keep_next_token
        tokenizer = layout.tokenizer
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self.single_row_cache_batches = False  # set when a cache could not be repeated along the batch axis

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embeddings' execution device (not the first parameter's device, which is
        meta when the embeddings are offloaded)."""
        return self.geometry.input_device if self.geometry is not None else input_device(self.model)

    def prefix(
        self, context: Context, observe: Callable[[], contextlib.AbstractContextManager] | None = None
    ) -> Prefix:
        """Run `context` once and keep its cache (a START-only context is cheaper re-run in every row)."""
        if not context.demo_spans or not self.reuse_cache:
            return Prefix(context, None)
        ids = torch.tensor([context.input_ids], device=self.device)
        with torch.no_grad(), observe() if observe else contextlib.nullcontext():
            output = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return Prefix(context, output_cache(output))

    def rows(self, prefix: Prefix, examples: Sequence[dict]) -> list[Row]:
        label_ids = self.layout.label_ids
        head = [] if prefix.cache is not None else list(prefix.context.input_ids)
        candidates = (0,) if self.layout.single_token_labels else range(len(label_ids))
        rows = []
        for index, example in enumerate(examples):
            query = head + self.layout.input_ids(example)
            for candidate in candidates:
                ids = query + label_ids[candidate]
                analysis = None
                if candidate == 0:
                    analysis = len(ids) - 1 if self.analysis_position == "label" else len(query) - 1
                rows.append(Row(index, candidate, ids, len(query), len(head), analysis))
        return rows

    def batches(self, rows: list[Row]) -> list[list[Row]]:
        """Whole examples at a time, at most `batch_size` rows per batch (at least one example), examples of
        similar length together so that little of a batch is padding. The order does not change any result."""
        by_example: dict[int, list[Row]] = {}
        for row in rows:
            by_example.setdefault(row.example, []).append(row)
        ordered = sorted(by_example.values(), key=lambda group: max(len(r.ids) for r in group))
        batches, current = [], []
        for group in ordered:
            if current and len(current) + len(group) > self.batch_size:
                batches.append(current)
                current = []
            current += group
        return batches + ([current] if current else [])

    def score(
        self,
        prefix: Prefix,
        examples: Sequence[dict],
        observe: Observer | None = None,
        rows: list[Row] | None = None,
    ) -> list[CandidateScores]:
        """Candidate scores of every example after `prefix`; `observe(rows)` is entered around each forward."""
        rows = rows if rows is not None else self.rows(prefix, examples)
        label_ids = self.layout.label_ids
        scores: dict[int, dict[int, float]] = {}
        next_token: dict[int, torch.Tensor] = {}
        for batch in self.batches(rows):
            for row, log_probs in zip(batch, self._forward(prefix, batch, observe), strict=True):
                if self.layout.single_token_labels:
                    # candidate 0's last prompt position scores every single-token candidate (the code's shortcut)
                    scores[row.example] = {
                        c: float(log_probs[0, answer[0]]) for c, answer in enumerate(label_ids)
                    }
                else:
                    # kept position j (0 = the last prompt token) predicts label token j
                    answer = label_ids[row.candidate]
                    value = float(np.mean([float(log_probs[j, token]) for j, token in enumerate(answer)]))
                    scores.setdefault(row.example, {})[row.candidate] = value
                if row.candidate == 0 and self.keep_next_token:
                    next_token[row.example] = log_probs[0].cpu()
        return [
            CandidateScores(np.asarray([scores[i][c] for c in range(len(label_ids))]), next_token.get(i))
            for i in range(len(examples))
        ]

    def _forward(self, prefix: Prefix, batch: list[Row], observe: Observer | None) -> list[torch.Tensor]:
        """Per row, (len(label), vocab) log-probabilities at the positions that predict its label tokens."""
        if prefix.cache is not None and len(batch) > 1 and not cache_can_repeat_batch(prefix.cache):
            self.single_row_cache_batches = True  # a recurrent state cannot be repeated: one row at a time
            return [lp for row in batch for lp in self._forward(prefix, [row], observe)]
        label_lengths = [len(self.layout.label_ids[row.candidate]) for row in batch]
        lengths = [len(row.ids) for row in batch]
        width = max(lengths)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, : len(row.ids)] = torch.tensor(row.ids)
        kwargs: dict[str, Any] = {}
        if len(batch) == 1:
            keep: int | torch.Tensor = (
                label_lengths[0] + 1
            )  # the last len(label)+1 positions, as a batch of one
        else:
            positions = [
                [row.label_start - 1 + min(j, n - 1) for j in range(max(label_lengths))]
                for row, n in zip(batch, label_lengths, strict=True)
            ]
            keep = torch.tensor(positions, device=self.device)
        cache = prefix.cache
        rollback = False
        if cache is not None:
            if len(batch) == 1 and cache_is_croppable(cache):
                rollback = True  # run on the shared cache and drop this row's tokens afterwards
            else:
                cache = copy.deepcopy(cache)
                if len(batch) > 1:
                    cache.batch_repeat_interleave(len(batch))
        if len(set(lengths)) > 1:
            past = cache.get_seq_length() if cache is not None else 0
            mask = torch.zeros((len(batch), past + width), dtype=torch.long)
            mask[:, :past] = 1
            for i, n in enumerate(lengths):
                mask[i, past : past + n] = 1
            kwargs["attention_mask"] = mask.to(self.device)
        past_length = cache.get_seq_length() if cache is not None else 0
        try:
            with torch.no_grad(), observe(batch) if observe else contextlib.nullcontext():
                output = self.model(
                    input_ids=ids.to(self.device), **cache_kwargs(cache), use_cache=cache is not None,
                    logits_to_keep=keep, **kwargs,
                )  # fmt: skip
        finally:
            if rollback and cache.get_seq_length() > past_length:
                cache.crop(past_length - cache.get_seq_length())
        log_probs = torch.log_softmax(output.logits.float(), dim=-1)
        if len(batch) == 1:
            return [log_probs[0, : label_lengths[0]]]
        return [log_probs[i, :n] for i, n in enumerate(label_lengths)]


__all__ = ["CandidateScorer", "CandidateScores", "Prefix", "Row", "choose_demos", "context_budget"]
