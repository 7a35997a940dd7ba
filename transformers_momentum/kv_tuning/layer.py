"""KVTuningLayer: a projection plus full-rank additive deltas on its key/value output rows.

For a separate key or value projection the delta covers every output row. For a fused projection it covers only the
K and V rows, so the query rows have no trainable parameter at all: no optimizer (AdamW weight decay included) can
move them, and their outputs are bit-for-bit the base outputs.

Deltas are stored as [rows, in_features] whatever the base layer's orientation; `fan_in_fan_out` (peft's flag,
True for transformers' `Conv1D`, which stores its weight as [in, out]) says how to line them up with the weight.

Precision and placement, as mixed-precision training does it: deltas are at least fp32 whatever the base weight's
dtype (a bf16 delta rounds away every update below 2^-8 of its own size), and a half-precision base layer gets the
deltas' output added in fp32 and cast once to its output dtype. Deltas live on the device where the base weight is
used: its own device, or, for a projection offloaded by accelerate (weight on the meta device between forwards,
loaded by its `_hf_hook`), the hook's execution device.
"""

import warnings

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from peft.utils.other import transpose
from torch import nn


def delta_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype deltas are kept in for a base weight of `weight_dtype`: at least fp32 (fp64 stays fp64)."""
    if not weight_dtype.is_floating_point:  # quantized bases store integers
        return torch.float32
    return torch.promote_types(weight_dtype, torch.float32)


def hook_execution_device(module: nn.Module) -> torch.device | None:
    """The execution device of accelerate's hook on `module` (None without one): where an offloaded module's
    weights are loaded for its forward. accelerate names accelerators by index; `torch.device(0)` maps an index to
    the current accelerator type, as accelerate does."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):  # a SequentialHook
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def execution_device(module: nn.Module) -> torch.device:
    """Where `module`'s weight is used: the execution device of its accelerate hook when it is offloaded (the
    weight itself is then on meta), else the weight's own device (meta only for a model built on meta)."""
    weight = module.weight
    if weight.device.type == "meta":
        return hook_execution_device(module) or weight.device
    return weight.device


class KVTuningLayer(nn.Module, BaseTunerLayer):
    adapter_layer_names = ("kv_tuning_weight", "kv_tuning_bias")
    other_param_names = ("kv_tuning_rows", "kv_tuning_roles", "kv_tuning_all_rows")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        roles: dict[str, torch.Tensor | None],
        train_bias: bool,
        fan_in_fan_out: bool = False,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = fan_in_fan_out
        self.kv_tuning_weight = nn.ParameterDict({})
        self.kv_tuning_bias = nn.ParameterDict({})
        # adapter -> the output rows its deltas add to, in delta order (not saved: they follow from the architecture)
        self.kv_tuning_rows = BufferDict({}, persistent=False)
        # adapter -> [(role, number of rows), ...] in delta order
        self.kv_tuning_roles: dict[str, list[tuple[str, int]]] = {}
        # adapter -> its deltas cover every output row in order (a separate key or value projection)
        self.kv_tuning_all_rows: dict[str, bool] = {}
        # adapter -> the rows again, on the CPU and unregistered, so that no device move (peft's to the meta device
        # of an offloaded base weight) can take them away
        self._row_indices: dict[str, torch.Tensor] = {}
        # adapter -> the base rows before merging, so unmerge restores them exactly (not by subtraction)
        self._premerge: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._active_adapter = adapter_name
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.in_features, self.out_features = _get_in_out_features(self.get_base_layer())
        if self.in_features is None:
            raise TypeError(
                "K/V tuning supports nn.Linear and transformers' Conv1D projections; got "
                f"{type(self.get_base_layer()).__name__}."
            )
        self.update_layer(adapter_name, roles, train_bias)

    def update_layer(
        self, adapter_name: str, roles: dict[str, torch.Tensor | None], train_bias: bool
    ) -> None:
        """Add adapter `adapter_name`: zero deltas on the rows of each role (rows None: every row)."""
        base = self.get_base_layer()
        device, dtype = execution_device(base), delta_dtype(base.weight.dtype)
        row_sets = {role: torch.arange(self.out_features) if r is None else r for role, r in roles.items()}
        rows = torch.cat(list(row_sets.values()))
        self.kv_tuning_weight[adapter_name] = nn.Parameter(
            torch.zeros(len(rows), self.in_features, dtype=dtype, device=device)
        )
        if train_bias and getattr(base, "bias", None) is not None:
            self.kv_tuning_bias[adapter_name] = nn.Parameter(
                torch.zeros(len(rows), dtype=dtype, device=device)
            )
        self.kv_tuning_rows[adapter_name] = rows.to(device if device.type != "meta" else torch.device("cpu"))
        self._row_indices[adapter_name] = rows
        self.kv_tuning_roles[adapter_name] = [(role, len(r)) for role, r in row_sets.items()]
        self.kv_tuning_all_rows[adapter_name] = len(roles) == 1 and next(iter(roles.values())) is None
        self.set_adapter(self.active_adapters)

    def place_on_execution_device(self) -> None:
        """Put deltas that ended up on the meta device back where the base weight executes, as zeros.

        peft's `BaseTuner._replace_module` moves a new adapter to its base weight's device, which for an offloaded
        projection is meta: the deltas would then have no storage. Fresh deltas are zero, so nothing is lost.
        """
        device = execution_device(self.get_base_layer())
        if device.type == "meta":
            return  # a model built on meta: its deltas are materialised with it
        for group in self.adapter_layer_names:
            parameters = getattr(self, group)
            for adapter, parameter in list(parameters.items()):
                if parameter.is_meta:
                    parameters[adapter] = nn.Parameter(
                        torch.zeros(parameter.shape, dtype=parameter.dtype, device=device),
                        requires_grad=parameter.requires_grad,
                    )
        for adapter, rows in list(self.kv_tuning_rows.items()):
            if rows.is_meta:
                self.kv_tuning_rows[adapter] = self._row_indices[adapter].to(device)

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

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The delta as a full weight in the base layer's own orientation (zero outside the K/V rows)."""
        delta = self.kv_tuning_weight[adapter]
        full = torch.zeros(self.out_features, self.in_features, dtype=delta.dtype, device=delta.device)
        full = full.index_add(0, self.kv_tuning_rows[adapter].to(delta.device), delta)
        return transpose(full, self.fan_in_fan_out)

    def role_deltas(self, adapter: str) -> dict[str, torch.Tensor]:
        """{"k_weight", "k_bias", "v_weight", "v_bias", ...} (those present), weights as [rows, in_features]."""
        out, start = {}, 0
        weight, bias = self.kv_tuning_weight[adapter], self.kv_tuning_bias.get(adapter)
        for role, count in self.kv_tuning_roles[adapter]:
            out[f"{role}_weight"] = weight[start : start + count]
            if bias is not None:
                out[f"{role}_bias"] = bias[start : start + count]
            start += count
        return out

    def _can_fold(self, adapters: list[str]) -> bool:
        """True when the deltas can be added to the base weight inside this forward: a plain projection whose weight
        is materialised here (not on the meta device behind an accelerate offload hook) in the deltas' dtype."""
        base = self.get_base_layer()
        weight = getattr(base, "weight", None)
        return (
            isinstance(weight, torch.Tensor)
            and weight.device.type != "meta"
            and getattr(base, "_hf_hook", None) is None
            and all(self.kv_tuning_weight[a].dtype == weight.dtype for a in adapters)
        )

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
        # Under autocast the folded W + ΔW would be cast to half precision as a whole, rounding away every ΔW below
        # W's resolution; the separate output below keeps the delta's contribution at its own precision.
        if self._can_fold(adapters) and not torch.is_autocast_enabled(x.device.type):
            return self._forward_effective_weight(x, adapters)
        # Deltas in a wider dtype than the base (fp32 deltas of a bf16 model), or a base layer whose weight only
        # exists inside its own forward (offloaded): add the deltas' output separately, so the base rows are still
        # computed exactly as the base layer computes them. The sum is formed in the deltas' precision and rounded
        # once to the output dtype (as autocast does), not the delta output rounded first and the sum again.
        base_output = self.base_layer(x, *args, **kwargs)
        result = base_output
        for adapter in adapters:
            weight = self.kv_tuning_weight[adapter]
            with torch.autocast(x.device.type, enabled=False):  # the delta's output in the delta's precision
                delta = nn.functional.linear(x.to(weight.dtype), weight, self.kv_tuning_bias.get(adapter))
            rows = self.kv_tuning_rows[adapter].to(result.device)
            # only the K/V outputs move; every other output element is left untouched (x + 0 == x in any dtype)
            result = result.to(torch.promote_types(result.dtype, delta.dtype))
            result = result.index_add(-1, rows, delta.to(result.dtype))
        return result.to(base_output.dtype)

    def _forward_effective_weight(self, x: torch.Tensor, adapters: list[str]) -> torch.Tensor:
        """The base layer's own forward with W + ΔW (K/V rows only): one matmul instead of the base matmul plus a
        second full-rank one.

        Cheaper than `base(x) + x ΔWᵀ` (an out×in add instead of a tokens×in×out GEMM, forward and backward), and
        exact where it must be: the base layer's own code runs (`Conv1D`'s addmm, `Linear`'s linear), with zero
        deltas W + 0 == W bit for bit, and rows outside the K/V rows are the base weight's own values (query rows of
        a fused projection never see a delta).
        """
        base = self.get_base_layer()
        row_dim = 1 if self.fan_in_fan_out else 0  # where the output rows are in the stored weight
        weight, bias = base.weight, getattr(base, "bias", None)
        for adapter in adapters:
            delta, rows = self.kv_tuning_weight[adapter], self.kv_tuning_rows[adapter]
            covers_all = self.kv_tuning_all_rows[adapter]
            delta = (
                delta.T if self.fan_in_fan_out else delta
            )  # (not peft's `transpose`: it re-wraps Parameters)
            weight = weight + delta if covers_all else weight.index_add(row_dim, rows, delta)
            if adapter in self.kv_tuning_bias and bias is not None:
                bias_delta = self.kv_tuning_bias[adapter]
                bias = bias + bias_delta if covers_all else bias.index_add(0, rows, bias_delta)
        parameters = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return torch.func.functional_call(base, parameters, (x,))

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        row_dim = 1 if self.fan_in_fan_out else 0  # where the output rows are in the stored weight
        for adapter in adapter_names:
            if adapter not in self.kv_tuning_weight:
                continue
            rows = self.kv_tuning_rows[adapter].to(base.weight.device)
            saved_weight = base.weight.index_select(row_dim, rows).clone()
            has_bias = getattr(base, "bias", None) is not None
            saved_bias = base.bias.index_select(0, rows).clone() if has_bias else None
            delta = transpose(self.kv_tuning_weight[adapter].to(base.weight), self.fan_in_fan_out)
            merged_weight = base.weight.index_add(row_dim, rows, delta)
            if safe_merge and not torch.isfinite(merged_weight).all():
                raise ValueError(f"NaNs or infs appeared while merging adapter {adapter!r}; it seems broken.")
            base.weight.copy_(merged_weight)
            if adapter in self.kv_tuning_bias and has_bias:
                base.bias.index_add_(0, rows, self.kv_tuning_bias[adapter].to(base.bias))
            self._premerge[adapter] = (saved_weight, saved_bias)
            self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        row_dim = 1 if self.fan_in_fan_out else 0
        while self.merged_adapters:  # newest first, so each restore sees the rows it saved
            adapter = self.merged_adapters.pop()
            saved_weight, saved_bias = self._premerge.pop(adapter)
            rows = self.kv_tuning_rows[adapter].to(base.weight.device)
            base.weight.index_copy_(row_dim, rows, saved_weight)
            if saved_bias is not None:
                base.bias.index_copy_(0, rows, saved_bias)

    def __repr__(self) -> str:
        return "kv_tuning." + super().__repr__()
