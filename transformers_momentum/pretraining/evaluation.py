"""Validation perplexity at several input lengths, in the shape of the paper's Table 6 (Dai et al. 2023, §5)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def perplexity_at_lengths(
    model: PreTrainedModel,
    token_ids: Sequence[int],
    lengths: Sequence[int],
    batch_size: int | None = None,
) -> dict[int, float | None]:
    """Perplexity of ``model`` on ``token_ids`` cut into non-overlapping windows of each length in ``lengths``.

    Every length scores the *same* token span (the longest multiple of the largest usable length), so the numbers
    differ only by how much context each token sees -- as in the paper's Table 6, where shorter inputs give higher
    perplexity. A length beyond the model's position table (``max_position_embeddings``) is reported as ``None``
    rather than evaluated on untrained positions.

    Returns ``{length: perplexity or None}``; perplexity is ``exp(total NLL / predicted tokens)``, where each window
    predicts its tokens 2..L (the first token of a window has no context). ``batch_size`` windows go through the
    model at once (default: as many as make 8,192 tokens, so short windows do not cost one call each).
    """
    max_positions = getattr(model.config, "max_position_embeddings", None)
    usable = [length for length in lengths if max_positions is None or length <= max_positions]
    results: dict[int, float | None] = {length: None for length in lengths}
    if not usable:
        return results
    longest = max(usable)
    span = len(token_ids) - len(token_ids) % longest
    if span == 0:
        raise ValueError(
            f"Need at least {longest} validation tokens to evaluate length {longest}; got {len(token_ids)}."
        )
    stream = torch.tensor(list(token_ids[:span]), dtype=torch.long)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for length in usable:
        windows = stream.view(-1, length)
        per_batch = batch_size or max(1, 8192 // length)
        total_nll, total_tokens = 0.0, 0
        for start in range(0, windows.shape[0], per_batch):
            batch = windows[start : start + per_batch].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += batch[:, 1:].numel()
        results[length] = math.exp(total_nll / total_tokens)
    model.train(was_training)
    return results
