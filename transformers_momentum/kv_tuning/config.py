"""KVTuningConfig: train only the attention key and value projections (Dai et al. 2023, §2.7)."""

from dataclasses import dataclass, field

from peft.config import PeftConfig

from .peft_type import KV_TUNING

_TARGETS = ("kv", "k", "v")


@dataclass
class KVTuningConfig(PeftConfig):
    """Full-rank additive deltas on W_K and W_V (and their biases) of every selected layer; nothing else trains.

    Args:
        targets: `"kv"` (keys and values, the paper's setting), `"k"` or `"v"`.
        train_bias: also train bias deltas where the projection has a bias (the paper does). (Not `bias`: peft
            reserves that name for its own "none"/"all" option.)
        layers_to_transform: layer indices to adapt (default: all layers).
        key_module / value_module: attribute names of separate key/value projections inside the attention module,
            overriding the architecture table (e.g. `"k_proj"`, `"v_proj"`).
        fused_module / fused_layout: name of a fused QKV projection and the order of its outputs (a key of
            `transformers_momentum.architectures.FUSED_LAYOUTS`), overriding the table.
        target_modules: peft's usual way to name modules: `["k_proj", "v_proj"]` means key_module="k_proj",
            value_module="v_proj". After wrapping it holds the full paths of the wrapped modules (what peft saves).
    """

    targets: str = field(default="kv", metadata={"help": "'kv', 'k' or 'v'"})
    train_bias: bool = field(
        default=True, metadata={"help": "Also train bias deltas where the projection has one."}
    )
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
        default=None, metadata={"help": "Layout of the fused projection's outputs."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "[key, value] projection names (same as key_module/value_module); resolved to full paths."
        },
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
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
                "fused_module and fused_layout go together: name the fused projection and its layout."
            )
        if (self.key_module is None) != (self.value_module is None):
            raise ValueError("key_module and value_module go together: name both separate projections.")
        if self.key_module is not None and self.fused_module is not None:
            raise ValueError("Name either separate key/value projections or one fused projection, not both.")
        if self.target_modules is not None and self.key_module is None and self.fused_module is None:
            # peft users name modules with target_modules; for this method that means [key name, value name].
            # (Once resolved, target_modules holds full module paths and key_module/fused_module are set.)
            names = (
                [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)
            )
            if len(names) != 2 or any("." in name for name in names):
                raise ValueError(
                    f"target_modules={self.target_modules!r}: K/V tuning expects [key name, value name] of separate "
                    "projections, e.g. ['k_proj', 'v_proj']. For a fused QKV projection use "
                    "KVTuningConfig(fused_module=..., fused_layout=...) with a layout from "
                    "transformers_momentum.architectures.FUSED_LAYOUTS."
                )
            self.key_module, self.value_module = names
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
