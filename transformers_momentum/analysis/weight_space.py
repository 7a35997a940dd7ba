"""The relaxed-linear-attention dual form in weight space (Dai et al. 2023, §3.1-3.2), compared per layer and head.

Dropping the softmax, attention to the demonstrations adds ``ΔW_ICL = W_V X' (W_K X')ᵀ`` to the zero-shot
``W_ZSL = W_V X (W_K X)ᵀ``, and K/V finetuning adds ``ΔW_FT = (W_V+ΔW_V) X Xᵀ (W_K+ΔW_K)ᵀ − W_V X Xᵀ W_Kᵀ``. With the
biases as an extra input column (W̃ = [W | b], x̃ = [x; 1]) both only need the second moments ``S = Σ_t x̃_t x̃_tᵀ`` of
the K/V projections' input: over the demonstration tokens for ICL, over the query-example tokens for FT.
:class:`KVInputSecondMoment` streams them; :func:`weight_space_cosines` compares the two updates head by head.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..kv_tuning import kv_deltas
from .geometry import AttentionGeometry
from .metrics import head_cosines


def _stored(module: nn.Module, name: str) -> torch.Tensor | None:
    """`module`'s tensor `name` as stored: an offloaded module (accelerate's hook, weights on the meta device between
    forwards) keeps the values in its hook's weights map, in CPU memory or on disk."""
    tensor = getattr(module, name, None)
    if isinstance(tensor, torch.Tensor) and tensor.is_meta:
        weights_map = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        if weights_map is not None and name in weights_map:
            return weights_map[name]
    return tensor


class KVInputSecondMoment:
    """Streams ``S_l = Σ_t x̃_t x̃_tᵀ`` of the key/value projections' input x̃ = [x; 1], per layer, in float64.

    Only models with separate key and value projections fed the same input are supported (``supported`` is False
    otherwise). Inside :meth:`accumulate`, every forward adds the tokens selected by its mask. `geometry` is the
    model's `AttentionGeometry` (read from the model when not given).
    """

    def __init__(self, model: nn.Module, geometry: AttentionGeometry | None = None):
        self.geometry = geometry = geometry or AttentionGeometry.of(model)
        self.supported = geometry.separate_kv
        self.moments: list[torch.Tensor | None] = []
        self.mask: torch.Tensor | None = None
        self._hooks = []
        if not self.supported:
            return
        self.key_modules = geometry.key_modules()
        self.value_modules = geometry.value_modules()
        self.moments = [None] * len(self.key_modules)
        for layer, module in enumerate(self.key_modules):
            self._hooks.append(module.register_forward_pre_hook(self._make_hook(layer)))

    def _make_hook(self, layer: int):
        def hook(module, args):
            if self.mask is None:
                return
            x = args[0].detach()[self.mask.to(args[0].device)].double()  # (selected tokens, hidden)
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
            moment = (x.T @ x).cpu()
            self.moments[layer] = moment if self.moments[layer] is None else self.moments[layer] + moment

        return hook

    @contextlib.contextmanager
    def accumulate(self, mask: torch.Tensor):
        """Add the tokens where the (batch, new tokens) boolean `mask` is True, during the forwards inside."""
        self.mask = mask
        try:
            yield
        finally:
            self.mask = None

    def take(self) -> list[torch.Tensor | None]:
        """The moments accumulated so far; the accumulator restarts from zero."""
        moments, self.moments = self.moments, [None] * len(self.moments)
        return moments

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def weight_space_cosines(
    peft_model: nn.Module, moments: KVInputSecondMoment, demo_moment, query_moment
) -> list[list[float]] | None:
    """Per layer and key/value head: cos(ΔW_ICL, ΔW_FT) with the deltas currently loaded in `peft_model`."""
    if not moments.supported or demo_moment is None or query_moment is None:
        return None
    if any(m is None for m in demo_moment) or any(m is None for m in query_moment):
        return None
    deltas = kv_deltas(peft_model)
    head_dim = moments.geometry.head_dim
    result = []
    for layer, (key_module, value_module) in enumerate(
        zip(moments.key_modules, moments.value_modules, strict=True)
    ):
        tilde = []
        for module, role in ((key_module, "k"), (value_module, "v")):
            inner = getattr(module, "base_layer", module)
            weight = _stored(inner, "weight").detach().double().cpu()
            stored_bias = _stored(inner, "bias")
            bias = (
                stored_bias.detach().double().cpu()
                if stored_bias is not None
                else torch.zeros(weight.shape[0], dtype=torch.float64)
            )
            delta = deltas.get(layer, {})
            d_weight = delta.get(f"{role}_weight", torch.zeros_like(weight)).detach().double().cpu()
            d_bias = delta.get(f"{role}_bias", torch.zeros_like(bias)).detach().double().cpu()
            tilde.append((torch.cat([weight, bias[:, None]], 1), torch.cat([d_weight, d_bias[:, None]], 1)))
        (w_k, d_k), (w_v, d_v) = tilde
        icl = w_v @ demo_moment[layer] @ w_k.T
        ft = (w_v + d_v) @ query_moment[layer] @ (w_k + d_k).T - w_v @ query_moment[layer] @ w_k.T
        blocks = [slice(h * head_dim, (h + 1) * head_dim) for h in range(w_k.shape[0] // head_dim)]
        icl_heads = torch.stack([icl[b, b] for b in blocks])  # (kv heads, d, d): W_V,h S W_K,hᵀ per head
        ft_heads = torch.stack([ft[b, b] for b in blocks])
        result.append([float(c) for c in head_cosines(icl_heads, ft_heads)])
    return result


__all__ = ["KVInputSecondMoment", "weight_space_cosines"]
