"""Per-architecture knowledge, in one table: where the decoder blocks, attention, K/V projections and final norm are.

The K/V tuner, the analyzer's controls (untrained model, layer-causal finetuning) and the probe all read this table
instead of growing their own if-chains. Models missing from it are detected automatically where possible (decoder
blocks in a ModuleList, separate key/value projections by common names); when that fails the error says what was
looked for and how to name the modules explicitly.

Fused QKV projections put K and V rows at architecture-specific output positions. `FUSED_LAYOUTS` maps a layout
name to a function returning those row indices, so supporting a new fused model is one table line.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class KVLayout:
    """Where the key and value projections of one attention module live.

    Either `key` and `value` name separate projections (attributes of the attention module), or `fused` names one
    projection producing Q, K and V, with `fused_layout` (a key of `FUSED_LAYOUTS`) giving the order of its outputs.
    """

    key: str | None = None
    value: str | None = None
    fused: str | None = None
    fused_layout: str | None = None

    def __post_init__(self):
        separate = self.key is not None and self.value is not None
        fused = self.fused is not None and self.fused_layout is not None
        if separate == fused:
            raise ValueError(
                "A KVLayout names either separate key/value projections (key=..., value=...) or one fused projection "
                f"with its layout (fused=..., fused_layout=...); got {self}."
            )
        if self.fused_layout is not None and self.fused_layout not in FUSED_LAYOUTS:
            raise ValueError(f"Unknown fused_layout {self.fused_layout!r}; known: {sorted(FUSED_LAYOUTS)}.")

    @property
    def module_names(self) -> tuple[str, ...]:
        return (self.fused,) if self.fused is not None else (self.key, self.value)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Dotted paths from a `*ForCausalLM` object to the parts the plugin needs."""

    layers: str  # the nn.ModuleList of decoder blocks
    attention: str  # attribute of one block holding its attention module
    final_norm: str  # the norm applied before the LM head
    kv: KVLayout


# ------------------------------------------------------------------------------------------------ fused layouts


def _heads(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) from a transformers config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or getattr(text, "num_kv_heads", None) or n_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return n_heads, n_kv, head_dim


def _contiguous_qkv(config) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q (heads*d) | K (kv*d) | V (kv*d)]: GPT-2 `c_attn`, Phi-3 `qkv_proj` (GQA), Falcon multi-query."""
    n_heads, n_kv, head_dim = _heads(config)
    q, kv = n_heads * head_dim, n_kv * head_dim
    return torch.arange(q, q + kv), torch.arange(q + kv, q + 2 * kv)


def _per_head_qkv(config) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head [q_h | k_h | v_h] blocks: GPT-NeoX / Pythia and Bloom `query_key_value`, classic Falcon."""
    n_heads, _, head_dim = _heads(config)
    starts = torch.arange(n_heads)[:, None] * 3 * head_dim + torch.arange(head_dim)[None, :]
    return (starts + head_dim).reshape(-1), (starts + 2 * head_dim).reshape(-1)


def _grouped_qkv(config) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key/value group [q ... q | k | v] (Falcon's new decoder architecture)."""
    n_heads, n_kv, head_dim = _heads(config)
    group = n_heads // n_kv + 2  # query heads of the group, then one key and one value head
    starts = torch.arange(n_kv)[:, None] * group * head_dim + torch.arange(head_dim)[None, :]
    return (starts + (group - 2) * head_dim).reshape(-1), (starts + (group - 1) * head_dim).reshape(-1)


def _falcon(config) -> tuple[torch.Tensor, torch.Tensor]:
    if getattr(config, "new_decoder_architecture", False):
        return _grouped_qkv(config)
    if getattr(config, "multi_query", False):
        return _contiguous_qkv(_MultiQueryView(config))
    return _per_head_qkv(config)


class _MultiQueryView:
    """Falcon multi-query: one key and one value head whatever num_kv_heads says."""

    def __init__(self, config):
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = 1
        self.hidden_size = config.hidden_size


FUSED_LAYOUTS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "contiguous_qkv": _contiguous_qkv,
    "per_head_qkv": _per_head_qkv,
    "grouped_qkv": _grouped_qkv,
    "falcon": _falcon,
}


def fused_kv_rows(layout: str, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows (features) of a fused projection that are K and V, as long tensors."""
    if layout not in FUSED_LAYOUTS:
        raise ValueError(f"Unknown fused layout {layout!r}; known: {sorted(FUSED_LAYOUTS)}.")
    return FUSED_LAYOUTS[layout](config)


# ------------------------------------------------------------------------------------------------ the table

_SEPARATE = KVLayout(key="k_proj", value="v_proj")
_LLAMA_LIKE = ArchitectureSpec("model.layers", "self_attn", "model.norm", _SEPARATE)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,  # k_norm (qk-norm) comes after k_proj and is not part of "the key projection"
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "opt": ArchitectureSpec("model.decoder.layers", "self_attn", "model.decoder.final_layer_norm", _SEPARATE),
    "gpt2": ArchitectureSpec(
        "transformer.h", "attn", "transformer.ln_f", KVLayout(fused="c_attn", fused_layout="contiguous_qkv")
    ),
    "gpt_neox": ArchitectureSpec(
        "gpt_neox.layers",
        "attention",
        "gpt_neox.final_layer_norm",
        KVLayout(fused="query_key_value", fused_layout="per_head_qkv"),
    ),
    "bloom": ArchitectureSpec(
        "transformer.h",
        "self_attention",
        "transformer.ln_f",
        KVLayout(fused="query_key_value", fused_layout="per_head_qkv"),
    ),
    "phi3": ArchitectureSpec(
        "model.layers", "self_attn", "model.norm", KVLayout(fused="qkv_proj", fused_layout="contiguous_qkv")
    ),
    "gptj": ArchitectureSpec("transformer.h", "attn", "transformer.ln_f", _SEPARATE),
    "gpt_neo": ArchitectureSpec("transformer.h", "attn.attention", "transformer.ln_f", _SEPARATE),
    "falcon": ArchitectureSpec(
        "transformer.h",
        "self_attention",
        "transformer.ln_f",
        KVLayout(fused="query_key_value", fused_layout="falcon"),
    ),
    "momentum_gpt": ArchitectureSpec("model.layers", "attn", "model.norm", _SEPARATE),
}

# Names tried, in order, when a model is not in the table.
_LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.layers",
    "gpt_neox.layers",
    "layers",
)
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "attn.attention")
_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f")
_KEY_NAMES = ("k_proj", "key", "key_proj", "wk", "k")
_VALUE_NAMES = ("v_proj", "value", "value_proj", "wv", "v")


def _get(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def get_architecture(model: nn.Module) -> ArchitectureSpec:
    """The table entry for `model` (a `*ForCausalLM`, or a peft model around one), else an automatic detection."""
    model = _unwrap(model)
    model_type = _model_type(model)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    layers_path = next((p for p in _LAYER_PATHS if isinstance(_get(model, p), nn.ModuleList)), None)
    if layers_path is not None:
        block = _get(model, layers_path)[0]
        attention_name = next((a for a in _ATTENTION_NAMES if _get(block, a) is not None), None)
        if attention_name is not None:
            attention = _get(block, attention_name)
            key = next((n for n in _KEY_NAMES if isinstance(getattr(attention, n, None), nn.Module)), None)
            value = next(
                (n for n in _VALUE_NAMES if isinstance(getattr(attention, n, None), nn.Module)), None
            )
            parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
            parent = _get(model, parent_path) if parent_path else model
            norm = next((n for n in _NORM_NAMES if isinstance(getattr(parent, n, None), nn.Module)), None)
            if key and value and norm:
                final_norm = f"{parent_path}.{norm}" if parent_path else norm
                return ArchitectureSpec(
                    layers_path, attention_name, final_norm, KVLayout(key=key, value=value)
                )
    raise ValueError(
        f"Could not find the attention of {type(model).__name__} (model_type={model_type!r}): it is not in "
        f"transformers_momentum.architectures.ARCHITECTURES, and automatic detection looked for decoder blocks at "
        f"{list(_LAYER_PATHS)}, an attention module named one of {list(_ATTENTION_NAMES)} with key/value projections "
        f"named {list(_KEY_NAMES)} / {list(_VALUE_NAMES)}, and a final norm named {list(_NORM_NAMES)}. Name the modules "
        "explicitly: KVTuningConfig(key_module=..., value_module=...) or KVTuningConfig(fused_module=..., "
        "fused_layout=...), or add an ArchitectureSpec to ARCHITECTURES[model.config.model_type]."
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside peft wrappers (PeftModel -> tuner -> model)."""
    while not hasattr(getattr(model, "config", None), "model_type") and hasattr(model, "model"):
        model = model.model
    if hasattr(model, "base_model") and hasattr(model.base_model, "model") and hasattr(model, "peft_config"):
        model = model.base_model.model
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    model = _unwrap(model)
    return _get(model, get_architecture(model).layers)


def final_norm(model: nn.Module) -> nn.Module:
    model = _unwrap(model)
    return _get(model, get_architecture(model).final_norm)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every decoder block, in layer order."""
    model = _unwrap(model)
    spec = get_architecture(model)
    return [_get(block, spec.attention) for block in _get(model, spec.layers)]


__all__ = [
    "ARCHITECTURES",
    "FUSED_LAYOUTS",
    "ArchitectureSpec",
    "KVLayout",
    "attention_modules",
    "decoder_layers",
    "final_norm",
    "fused_kv_rows",
    "get_architecture",
]


# ------------------------------------------------------------------------------------------------ analyzer support
# What the ICL-vs-finetuning analyzer (transformers_momentum.analysis) needs to know about a model beyond the table
# above: where the queries come from, how many positions fit, which caches a prefix can be reused from, what a norm
# is. Kept here so that the analyzer holds no per-architecture knowledge of its own.

_QUERY_NAMES = ("q_proj", "query", "query_proj", "wq", "q")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside peft wrappers (the model itself when it is not wrapped)."""
    return _unwrap(model)


def head_geometry(model_or_config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of a model or config."""
    config = getattr(model_or_config, "config", model_or_config)
    return _heads(config)


def query_projection(attention: nn.Module, config) -> tuple[nn.Module, float] | None:
    """The module that projects the queries (before any rotary embedding) and the factor attention scales them by.

    None when the queries come out of a fused projection (GPT-2's ``c_attn``, ...) or the module is not found.
    """
    names = [n for n in _QUERY_NAMES if isinstance(getattr(attention, n, None), nn.Module)]
    module = getattr(attention, names[0]) if names else None
    if module is None:
        return None
    scaling = getattr(attention, "scaling", None)
    if scaling is None:
        head_dim = getattr(attention, "head_dim", None) or _heads(config)[2]
        scaling = head_dim**-0.5
    return module, float(scaling)


def rotates_queries(model: nn.Module) -> bool:
    """True when queries are rotated by position (RoPE and its variants) after the query projection.

    Then a query projection's output is not the query attention uses; without rotation (absolute or ALiBi positions:
    GPT-2, OPT, XGLM, Bloom, ...) the two are the same vector up to the attention's constant scaling.
    """
    model = _unwrap(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "position_embedding_type", None) == "rotary" or getattr(config, "rotary_dim", None):
        return True
    rope_fields = ("rope_parameters", "rope_scaling", "rope_theta")
    if any(getattr(config, name, None) is not None for name in rope_fields):
        return True
    return any("rotary" in type(module).__name__.lower() for module in model.modules())


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position table holds (None when the config does not say)."""
    model = _unwrap(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_is_croppable(cache) -> bool:
    """True when dropping a cache's last tokens restores it exactly (plain key/value layers).

    Sliding-window layers have already forgotten what fell out of the window, and recurrent states (MomentumGPT's
    momentum, linear attention) cannot be rolled back: those caches are copied instead of cropped.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def cache_can_repeat_batch(cache) -> bool:
    """True when `cache.batch_repeat_interleave` repeats everything a layer holds (keys and values only)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (LayerNorm, GroupNorm, and every architecture's own RMSNorm class)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


__all__ += [
    "cache_can_repeat_batch",
    "cache_is_croppable",
    "head_geometry",
    "is_norm",
    "max_positions",
    "query_projection",
    "rotates_queries",
    "unwrap_peft",
]
