"""The ICL-vs-FT metrics of Dai et al. 2023 (§4, Tables 2-5) and the stronger nulls later work asks for.

Plain functions on one evaluation example (per-layer arrays in, per-layer values out); they need no model and import
only numpy, scipy and torch. Averaging follows the paper's code: heads -> examples -> layers (the last two in
`statistics.estimate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import kendalltau

_EPS = 1e-20  # the paper's code adds 1e-20 to the cosine denominator


def cosine(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cosine similarity along `dim`, with the paper's 1e-20 in the denominator (0 for a zero vector)."""
    a, b = a.double(), b.double()
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + _EPS)


def accuracy(correct: Sequence[bool]) -> float:
    """100 × #correct / #examples."""
    if len(correct) == 0:
        raise ValueError("accuracy of zero examples is undefined")
    return 100.0 * float(np.mean(np.asarray(correct, dtype=float)))


@dataclass(frozen=True)
class Rec2FTP:
    """Recall to finetuning predictions (Dai et al. 2023, Table 2): of the examples FT fixes (FT right, ZSL wrong), the % ICL
    also gets right. ``value`` is None when FT fixes no example (the ratio is undefined, not 0 or 100)."""

    value: float | None
    n_ft_corrected: int
    n_both_corrected: int


def rec2ftp(zsl_correct: Sequence[bool], icl_correct: Sequence[bool], ft_correct: Sequence[bool]) -> Rec2FTP:
    zsl, icl, ft = (np.asarray(x, dtype=bool) for x in (zsl_correct, icl_correct, ft_correct))
    if not (zsl.shape == icl.shape == ft.shape):
        raise ValueError(
            f"rec2ftp needs equally many ZSL/ICL/FT outcomes, got {zsl.shape}, {icl.shape}, {ft.shape}"
        )
    ft_fixed = ft & ~zsl
    both = ft_fixed & icl
    n_fixed, n_both = int(ft_fixed.sum()), int(both.sum())
    return Rec2FTP(100.0 * n_both / n_fixed if n_fixed else None, n_fixed, n_both)


def simaou(h_zsl: torch.Tensor, h_icl: torch.Tensor, h_ft: torch.Tensor) -> torch.Tensor:
    """SimAOU per layer (Dai et al. 2023, Table 3): cos(ĥ_ICL − ĥ_ZSL, ĥ_FT − ĥ_ZSL) of L2-normalized attention outputs.

    Inputs are (L, hidden) attention-module outputs at the analysis position; returns (L,).
    """
    normed = [torch.nn.functional.normalize(h.double(), dim=-1, eps=0.0) for h in (h_zsl, h_icl, h_ft)]
    return cosine(normed[1] - normed[0], normed[2] - normed[0])


def attention_update(h_zsl: torch.Tensor, h_other: torch.Tensor) -> torch.Tensor:
    """ĥ_other − ĥ_ZSL (the update SimAOU compares), (L, hidden)."""
    return torch.nn.functional.normalize(h_other.double(), dim=-1) - torch.nn.functional.normalize(
        h_zsl.double(), dim=-1
    )


def simaou_null(delta_icl: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """cos(Δ_ICL, r) per layer for a random update r: ``"uniform"`` = Uniform[0,1) (the paper's baseline; not
    zero-mean, so it measures the mean of Δ_ICL more than chance) or ``"gaussian"`` = isotropic N(0, I)."""
    if kind == "uniform":
        noise = torch.rand(delta_icl.shape, generator=generator, dtype=torch.float64)
    elif kind == "gaussian":
        noise = torch.randn(delta_icl.shape, generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f"unknown null {kind!r}; use 'uniform' or 'gaussian'")
    return cosine(delta_icl, noise)


def simam(scores_a: Sequence[torch.Tensor], scores_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """SimAM per layer (Dai et al. 2023, Table 4): per head cos of two pre-softmax score rows over the same query-example keys,
    then the mean over heads. Inputs: per layer (heads, n_keys); returns (L,)."""
    return torch.stack([cosine(a, b).mean() for a, b in zip(scores_a, scores_b, strict=True)])


def delta_simam(
    scores_zsl: Sequence[torch.Tensor], scores_icl: Sequence[torch.Tensor], scores_ft: Sequence[torch.Tensor]
) -> torch.Tensor:
    """ΔSimAM per layer (Deutch et al.): per head cos(m_ICL − m_ZSL, m_FT − m_ZSL), mean over heads."""
    return torch.stack(
        [
            cosine(i.double() - z.double(), f.double() - z.double()).mean()
            for z, i, f in zip(scores_zsl, scores_icl, scores_ft, strict=True)
        ]
    )


def kendall(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Kendall τ (scipy's tau-b; equals the paper's tau-a formula when there are no ties). NaN for < 2 items."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2:
        return math.nan
    return float(kendalltau(a, b).statistic)


def topk_recall(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k (the code's top-k overlap recall); k is capped at the length."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    k = min(k, a.size)
    if k == 0:
        return math.nan
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


def output_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """KL(p || q) of two next-token distributions given as full-vocabulary log-probabilities (Shen et al.'s
    "ICL and GD modify the output distribution differently"); in nats, computed in float64."""
    log_p, log_q = log_p.double(), log_q.double()
    return float((log_p.exp() * (log_p - log_q)).sum())


def order_sensitivity(
    predictions: np.ndarray, gold_probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per example, across demonstration orders (Shen et al.'s order-sensitivity test).

    `predictions` and `gold_probabilities` are (orders, examples). Returns (flipped, spread): whether the predicted
    label is not the same under every order, and the standard deviation over orders of the gold label's probability.
    """
    predictions, gold_probabilities = np.asarray(predictions), np.asarray(gold_probabilities, dtype=float)
    if predictions.ndim != 2 or predictions.shape != gold_probabilities.shape or predictions.shape[0] < 2:
        raise ValueError("order_sensitivity needs (orders >= 2, examples) arrays of equal shape")
    flipped = (predictions != predictions[0]).any(axis=0)
    return flipped, gold_probabilities.std(axis=0)


def ft_attention_to_training_tokens(train_queries: torch.Tensor, test_query: torch.Tensor) -> torch.Tensor:
    """m_FT (Dai et al. 2023, Table 5): inner products of the training tokens' scaled queries (N, heads*d) with the test token's
    scaled query (heads*d,), i.e. Σ_h Q'ᵀq summed over heads. Returns (N,)."""
    return train_queries.double() @ test_query.double()


def head_cosines(delta_a: torch.Tensor, delta_b: torch.Tensor) -> torch.Tensor:
    """Cosine per head of two stacks of (heads, d, d) weight updates (flattened per head). Returns (heads,)."""
    return cosine(delta_a.flatten(1), delta_b.flatten(1))


__all__ = [
    "Rec2FTP",
    "accuracy",
    "attention_update",
    "cosine",
    "delta_simam",
    "ft_attention_to_training_tokens",
    "head_cosines",
    "kendall",
    "order_sensitivity",
    "output_kl",
    "rec2ftp",
    "simam",
    "simaou",
    "simaou_null",
    "topk_recall",
]
