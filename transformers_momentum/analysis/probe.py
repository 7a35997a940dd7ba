"""Record what the paper's metrics need from any causal LM's attention, and nothing more.

The probe registers one attention implementation, ``"tm_probe:<backend>"``, with transformers' `AttentionInterface`
(and the backend's mask function with `AttentionMaskInterface`: without that, `create_causal_mask` returns ``None``
and attention silently stops being causal). The registered function calls the model's own implementation with the
unchanged arguments, so logits are bit-identical to the bare model, and, while recording, reads per layer:

* ``eval`` mode, at one *analysis position* per recorded batch row: the scaled pre-softmax score row
  ``q·kᵀ·scaling`` over all keys up to and including that position (one row per head, O(T), never the T×T map;
  taken before the mask, as the code of Dai et al. 2023 does for its §4 metrics), and the scaled query vector (heads
  concatenated);
* ``train`` mode: the scaled queries of every token (the FT "training-token queries" of the Kendall comparison);
* in both, a forward hook on the attention module keeps its output (after the output projection, before the
  residual add) at the analysis position, and one on the query projection keeps its output (before any rotary
  embedding), scaled like the query.

Batches are right-padded: each recorded row names its own analysis index among the forward's new tokens, and every
key up to it is a real token. Models whose attention does not dispatch through the interface (bloom, falcon, xglm,
...) are detected with a two-token forward and fall back to module hooks with eager attention: the score row is then
the log of the eager attention probabilities, which equals the pre-softmax row up to a per-row constant (exact for
the Kendall ranking, approximate for SimAM), and the queries come from the query projection. Where the architecture
table says the scores are plain scaled dot products of the query and key projections (XGLM, the architecture of the
paper's own GPTs), the constant is recovered from the analysis token's own score ``q_t·k_t`` and the rows are exact
(up to the precision of the logarithm of the probabilities).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..architectures import text_config, unwrap_peft
from ..attention_interface import original_attention_function, register_wrapped_attention
from .errors import AnalysisInputError
from .geometry import AttentionGeometry

_PREFIX = "tm_probe:"


class _ScoresInside(TorchFunctionMode):
    """Entered for one attention module's forward: keeps the pre-softmax scores of the last attention it computes
    (the input of a softmax over keys, mask and positional bias included, or q·kᵀ·scale of an sdpa call)."""

    def __init__(self):
        super().__init__()
        self.scores: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.scaled_dot_product_attention:
            query, key = args[0].detach().float(), args[1].detach().float()
            key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
            scale = kwargs.get("scale") or query.shape[-1] ** -0.5
            with torch.autocast(query.device.type, enabled=False):  # fp32 scores under mixed precision too
                self.scores = query @ key.transpose(-1, -2) * scale
        elif func in (torch.softmax, nn.functional.softmax, torch.Tensor.softmax):
            self.scores = args[0].detach()
        return func(*args, **kwargs)


def _stack_if_same_width(vectors: list[torch.Tensor]) -> torch.Tensor | None:
    """(L, width) when every layer's vector has one width; None where layers differ (Gemma 4's wider global layers)."""
    return torch.stack(vectors) if len({v.shape for v in vectors}) == 1 else None


unwrap_model = unwrap_peft  # the transformers model inside a peft wrapper


@dataclass
class ProbeRecord:
    """What one batch row of an eval-mode forward recorded; per-layer lists indexed by layer.

    attention_output: (L, hidden) attention-module output at the analysis position.
    scores: L tensors (heads, keys up to the analysis position) of scaled pre-softmax scores.
    query: (L, heads*head_dim) scaled query at the analysis position (None in the fallback).
    projected_query: (L, heads*head_dim) the query projection's output before any rotary embedding, scaled like
        `query` (None when the attention module has no separate query projection).
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
    attention implementation. `geometry` is the model's `AttentionGeometry` (the engine hands down the one it
    computed; read from the model when not given).
    """

    def __init__(self, model: nn.Module, geometry: AttentionGeometry | None = None):
        self.model = model
        base = unwrap_model(model)
        self.geometry = geometry = geometry or AttentionGeometry.of(base)
        self.modules = list(geometry.modules)
        self.num_layers = len(self.modules)
        self._layer_of = {id(m): i for i, m in enumerate(self.modules)}
        self._mode: str | None = None
        self._rows: dict[int, int] = {}
        self._seen: set[int] = set()
        self._reset_buffers()
        # the text decoder's (a multimodal wrapper's own config may name another)
        self.original_implementation = text_config(base)._attn_implementation or "eager"
        backend = self.original_implementation
        if backend.startswith(_PREFIX):
            backend = backend[len(_PREFIX) :]
        register_wrapped_attention(_PREFIX + backend, backend, _probe_attention)
        for module in self.modules:
            module._tm_probe = self
        self._hooks = [m.register_forward_hook(self._output_hook) for m in self.modules]
        # Queries before the rotary embedding: with RoPE, q'_j·q of the FT Kendall side also depends on the two
        # tokens' positions, which the paper's absolute-position GPT did not have.
        projections = geometry.query_projections
        self.has_projected_queries = all(p is not None for p in projections)
        if self.has_projected_queries:
            self._hooks += [
                module.register_forward_hook(self._make_projection_hook(i, scaling))
                for i, (module, scaling) in enumerate(projections)
            ]
        # Models that compute attention in their own modules say so (and warn when asked to switch): skip the switch.
        switchable = getattr(base, "_can_set_attn_implementation", lambda: True)()
        if switchable:
            base.set_attn_implementation(_PREFIX + backend)
        self.fallback = not switchable or not self._dispatches_through_interface()
        # Exact score rows off the interface: the analysis token's own score fixes each row's softmax constant.
        self.exact_scores = not self.fallback
        if self.fallback:
            if switchable:
                base.set_attn_implementation("eager")
            # Modules off the interface that return no probabilities (Falcon, TrOCR, ...): their scores are read
            # from inside their forward (the softmax input, or the q·kᵀ of their own sdpa call).
            self._inside: dict[int, _ScoresInside] = {}
            self._hooks += [m.register_forward_pre_hook(self._enter_scores) for m in self.modules]
            key_name = geometry.spec.kv.key
            if geometry.plain_scores and self.has_projected_queries and key_name is not None:
                self.exact_scores = True
                self._hooks += [
                    getattr(m, key_name).register_forward_hook(self._make_key_hook(i))
                    for i, m in enumerate(self.modules)
                ]

    # ------------------------------------------------------------------------------------------ capture

    def _reset_buffers(self) -> None:
        layers = range(self.num_layers)
        self._outputs: list[dict[int, torch.Tensor]] = [{} for _ in layers]
        self._scores: list[dict[int, torch.Tensor]] = [{} for _ in layers]
        self._queries: list[dict[int, torch.Tensor]] = [{} for _ in layers]
        self._projected: list[dict[int, torch.Tensor]] = [{} for _ in layers]
        self._own_keys: list[dict[int, torch.Tensor]] = [{} for _ in layers]
        self._train_queries: list[torch.Tensor | None] = [None] * self.num_layers
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
        # Autocast off: under the engine's mixed precision the einsum below would run (and return) in bf16.
        with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
            if self._mode == "train":
                # (batch 1, heads, T, d) -> (T, heads*d), scaled as in the paper's code (q·head_dim^-0.5).
                self._train_queries[layer] = (
                    (query[0].detach().float() * scaling).transpose(0, 1).flatten(1).cpu()
                )
                return
            q_len, total = query.shape[2], key.shape[2]
            for row, index in self._rows.items():
                index %= q_len
                position = total - q_len + index  # absolute position of the analysis token among the keys
                q_row = query[row, :, index].detach().float()  # (H, d)
                keys = key[row, :, : position + 1].detach().float()  # (H_kv, T', d)
                groups = q_row.shape[0] // keys.shape[0]
                scores = torch.einsum("kgd,ktd->kgt", q_row.view(keys.shape[0], groups, -1), keys) * scaling
                self._scores[layer][row] = scores.reshape(q_row.shape[0], -1).cpu()
                self._queries[layer][row] = (q_row * scaling).flatten().cpu()

    def _output_hook(self, module, args, output) -> None:
        if self._mode != "eval":
            return
        layer = self._layer_of[id(module)]
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        q_len = hidden.shape[1]
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        inside = self._inside.pop(id(module), None) if self.fallback else None
        if inside is not None:
            inside.__exit__(None, None, None)
            if weights is None and inside.scores is not None:
                self._keep_inside_scores(layer, inside.scores, hidden.shape[0])
                weights = False  # scores taken: skip the probabilities below
        for row, index in self._rows.items():
            index %= q_len
            self._outputs[layer][row] = hidden[row, index].detach().float().cpu()
            if self.fallback and weights is not False:
                if weights is None:
                    raise AnalysisInputError(
                        f"{type(module).__name__} does not dispatch through the attention interface and returned no "
                        "attention weights in eager mode; the probe cannot read its scores."
                    )
                probabilities = weights[row, :, index].detach().float()
                position = probabilities.shape[-1] - q_len + index
                scores = probabilities[:, : position + 1].clamp_min(1e-45).log().cpu()
                if (
                    self.exact_scores
                ):  # s_j = log p_j - log p_t + s_t, with s_t = q_t·k_t the token's own score
                    query, key = self._projected[layer][row], self._own_keys[layer][row]
                    heads, kv_heads = scores.shape[0], key.numel() // (query.numel() // scores.shape[0])
                    own = (
                        (query.view(kv_heads, heads // kv_heads, -1) * key.view(kv_heads, 1, -1))
                        .sum(-1)
                        .flatten()
                    )
                    scores = scores - scores[:, -1:] + own[:, None]
                self._scores[layer][row] = scores

    def _keep_inside_scores(self, layer: int, scores: torch.Tensor, batch: int) -> None:
        scores = scores.reshape(batch, -1, *scores.shape[-2:])  # (batch, heads, queries, keys)
        q_len = scores.shape[-2]
        for row, index in self._rows.items():
            index %= q_len
            position = scores.shape[-1] - q_len + index
            self._scores[layer][row] = scores[row, :, index, : position + 1].detach().float().cpu()

    def _enter_scores(self, module, args) -> None:
        if self._mode == "eval":
            self._inside[id(module)] = _ScoresInside().__enter__()

    def _make_projection_hook(self, layer: int, scaling: float):
        def hook(projection, args, output):
            if self._mode not in ("eval", "train"):
                return
            with torch.no_grad():
                if self._mode == "train":
                    self._train_projected[layer] = (output[0].detach().float() * scaling).cpu()
                    return
                for row, index in self._rows.items():
                    self._projected[layer][row] = (
                        output[row, index % output.shape[1]].detach().float() * scaling
                    ).cpu()

        return hook

    def _make_key_hook(self, layer: int):
        def hook(projection, args, output):
            if self._mode != "eval":
                return
            for row, index in self._rows.items():
                self._own_keys[layer][row] = output[row, index % output.shape[1]].detach().float().cpu()

        return hook

    def _dispatches_through_interface(self) -> bool:
        base = unwrap_model(self.model)
        start = 0  # any valid token id: only the dispatch matters
        self._seen = set()
        self._mode = "ping"
        try:
            with torch.no_grad():
                # the embeddings' execution device: `base.device` is meta when they are offloaded
                ids = torch.tensor([[start, start]], device=self.geometry.input_device)
                base(input_ids=ids, use_cache=False)
        finally:
            self._mode = None
        return len(self._seen) == self.num_layers

    # ------------------------------------------------------------------------------------------ public

    @contextlib.contextmanager
    def record_eval(self, positions: int | dict[int, int] = -1):
        """Record one eval forward. `positions` maps batch rows to their analysis index among the forward's new
        tokens (an int: row 0 only; -1 = the last token)."""
        self._reset_buffers()
        self._rows = {0: positions} if isinstance(positions, int) else dict(positions)
        self._mode = "eval"
        try:
            yield self
        finally:
            self._mode = None

    def eval_records(self) -> dict[int, ProbeRecord]:
        """The last recorded eval forward, per recorded batch row."""
        records = {}
        for row in self._rows:
            if any(row not in o for o in self._outputs) or any(row not in s for s in self._scores):
                raise RuntimeError("The probe did not see every layer in the last recorded forward.")
            queries = None
            if not self.fallback and all(row in q for q in self._queries):
                queries = _stack_if_same_width([q[row] for q in self._queries])
            projected = None
            if all(row in q for q in self._projected):
                projected = _stack_if_same_width([q[row] for q in self._projected])
            records[row] = ProbeRecord(
                torch.stack([o[row] for o in self._outputs]),
                [s[row] for s in self._scores],
                queries,
                projected,
            )
        return records

    def eval_record(self) -> ProbeRecord:
        """The record of the first recorded row of the last eval forward."""
        return self.eval_records()[next(iter(self._rows))]

    @contextlib.contextmanager
    def record_train(self):
        """Record the scaled queries of every token of one (batch-1) training forward."""
        if self.fallback and not self.has_projected_queries:
            raise AnalysisInputError(
                "Training-token queries need a model that dispatches through the attention interface or has a "
                "separate query projection."
            )
        self._reset_buffers()
        self._mode = "train"
        try:
            yield self
        finally:
            self._mode = None

    def train_queries(self) -> list[torch.Tensor] | None:
        """Per layer (T, heads*head_dim) scaled queries of the last recorded training forward (None in the fallback)."""
        if self.fallback:
            return None
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


__all__ = ["AttentionProbe", "ProbeRecord", "unwrap_model"]
