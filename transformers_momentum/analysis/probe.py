"""Record what the paper's metrics need from any causal LM's attention, and nothing more.

The probe registers one attention implementation, ``"tm_probe:<backend>"``, with transformers' `AttentionInterface`
(and the backend's mask function with `AttentionMaskInterface`: without that, `create_causal_mask` returns ``None``
and attention silently stops being causal). The registered function calls the model's own implementation with the
unchanged arguments, so logits are bit-identical to the bare model, and, while recording, reads per layer:

* ``eval`` mode, at one *analysis position* of the current forward: the scaled pre-softmax score row
  ``q·kᵀ·scaling`` over all keys up to and including that position (one row per head, O(T), never the T×T map;
  taken before the mask, as the paper's code does), and the scaled query vector (heads concatenated);
* ``train`` mode: the scaled queries of every token (the FT "training-token queries", paper §3.5);
* in both, a forward hook on the attention module keeps its output (after the output projection, before the
  residual add) at the analysis position.

Models whose attention does not dispatch through the interface (bloom, falcon, gpt_neo, ...) are detected with a
one-token forward and fall back to module hooks with eager attention: the score row is then the log of the eager
attention probabilities, which equals the pre-softmax row up to a per-row constant (exact for the Kendall ranking,
approximate for SimAM); training-token queries are not available there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import attention_modules, get_architecture
from ..attention_interface import original_attention_function, register_wrapped_attention
from .tasks import AnalysisInputError

_PREFIX = "tm_probe:"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class ProbeRecord:
    """What one eval-mode forward recorded; per-layer lists indexed by layer.

    attention_output: (L, hidden) attention-module output at the analysis position.
    scores: L tensors (heads, keys up to the analysis position) of scaled pre-softmax scores.
    query: (L, heads*head_dim) scaled query at the analysis position (None in the fallback).
    projected_query: (L, heads*head_dim) the query projection's output before any rotary embedding, scaled like
        `query` (None when the attention module has no separate `q_proj`).
    """

    attention_output: torch.Tensor
    scores: list[torch.Tensor]
    query: torch.Tensor | None
    projected_query: torch.Tensor | None = None


def _probe_attention(module, query, key, value, attention_mask, *args, **kwargs):
    probe: AttentionProbe | None = getattr(module, "_tm_probe", None)
    implementation = module.config._attn_implementation
    backend = implementation[len(_PREFIX) :] if implementation.startswith(_PREFIX) else implementation
    if probe is not None and probe._mode is not None:
        probe._capture(module, query, key, kwargs.get("scaling"))
    return original_attention_function(module, backend)(
        module, query, key, value, attention_mask, *args, **kwargs
    )


class AttentionProbe:
    """Installs the recording attention on `model` (a transformers model or a peft model around one).

    Use :meth:`record_eval` / :meth:`record_train` as context managers around forwards; outside them nothing is
    recorded and the model computes exactly what it computed before. :meth:`remove` restores the original
    attention implementation.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        base = unwrap_model(model)
        try:
            get_architecture(base)
            self.modules = attention_modules(base)
        except (ValueError, AttributeError, TypeError) as error:
            raise AnalysisInputError(
                f"No attention modules found in {type(base).__name__}: {error}"
            ) from None
        if not self.modules or any(m is None for m in self.modules):
            raise AnalysisInputError(f"No attention modules found in {type(base).__name__}.")
        self.num_layers = len(self.modules)
        self._layer_of = {id(m): i for i, m in enumerate(self.modules)}
        self._mode: str | None = None
        self._analysis_index = -1
        self._seen: set[int] = set()
        self._reset_buffers()
        self.original_implementation = base.config._attn_implementation or "eager"
        backend = self.original_implementation
        if backend.startswith(_PREFIX):
            backend = backend[len(_PREFIX) :]
        register_wrapped_attention(_PREFIX + backend, backend, _probe_attention)
        for module in self.modules:
            module._tm_probe = self
        self._hooks = [m.register_forward_hook(self._output_hook) for m in self.modules]
        # Queries before the rotary embedding: with RoPE, q'_j·q of the FT Kendall side also depends on the two
        # tokens' positions, which the paper's absolute-position GPT did not have. Recorded when q_proj exists.
        projections = [getattr(m, "q_proj", None) for m in self.modules]
        self.has_projected_queries = all(isinstance(q, nn.Module) for q in projections)
        if self.has_projected_queries:
            self._hooks += [
                q.register_forward_hook(self._make_projection_hook(i)) for i, q in enumerate(projections)
            ]
        base.set_attn_implementation(_PREFIX + backend)
        self.fallback = not self._dispatches_through_interface()
        if self.fallback:
            base.set_attn_implementation("eager")

    # ------------------------------------------------------------------------------------------ capture

    def _reset_buffers(self) -> None:
        self._outputs: list[torch.Tensor | None] = [None] * self.num_layers
        self._scores: list[torch.Tensor | None] = [None] * self.num_layers
        self._queries: list[torch.Tensor | None] = [None] * self.num_layers
        self._train_queries: list[torch.Tensor | None] = [None] * self.num_layers
        self._projected: list[torch.Tensor | None] = [None] * self.num_layers
        self._train_projected: list[torch.Tensor | None] = [None] * self.num_layers

    def _capture(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> None:
        layer = self._layer_of.get(id(module))
        if layer is None:
            return
        self._seen.add(layer)
        if self._mode == "ping":
            return
        if scaling is None:  # what sdpa and the eager functions default to
            scaling = query.shape[-1] ** -0.5
        with torch.no_grad():
            if self._mode == "train":
                # (batch 1, heads, T, d) -> (T, heads*d), scaled as in the paper's code (q·head_dim^-0.5).
                self._train_queries[layer] = (
                    (query[0].detach().float() * scaling).transpose(0, 1).flatten(1).cpu()
                )
                return
            q_len, total = query.shape[2], key.shape[2]
            row = self._analysis_index % q_len
            position = total - q_len + row  # absolute position of the analysis token among the keys
            q_row = query[0, :, row].detach().float()  # (H, d)
            keys = key[0, :, : position + 1].detach().float()  # (H_kv, T', d)
            groups = q_row.shape[0] // keys.shape[0]
            scores = torch.einsum("kgd,ktd->kgt", q_row.view(keys.shape[0], groups, -1), keys) * scaling
            self._scores[layer] = scores.reshape(q_row.shape[0], -1).cpu()
            self._queries[layer] = (q_row * scaling).flatten().cpu()

    def _output_hook(self, module, args, output) -> None:
        if self._mode not in ("eval", "train"):
            return
        layer = self._layer_of[id(module)]
        hidden = output[0] if isinstance(output, tuple) else output
        if self._mode == "eval":
            self._outputs[layer] = hidden[0, self._analysis_index].detach().float().cpu()
            if self.fallback:
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise AnalysisInputError(
                        f"{type(module).__name__} does not dispatch through the attention interface and returned no "
                        "attention weights in eager mode; the probe cannot read its scores."
                    )
                row = weights[0, :, self._analysis_index].detach().float()
                q_len = hidden.shape[1]
                position = row.shape[-1] - q_len + (self._analysis_index % q_len)
                self._scores[layer] = row[:, : position + 1].clamp_min(1e-30).log().cpu()

    def _make_projection_hook(self, layer: int):
        module = self.modules[layer]

        def hook(projection, args, output):
            if self._mode not in ("eval", "train"):
                return
            scaling = (
                getattr(module, "scaling", None) or getattr(module, "head_dim", output.shape[-1]) ** -0.5
            )
            with torch.no_grad():
                if self._mode == "train":
                    self._train_projected[layer] = (output[0].detach().float() * scaling).cpu()
                else:
                    self._projected[layer] = (
                        output[0, self._analysis_index].detach().float() * scaling
                    ).cpu()

        return hook

    def _dispatches_through_interface(self) -> bool:
        base = unwrap_model(self.model)
        start = 0  # any valid token id: only the dispatch matters
        self._seen = set()
        self._mode = "ping"
        try:
            with torch.no_grad():
                base(input_ids=torch.tensor([[start, start]], device=base.device), use_cache=False)
        finally:
            self._mode = None
        return len(self._seen) == self.num_layers

    # ------------------------------------------------------------------------------------------ public

    @contextlib.contextmanager
    def record_eval(self, analysis_index: int = -1):
        """Record one eval forward at `analysis_index` (an index into the forward's new tokens; -1 = last)."""
        self._reset_buffers()
        self._mode, self._analysis_index = "eval", analysis_index
        try:
            yield self
        finally:
            self._mode = None

    def eval_record(self) -> ProbeRecord:
        if any(o is None for o in self._outputs) or any(s is None for s in self._scores):
            raise RuntimeError("The probe did not see every layer in the last recorded forward.")
        queries = (
            None if self.fallback or any(q is None for q in self._queries) else torch.stack(self._queries)
        )
        projected = None if any(q is None for q in self._projected) else torch.stack(self._projected)
        return ProbeRecord(torch.stack(self._outputs), list(self._scores), queries, projected)

    @contextlib.contextmanager
    def record_train(self):
        """Record the scaled queries of every token of one training forward."""
        if self.fallback:
            raise AnalysisInputError(
                "Training-token queries need a model that dispatches through the attention interface."
            )
        self._reset_buffers()
        self._mode = "train"
        try:
            yield self
        finally:
            self._mode = None

    def train_queries(self) -> list[torch.Tensor]:
        """Per layer (T, heads*head_dim) scaled queries of the last recorded training forward."""
        if any(q is None for q in self._train_queries):
            raise RuntimeError("The probe did not see every layer in the last recorded training forward.")
        return list(self._train_queries)

    def train_projected_queries(self) -> list[torch.Tensor] | None:
        """Per layer (T, heads*head_dim) scaled pre-rotary queries of the last training forward (None if absent)."""
        if any(q is None for q in self._train_projected):
            return None
        return list(self._train_projected)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for module in self.modules:
            if getattr(module, "_tm_probe", None) is self:
                del module._tm_probe
        unwrap_model(self.model).set_attn_implementation(self.original_implementation)


class KVInputSecondMoment:
    """Streams ``S_l = Σ_t x̃_t x̃_tᵀ`` of the key/value projections' input x̃ = [x; 1], per layer.

    This is all the relaxed-linear-attention weight-space comparison (paper §1.2-1.3) needs: with it,
    ``ΔW_ICL = W̃_V S' W̃_Kᵀ`` over demonstration tokens and ``ΔW_FT = (W̃_V+ΔW̃_V) S (W̃_K+ΔW̃_K)ᵀ − W̃_V S W̃_Kᵀ``
    over query-example tokens, where W̃ = [W | b] (bias as an extra input column). Only models with separate key
    and value projections fed the same input are supported (``supported`` is False otherwise).
    """

    def __init__(self, model: nn.Module):
        base = unwrap_model(model)
        spec = get_architecture(base)
        self.supported = spec.kv.fused is None
        self.moments: list[torch.Tensor | None] = []
        self.positions: slice | None = None
        self._hooks = []
        if not self.supported:
            return
        self.key_modules = [getattr(m, spec.kv.key) for m in attention_modules(base)]
        self.value_modules = [getattr(m, spec.kv.value) for m in attention_modules(base)]
        self.moments = [None] * len(self.key_modules)
        for layer, module in enumerate(self.key_modules):
            self._hooks.append(module.register_forward_pre_hook(self._make_hook(layer)))

    def _make_hook(self, layer: int):
        def hook(module, args):
            if self.positions is None:
                return
            x = args[0][0, self.positions].detach().double()
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
            moment = (x.T @ x).cpu()
            self.moments[layer] = moment if self.moments[layer] is None else self.moments[layer] + moment

        return hook

    @contextlib.contextmanager
    def accumulate(self, positions: slice):
        self.positions = positions
        try:
            yield
        finally:
            self.positions = None

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


__all__ = ["AttentionProbe", "KVInputSecondMoment", "ProbeRecord", "unwrap_model"]
