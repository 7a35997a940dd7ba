"""KVTuningLayer: a projection plus full-rank additive deltas on its key/value output rows.

For a separate key or value projection the delta covers every output row. For a fused QKV projection it covers only
the K and V rows (`rows`), so the query rows have no trainable parameter at all: no optimizer (AdamW weight decay
included) can move them, and their outputs are bit-for-bit the base outputs.

Deltas are stored in [rows, in_features] orientation for `nn.Linear` and transformers' `Conv1D` alike (Conv1D keeps
its weight transposed, [in, out]; merging handles the transpose).
"""

import warnings

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D


def _in_out_features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(
        f"K/V tuning supports nn.Linear and transformers Conv1D projections; got {type(module).__name__}."
    )


class KVTuningLayer(nn.Module, BaseTunerLayer):
    adapter_layer_names = ("kv_tuning_weight", "kv_tuning_bias")
    other_param_names = ("kv_tuning_rows", "kv_tuning_roles")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        roles: list[tuple[str, torch.Tensor | None]],
        bias: bool,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.kv_tuning_weight = nn.ParameterDict({})
        self.kv_tuning_bias = nn.ParameterDict({})
        # adapter -> output rows the deltas add to (None: all rows); adapter -> [(role, n_rows), ...] in row order
        self.kv_tuning_rows: dict[str, torch.Tensor | None] = {}
        self.kv_tuning_roles: dict[str, list[tuple[str, int]]] = {}
        # adapter -> the base rows before merging, so unmerge restores them exactly (not by subtraction)
        self._premerge: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._active_adapter = adapter_name
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.in_features, self.out_features = _in_out_features(base_layer)
        self.update_layer(adapter_name, roles, bias)

    def update_layer(
        self, adapter_name: str, roles: list[tuple[str, torch.Tensor | None]], bias: bool
    ) -> None:
        """Add adapter `adapter_name`: zero deltas on the rows of each (role, rows) pair (rows=None: all rows)."""
        base = self.get_base_layer()
        row_sets = [torch.arange(self.out_features) if rows is None else rows for _, rows in roles]
        all_rows = torch.cat(row_sets)
        covers_everything = len(roles) == 1 and roles[0][1] is None
        weight = base.weight
        self.kv_tuning_weight[adapter_name] = nn.Parameter(
            torch.zeros(len(all_rows), self.in_features, dtype=weight.dtype, device=weight.device)
        )
        if bias and getattr(base, "bias", None) is not None:
            self.kv_tuning_bias[adapter_name] = nn.Parameter(
                torch.zeros(len(all_rows), dtype=weight.dtype, device=weight.device)
            )
        self.kv_tuning_rows[adapter_name] = None if covers_everything else all_rows.to(weight.device)
        self.kv_tuning_roles[adapter_name] = [(role, len(r)) for (role, _), r in zip(roles, row_sets)]
        self.set_adapter(self.active_adapters)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Check shapes before torch does: its "size mismatch ... copying a param" does not tell the user that the
        # adapter was trained for a base model of other dimensions.
        for group in self.adapter_layer_names:
            for adapter, parameter in getattr(self, group).items():
                key = f"{prefix}{group}.{adapter}"
                if key in state_dict and state_dict[key].shape != parameter.shape:
                    raise ValueError(
                        f"This K/V-tuning adapter does not fit the base model: {key} has shape "
                        f"{tuple(state_dict[key].shape)} in the adapter but {tuple(parameter.shape)} here (base layer "
                        f"{type(self.get_base_layer()).__name__} {self.in_features} -> {self.out_features}). The "
                        "adapter was trained on a model with other dimensions; load it onto the base model it was "
                        "trained for (adapter_config.json: base_model_name_or_path)."
                    )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _rows(self, adapter: str) -> torch.Tensor:
        rows = self.kv_tuning_rows[adapter]
        return (
            torch.arange(self.out_features, device=self.kv_tuning_weight[adapter].device)
            if rows is None
            else rows
        )

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The delta as a full weight in the base layer's own orientation (zero outside the K/V rows)."""
        delta = self.kv_tuning_weight[adapter]
        full = torch.zeros(self.out_features, self.in_features, dtype=delta.dtype, device=delta.device)
        full = full.index_add(0, self._rows(adapter), delta)
        return full.T if isinstance(self.get_base_layer(), Conv1D) else full

    def role_deltas(self, adapter: str) -> dict[str, torch.Tensor]:
        """{"k_weight", "k_bias", "v_weight", "v_bias"} (those present), weights as [rows, in_features]."""
        out, start = {}, 0
        weight, bias = self.kv_tuning_weight[adapter], self.kv_tuning_bias.get(adapter)
        for role, count in self.kv_tuning_roles[adapter]:
            out[f"{role}_weight"] = weight[start : start + count]
            if bias is not None:
                out[f"{role}_bias"] = bias[start : start + count]
            start += count
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        adapters = [a for a in self.active_adapters if a in self.kv_tuning_weight]
        if not adapters:
            return self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        if all(self.kv_tuning_weight[a].dtype == base.weight.dtype for a in adapters):
            return self._forward_effective_weight(x, adapters)
        # Deltas kept in another dtype than the base (peft upcasts adapters of bf16 models): add their output
        # separately so the base rows are still computed exactly as the base layer computes them.
        result = self.base_layer(x, *args, **kwargs)
        for adapter in adapters:
            weight = self.kv_tuning_weight[adapter]
            delta = nn.functional.linear(x.to(weight.dtype), weight, self.kv_tuning_bias.get(adapter))
            rows = self.kv_tuning_rows[adapter]
            if rows is None:
                result = result + delta.to(result.dtype)
            else:  # only the K/V outputs move; every other output element is left untouched
                result = result.index_add(-1, rows, delta.to(result.dtype))
        return result

    def _forward_effective_weight(self, x: torch.Tensor, adapters: list[str]) -> torch.Tensor:
        """One matmul with W + ΔW (K/V rows only) instead of the base matmul plus a second full-rank one.

        Cheaper than `base(x) + x ΔWᵀ` (an out×in add instead of a tokens×in×out GEMM, forward and backward), and
        still exact where it must be: with zero deltas W + 0 == W bit for bit, and rows outside the K/V rows are
        the base weight's own values (query rows of a fused projection never see a delta).
        """
        base = self.get_base_layer()
        transposed = isinstance(base, Conv1D)  # Conv1D stores [in, out]
        weight = base.weight.T if transposed else base.weight
        bias = getattr(base, "bias", None)
        for adapter in adapters:
            rows = self.kv_tuning_rows[adapter]
            delta = self.kv_tuning_weight[adapter]
            weight = weight + delta if rows is None else weight.index_add(0, rows, delta)
            if adapter in self.kv_tuning_bias and bias is not None:
                bias_delta = self.kv_tuning_bias[adapter]
                bias = bias + bias_delta if rows is None else bias.index_add(0, rows, bias_delta)
        return nn.functional.linear(x, weight, bias)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        transposed = isinstance(base, Conv1D)
        for adapter in adapter_names:
            if adapter not in self.kv_tuning_weight:
                continue
            rows = self._rows(adapter)
            weight_dim = 1 if transposed else 0
            saved_weight = base.weight.index_select(weight_dim, rows).clone()
            saved_bias = (
                base.bias.index_select(0, rows).clone() if getattr(base, "bias", None) is not None else None
            )
            delta = self.kv_tuning_weight[adapter].to(base.weight.dtype)
            merged_weight = base.weight.index_add(weight_dim, rows, delta.T if transposed else delta)
            if safe_merge and not torch.isfinite(merged_weight).all():
                raise ValueError(f"NaNs or infs appeared while merging adapter {adapter!r}; it seems broken.")
            base.weight.copy_(merged_weight)
            if adapter in self.kv_tuning_bias and saved_bias is not None:
                base.bias.index_add_(0, rows, self.kv_tuning_bias[adapter].to(base.bias.dtype))
            self._premerge[adapter] = (saved_weight, saved_bias)
            self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        weight_dim = 1 if isinstance(base, Conv1D) else 0
        while self.merged_adapters:  # newest first, so each restore sees the rows it saved
            adapter = self.merged_adapters.pop()
            saved_weight, saved_bias = self._premerge.pop(adapter)
            rows = self._rows(adapter)
            base.weight.index_copy_(weight_dim, rows, saved_weight)
            if saved_bias is not None:
                base.bias.index_copy_(0, rows, saved_bias)

    def __repr__(self) -> str:
        return "kv_tuning." + super().__repr__()
