"""Wrapping a model's own attention function through transformers' attention interface.

Two parts of the plugin need to run code *around* whatever attention a model already uses: the momentum retrofit
(adds a term to the output) and the analyzer's probe (records score rows). Both register a new name with
`AttentionInterface` whose function calls the model's original one. Two details make this work on any model:

* "eager" is not in the global registry: every modeling file defines its own `eager_attention_forward`, passed as
  the default to `get_interface`. We look it up in the attention module's own Python module.
* The new name must also be registered with `AttentionMaskInterface`, using the wrapped backend's mask function;
  otherwise `create_causal_mask` returns `None` and attention silently stops being causal.
"""

import sys
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def original_attention_function(module: torch.nn.Module, implementation: str) -> AttentionFunction:
    """The function `module` would call for `implementation` (its own eager function for "eager")."""
    if implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if implementation == "eager" and eager is not None:
        return eager
    raise ValueError(
        f"{type(module).__name__} asked for attention implementation {implementation!r}, which neither the "
        "attention interface nor its modeling file provides."
    )


def register_wrapped_attention(name: str, base_implementation: str, function: AttentionFunction) -> None:
    """Register `function` as attention implementation `name`, masked like `base_implementation`."""
    if base_implementation not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"Cannot wrap attention implementation {base_implementation!r}: it has no mask function. "
            f"Known: {sorted(ALL_MASK_ATTENTION_FUNCTIONS.keys())}."
        )
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_implementation])


def base_implementation(implementation: str, prefix: str) -> str:
    """'momentum:sdpa' -> 'sdpa' (names we registered carry the wrapped backend after the prefix)."""
    return implementation[len(prefix) :] if implementation.startswith(prefix) else implementation
