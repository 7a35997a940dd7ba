"""KVTuningConfig: train only the attention key and value projections (Dai et al. 2023, §3.3)."""

from dataclasses import dataclass, field

from peft.config import PeftConfig

from .peft_type import KV_TUNING

_TARGETS = ("kv", "k", "v")
_LEGACY_LAYOUTS = {"contiguous_qkv": "qkv", "grouped_qkv": "falcon"}


@dataclass
class KVTuningConfig(PeftConfig):
    """Full-rank additive deltas on W_K and W_V (and their biases) of every softmax-attention layer; nothing else
    trains. Where keys and values come from a fused projection, only its K and V rows get deltas.

    Which projections hold the keys and values, and which of their output rows, comes from
    `transformers_momentum.architectures` (its table, else automatic detection).

    Args:
        targets: `"kv"` (keys and values, the paper's setting), `"k"` or `"v"`.
        train_bias: also train bias deltas where the projection has a bias (the paper does). (Not `bias`: peft
            reserves that name for its own "none"/"all" option.)
        target_modules: peft's selection, with peft's semantics (a list of module-name suffixes, or a regex matched
            against full module names), applied to the key/value projections of the attention layers: modules
            outside them (a vision tower's `k_proj`, a linear-attention layer's) never match. Default: all of them.
        exclude_modules, layers_to_transform, layers_pattern: peft's, with peft's semantics.
        key_module / value_module: names of separate key/value projections inside the attention module, for models
            the architecture table does not know and detection does not find (e.g. `"k_proj"`, `"v_proj"`).
        fused_module / fused_layout: name of a fused projection holding K and V rows and its row layout (a key of
            `transformers_momentum.architectures.ROW_LAYOUTS`, e.g. `"qkv"`), likewise.
        fan_in_fan_out: peft's flag for projections that store their weight as [in, out] (transformers' `Conv1D`, as
            in GPT-2); set from the model when wrapping.
    """

    targets: str = field(default="kv", metadata={"help": "'kv', 'k' or 'v'"})
    train_bias: bool = field(
        default=True, metadata={"help": "Also train bias deltas where the projection has one."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Which key/value projections to adapt (peft semantics); default: all of them."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Layer indices to adapt."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the ModuleList of blocks."}
    )
    key_module: str | None = field(default=None, metadata={"help": "Separate key projection name."})
    value_module: str | None = field(default=None, metadata={"help": "Separate value projection name."})
    fused_module: str | None = field(default=None, metadata={"help": "Fused QKV projection name."})
    fused_layout: str | None = field(
        default=None, metadata={"help": "Row layout of the fused projection (see architectures.ROW_LAYOUTS)."}
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "The projections store their weight as [in, out] (Conv1D)."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules to train and save."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = KV_TUNING
        if self.task_type is None:
            self.task_type = "CAUSAL_LM"
        if self.targets not in _TARGETS:
            raise ValueError(f"targets must be one of {_TARGETS}; got {self.targets!r}.")
        if (self.fused_module is None) != (self.fused_layout is None):
            raise ValueError(
                "fused_module and fused_layout go together: name the fused projection and its row layout."
            )
        if (self.key_module is None) != (self.value_module is None):
            raise ValueError("key_module and value_module go together: name both separate projections.")
        if self.key_module is not None and self.fused_module is not None:
            raise ValueError("Name either separate key/value projections or one fused projection, not both.")
        # Row-layout names adapters saved by transformers-momentum 0.1.0 carry
        self.fused_layout = _LEGACY_LAYOUTS.get(self.fused_layout, self.fused_layout)
        if self.fused_layout is not None:
            from ..architectures import ROW_LAYOUTS

            if self.fused_layout not in ROW_LAYOUTS:
                raise ValueError(
                    f"fused_layout={self.fused_layout!r} is not a row layout; use one of {sorted(ROW_LAYOUTS)}."
                )
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
