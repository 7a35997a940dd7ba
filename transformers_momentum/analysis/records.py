"""Per-example records of what every headline metric is computed from (``--save-records`` -> records.npz).

One compressed numpy archive (`numpy.savez_compressed`, read with ``numpy.load(path)``; no pickled objects). Keys are
``<model>/seed<s>/<name>``, with ``<model>`` = ``pretrained`` or ``untrained``, ``<setting>`` = ``zsl``, ``icl`` or
an FT variant (``gd``, ``lcgd``, ``random_label``, ``flipped_label``, ``other_task``); N examples, L layers, H heads:

| name | shape | what |
|---|---|---|
| ``gold`` | (N,) | gold label ids, in evaluation order |
| ``predicted/<setting>`` | (N,) | predicted label ids |
| ``attention_output/<setting>`` | (N, L, hidden) | attention-module output at the analysis position (SimAOU: L2-normalise, subtract ZSL's, cosine) |
| ``query_scores/<setting>`` | (L, H, ΣQ) | pre-softmax score rows over each example's query keys, concatenated over examples (SimAM) |
| ``query_offsets`` | (N+1,) | example i's keys are ``query_scores[..., offsets[i]:offsets[i+1]]`` |
| ``kendall_icl/<variant>`` | (K, L, T) | ICL scores of the aligned demonstration tokens, summed over heads (first K examples) |
| ``kendall_ft/<variant>`` | (K, L, T) | FT similarity Σ_h q'_j·q of the same training tokens |

Attention outputs and score rows are float32 (recorded in fp32 whatever the model's dtype); the Kendall inputs are
float64, exactly the values that were ranked.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


class Records:
    """Collects the arrays of one run; :meth:`save` writes records.npz."""

    def __init__(self):
        self.arrays: dict[str, list[np.ndarray]] = defaultdict(list)
        self.prefix = ""

    def begin(self, model: str, seed: int) -> Records:
        self.prefix = f"{model}/seed{seed}/"
        return self

    def _put(self, name: str, value) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        self.arrays[self.prefix + name].append(np.asarray(value))

    def add_settings(self, index: int, gold: int, zsl, icl, zsl_scores, icl_scores) -> None:
        self._put("gold", gold)
        for name, observation, scores in (("zsl", zsl, zsl_scores), ("icl", icl, icl_scores)):
            self._put(f"predicted/{name}", observation.predicted)
            self._put(f"attention_output/{name}", observation.record.attention_output)
            self._put(f"query_scores/{name}", torch.stack(scores))  # (L, H, Q_i)
        self._put("query_length", zsl_scores[0].shape[-1])

    def add_variant(self, index: int, name: str, ft, ft_scores, m_icl, m_ft) -> None:
        self._put(f"predicted/{name}", ft.predicted)
        self._put(f"attention_output/{name}", ft.record.attention_output)
        self._put(f"query_scores/{name}", torch.stack(ft_scores))
        if m_icl is not None:
            self._put(f"kendall_icl/{name}", np.stack(m_icl))
            self._put(f"kendall_ft/{name}", np.stack(m_ft))

    def extend(self, other: Records) -> Records:
        """Append `other`'s arrays key by key: the records of the next share of the examples (`distributed`)."""
        for key, chunks in other.arrays.items():
            self.arrays[key].extend(chunks)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for key, chunks in self.arrays.items():
            if key.endswith("/query_length"):
                lengths = np.asarray(chunks, dtype=np.int64)
                out[key.replace("query_length", "query_offsets")] = np.concatenate([[0], np.cumsum(lengths)])
            elif "/query_scores/" in key:
                out[key] = np.concatenate(chunks, axis=-1).astype(np.float32)
            elif "/predicted/" in key or key.endswith("/gold"):
                out[key] = np.asarray(chunks, dtype=np.int64)
            elif "/kendall_" in key:  # kept exactly as ranked: a float32 copy could reorder near-ties
                out[key] = np.stack(chunks).astype(np.float64)
            else:
                out[key] = np.stack(chunks).astype(np.float32)
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez_compressed(path, **self.to_arrays())
        return path


__all__ = ["Records"]
