"""Per-architecture knowledge, in one table: where a causal LM's attention layers, key/value projections, query
projection and final norm are, and which output rows of a projection are keys and values.

Everything in the plugin that touches a model's attention reads this module: the K/V tuner
(`transformers_momentum.kv_tuning`), the analyzer's probe and controls (`transformers_momentum.analysis`). Paths are
relative to the model's *text decoder*: the `PreTrainedModel` that holds the text config (`LlamaModel` inside
`LlamaForCausalLM`, `Gemma3TextModel` inside `Gemma3ForConditionalGeneration`), so multimodal wrappers need no entry
of their own.

`ARCHITECTURES` holds only what cannot be read off the model. Every other model is detected from data: its attention
modules are the ones whose `forward` dispatches through transformers' attention interface (so they compute softmax
attention, whatever the implementation), found inside the decoder's block list; their key/value projections have one
of the conventional names (`k_proj`/`v_proj`, `key`/`value`, ...) or DeepSeek's multi-head latent attention names.
Hybrid models (Jamba, Qwen3-Next, LFM2, ...) are handled the same way: the blocks whose attention path holds the
projections are the attention layers; the others (state-space, linear-attention, convolution blocks) are not touched.

What "the keys and values" are (Dai et al. 2023, §3: W_K and W_V map each token's representation to its key and
value):

* separate projections (`k_proj`, `v_proj`): every output row;
* fused projections (GPT-2's `c_attn`, GPT-NeoX's `query_key_value`, ...): the K and V rows only, per `ROW_LAYOUTS`;
  the query rows are not keys or values and are never touched;
* multi-head latent attention (DeepSeek-V2/V3, MiniCPM3, ...): keys are ``[W_UK c ; RoPE(W_KR x)]`` and values
  ``W_UV c`` with the compressed latent ``c = norm(W_DKV x)``. K/V means the up-projection ``kv_b_proj`` (W_UK, W_UV:
  all its rows) plus the rotary-key rows W_KR of ``kv_a_proj_with_mqa``; the shared compression W_DKV (the latent rows
  of that projection) feeds keys and values alike, like the layer input itself, and is not trained;
* shared-KV attention (DeepSeek-V4): one projection's output is read as both key and value (role "kv", so K and V
  cannot be tuned apart), plus, in its compressed-attention layers, the compressor's `kv_proj`, whose pooled
  entries are appended to the same keys/values. The compressor's gate and the sparse indexer choose and weight
  entries; they map no token to a key or value and are not trained.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# ------------------------------------------------------------------------------------------------ row layouts


def _first_size(owner, *names: str) -> int | None:
    """The first of `names` that `owner` has as a positive integer."""
    for name in names:
        try:
            value = getattr(owner, name, None)
        except (ValueError, RuntimeError):  # per-layer sizes (Gemma 4, dots) refuse to give one global value
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _query_heads(attention: nn.Module | None, config) -> int:
    heads = _first_size(attention, "num_heads", "num_attention_heads", "n_heads", "n_head")
    return heads or _first_size(config, "num_attention_heads", "n_head", "num_heads")


def attention_geometry(attention: nn.Module | None, config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of one attention module, from its own attributes where it has them
    (per-layer geometry, multi-query flags) and from the text config otherwise."""
    heads = _query_heads(attention, config)
    kv_heads = _first_size(attention, "num_key_value_heads", "num_kv_heads", "kv_heads", "n_kv_heads")
    if kv_heads is None and _first_size(attention, "num_key_value_groups"):
        kv_heads = heads // attention.num_key_value_groups
    kv_heads = kv_heads or _first_size(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first_size(attention, "head_dim", "head_size", "attention_head_size") or _first_size(
        config, "head_dim"
    )
    head_dim = head_dim or _first_size(config, "hidden_size", "n_embd", "d_model") // heads
    return heads, kv_heads, head_dim


Rows = dict[str, torch.Tensor | None]  # role ("k", "k_rope", "v") -> output rows (None: every row)


def _key(attention, config) -> Rows:
    return {"k": None}


def _value(attention, config) -> Rows:
    return {"v": None}


def _qkv(attention, config) -> Rows:
    """[Q (heads·d) | K (kv·d) | V (kv·d)]: GPT-2 `c_attn`, Phi-3 `qkv_proj`, MPT `Wqkv`, StarCoder's multi-query."""
    heads, kv_heads, head_dim = attention_geometry(attention, config)
    q, kv = heads * head_dim, kv_heads * head_dim
    return {"k": torch.arange(q, q + kv), "v": torch.arange(q + kv, q + 2 * kv)}


def _kv(attention, config) -> Rows:
    """[K | V]: JetMoE's `kv_proj` (its queries come from a mixture of experts)."""
    _, kv_heads, head_dim = attention_geometry(attention, config)
    kv = kv_heads * head_dim
    return {"k": torch.arange(kv), "v": torch.arange(kv, 2 * kv)}


def _per_head_qkv(attention, config) -> Rows:
    """Per head [q_h | k_h | v_h]: GPT-NeoX / Pythia, Bloom, Persimmon, classic Falcon."""
    heads, _, head_dim = attention_geometry(attention, config)
    starts = torch.arange(heads)[:, None] * 3 * head_dim + torch.arange(head_dim)[None, :]
    return {"k": (starts + head_dim).reshape(-1), "v": (starts + 2 * head_dim).reshape(-1)}


def _grouped_qkv(heads: int, kv_heads: int, head_dim: int) -> Rows:
    """Per key/value group [q ... q | k | v] (Falcon's new decoder architecture)."""
    group = heads // kv_heads + 2  # the group's query heads, then one key and one value head
    starts = torch.arange(kv_heads)[:, None] * group * head_dim + torch.arange(head_dim)[None, :]
    return {
        "k": (starts + (group - 2) * head_dim).reshape(-1),
        "v": (starts + (group - 1) * head_dim).reshape(-1),
    }


def _falcon(attention, config) -> Rows:
    heads, kv_heads, head_dim = attention_geometry(attention, config)
    if getattr(config, "new_decoder_architecture", False):
        return _grouped_qkv(heads, kv_heads, head_dim)
    if getattr(config, "multi_query", False):  # one key and one value head: [Q | k | v]
        return {
            "k": torch.arange(heads * head_dim, (heads + 1) * head_dim),
            "v": torch.arange((heads + 1) * head_dim, (heads + 2) * head_dim),
        }
    return _per_head_qkv(attention, config)


def _codegen(attention, config) -> Rows:
    """CodeGen's `qkv_proj` in model-parallel order: `mp_num` shards of [q | v | k] (note: v before k), each holding
    heads/mp_num heads. K rows are listed shard by shard, which is the model's head order."""
    heads, _, head_dim = attention_geometry(attention, config)
    shards = getattr(attention, "mp_num", 4)
    local = heads * head_dim // shards
    starts = torch.arange(shards)[:, None] * 3 * local + torch.arange(local)[None, :]
    return {"k": (starts + 2 * local).reshape(-1), "v": (starts + local).reshape(-1)}


def _latent_kv(attention, config) -> Rows:
    """MLA up-projection `kv_b_proj`: per head [k_nope (qk_nope_head_dim) | v (v_head_dim)], all rows K or V."""
    heads = _query_heads(attention, config)
    nope = getattr(attention, "qk_nope_head_dim", None) or config.qk_nope_head_dim
    value = getattr(attention, "v_head_dim", None) or config.v_head_dim
    starts = torch.arange(heads)[:, None] * (nope + value)
    k = (starts + torch.arange(nope)[None, :]).reshape(-1)
    v = (starts + nope + torch.arange(value)[None, :]).reshape(-1)
    return {"k": k, "v": v}


def _latent_rope_key(attention, config) -> Rows:
    """MLA `kv_a_proj_with_mqa`: [latent c (kv_lora_rank) | rotary key (qk_rope_head_dim)]; only the rotary key."""
    rank = getattr(attention, "kv_lora_rank", None) or config.kv_lora_rank
    rope = getattr(attention, "qk_rope_head_dim", None) or config.qk_rope_head_dim
    return {"k_rope": torch.arange(rank, rank + rope)}


def _shared_kv(attention, config) -> Rows:
    """DeepSeek-V4's `kv_proj`: one key/value head read as both key and value (shared-KV multi-query attention), so
    every row is a key row and a value row at once: the role "kv"."""
    return {"kv": None}


ROW_LAYOUTS: dict[str, Callable[[nn.Module, object], Rows]] = {
    "key": _key,
    "value": _value,
    "qkv": _qkv,
    "kv": _kv,
    "per_head_qkv": _per_head_qkv,
    "falcon": _falcon,
    "codegen": _codegen,
    "latent_kv": _latent_kv,
    "latent_rope_key": _latent_rope_key,
    "shared_kv": _shared_kv,
}


def kv_rows(layout: str, attention: nn.Module, config) -> Rows:
    """Output rows of a projection with row layout `layout` that are keys and values, as long tensors per role."""
    if layout not in ROW_LAYOUTS:
        raise ValueError(f"Unknown row layout {layout!r}; known: {sorted(ROW_LAYOUTS)}.")
    return ROW_LAYOUTS[layout](attention, config)


# ------------------------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class KVProjection:
    """One projection inside an attention module that produces keys and/or values.

    `name` is its path inside the attention module, `layout` a key of `ROW_LAYOUTS` saying which output rows are
    keys ("k", "k_rope") and values ("v").
    """

    name: str
    layout: str
    optional: bool = False  # present in some attention layers only (DeepSeek-V4's compressor)

    def __post_init__(self):
        if self.layout not in ROW_LAYOUTS:
            raise ValueError(f"Unknown row layout {self.layout!r}; known: {sorted(ROW_LAYOUTS)}.")


@dataclass(frozen=True)
class KVLayout:
    """The projections of one attention module that produce its keys and values."""

    projections: tuple[KVProjection, ...]

    @classmethod
    def separate(cls, key: str = "k_proj", value: str = "v_proj") -> KVLayout:
        return cls((KVProjection(key, "key"), KVProjection(value, "value")))

    @classmethod
    def fused_projection(cls, name: str, layout: str) -> KVLayout:
        return cls((KVProjection(name, layout),))

    @property
    def module_names(self) -> tuple[str, ...]:
        """The projections every attention module of this layout has."""
        return tuple(p.name for p in self.projections if not p.optional)

    @property
    def is_separate(self) -> bool:
        """Keys and values come from two projections of the layer input that hold nothing else."""
        return [p.layout for p in self.projections] == ["key", "value"]

    @property
    def key(self) -> str | None:
        """The key projection's name when keys and values are separate projections (else None)."""
        return self.projections[0].name if self.is_separate else None

    @property
    def value(self) -> str | None:
        return self.projections[1].name if self.is_separate else None

    @property
    def fused(self) -> str | None:
        """The projection holding K and V rows among others (None when they are separate projections)."""
        return None if self.is_separate else self.projections[0].name

    @property
    def fused_layout(self) -> str | None:
        return None if self.is_separate else self.projections[0].layout


SEPARATE_KV = KVLayout.separate()
LATENT_KV = KVLayout(
    (KVProjection("kv_b_proj", "latent_kv"), KVProjection("kv_a_proj_with_mqa", "latent_rope_key"))
)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where the parts the plugin needs are, as dotted paths from the model's text decoder.

    layers: the `nn.ModuleList` of decoder blocks.
    attention: path inside a block to its softmax-attention module; blocks where it is absent, or holds no K/V
        projection (the recurrent blocks of a hybrid), are not attention layers.
    kv: the key/value projections inside the attention module.
    query: the query projection inside the attention module, before any rotary embedding (None when queries come
        out of a fused projection or a mixture of experts); several names are tried in order, separated by "|".
    final_norm: the norm applied to the last block's output before the LM head (None for post-norm models).
    plain_scores: the attention scores are (query projection · scaling)(key projection)ᵀ + mask, with no rotary
        embedding or positional bias, so exact pre-softmax scores can be rebuilt from attention probabilities.
    """

    kv: KVLayout = SEPARATE_KV
    query: str | None = "q_proj"
    attention: str = "self_attn"
    layers: str = "layers"
    final_norm: str | None = "norm"
    plain_scores: bool = False
    detected: bool = field(default=False, compare=False)  # found by detection rather than read from the table


# ------------------------------------------------------------------------------------------------ the table


def _fused(name: str, layout: str, **paths) -> ArchitectureSpec:
    return ArchitectureSpec(KVLayout.fused_projection(name, layout), query=None, **paths)


# Keyed by `config.model_type`. Only what automatic detection cannot find: attention outside the attention
# interface, fused projections (their row order is not in the weights), unconventional paths.
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    # fused query/key/value projections
    "gpt2": _fused("c_attn", "qkv", layers="h", attention="attn", final_norm="ln_f"),
    "gpt_bigcode": _fused("c_attn", "qkv", layers="h", attention="attn", final_norm="ln_f"),
    "openai-gpt": _fused("c_attn", "qkv", layers="h", attention="attn", final_norm=None),
    "mpt": _fused("Wqkv", "qkv", layers="blocks", attention="attn", final_norm="norm_f"),
    "phi3": _fused("qkv_proj", "qkv"),
    "phi4_multimodal": _fused("qkv_proj", "qkv"),
    "jetmoe": _fused("kv_proj", "kv", attention="self_attention"),
    "gpt_neox": _fused(
        "query_key_value", "per_head_qkv", attention="attention", final_norm="final_layer_norm"
    ),
    "gpt_neox_japanese": _fused(
        "query_key_value", "per_head_qkv", attention="attention", final_norm="final_layer_norm"
    ),
    "persimmon": _fused("query_key_value", "per_head_qkv", final_norm="final_layernorm"),
    "bloom": _fused(
        "query_key_value", "per_head_qkv", layers="h", attention="self_attention", final_norm="ln_f"
    ),
    "falcon": _fused("query_key_value", "falcon", layers="h", attention="self_attention", final_norm="ln_f"),
    "codegen": _fused("qkv_proj", "codegen", layers="h", attention="attn", final_norm="ln_f"),
    "dbrx": _fused("Wqkv", "qkv", layers="blocks", attention="norm_attn_norm.attn", final_norm="norm_f"),
    "ergo": _fused("qkv_proj", "qkv"),
    # shared-KV multi-query attention: keys and values are one projection's output, plus (in compressed-attention
    # layers) the compressor's, whose compressed entries are appended to the same keys/values
    "deepseek_v4": ArchitectureSpec(
        KVLayout(
            (
                KVProjection("kv_proj", "shared_kv"),
                KVProjection("compressor.kv_proj", "shared_kv", optional=True),
            )
        ),
        query="q_b_proj",
    ),
    # separate projections, attention computed outside the attention interface
    "xglm": ArchitectureSpec(final_norm="layer_norm", plain_scores=True),  # the paper's GPT (fairseq-dense)
    "gpt_neo": ArchitectureSpec(layers="h", attention="attn.attention", final_norm="ln_f"),
    "gptj": ArchitectureSpec(
        layers="h", attention="attn", final_norm="ln_f"
    ),  # off the interface before 5.24
    "trocr": ArchitectureSpec(
        layers="decoder.layers", final_norm=None, plain_scores=True
    ),  # post-norm blocks
    "git": ArchitectureSpec(
        KVLayout.separate("key", "value"),
        query="query",
        attention="attention.self",
        layers="encoder.layer",
        final_norm=None,
        plain_scores=True,
    ),  # BERT-style post-norm blocks as a captioning decoder
    "momentum_gpt": ArchitectureSpec(attention="attn"),
}

# Softmax-attention models whose keys cannot be finetuned apart from their queries: refused, naming why.
REFUSED: dict[str, str] = {
    "zaya": "its key projection also feeds its queries (query residual (q + k) / 2 and a convolution over [q; k]), "
    "so finetuning the keys would change the queries too; K/V-only finetuning is not defined for it",
}

# Conventions automatic detection tries, in order.
_KV_NAMES = (
    ("k_proj", "v_proj"),
    ("key", "value"),
    ("Wk", "Wv"),
    ("wk", "wv"),
    ("k", "v"),
    ("project_k", "project_v"),
)
_QUERY_NAMES = ("q_proj", "q_b_proj", "query", "Wq", "wq", "q")
_NORM_NAMES = ("norm", "final_layer_norm", "final_layernorm", "ln_f", "norm_f", "layer_norm", "final_norm")
_FUSED_NAMES = ("qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack", "qkv", "kv_proj")


# ------------------------------------------------------------------------------------------------ lookup


def _get(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside peft wrappers (the model itself when it is not wrapped)."""
    if hasattr(model, "get_base_model") and callable(model.get_base_model):  # PeftModel
        model = model.get_base_model()
    while not hasattr(getattr(model, "config", None), "model_type") and isinstance(
        getattr(model, "model", None), nn.Module
    ):  # a bare tuner (KVTuningModel) around the transformers model
        model = model.model
    return model


def text_config(model_or_config):
    """The config of the text decoder (the config itself for plain causal LMs)."""
    config = getattr(model_or_config, "config", model_or_config)
    try:
        return config.get_text_config(decoder=True)
    except (AttributeError, ValueError):
        return config


def text_decoder(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the text decoder inside `model`: the module holding the decoder blocks and final norm."""
    model = unwrap_peft(model)
    config = text_config(model)
    base_prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_prefix, None) if base_prefix else None
    if isinstance(base, nn.Module) and getattr(base, "config", None) is config:
        return base_prefix, base
    decoders = [
        (name, module)
        for name, module in model.named_modules()
        if name and hasattr(module, "base_model_prefix") and hasattr(module, "config")
    ]
    for name, module in decoders:  # shallowest first (named_modules is pre-order)
        if module.config is config:
            return name, module
    for name, module in decoders:  # configs copied on construction
        if getattr(module.config, "model_type", None) == getattr(config, "model_type", None):
            return name, module
    if isinstance(base, nn.Module):
        return base_prefix, base
    return "", model


def _dispatches_through_attention_interface(module: nn.Module) -> bool:
    """True when the module's forward looks its attention function up in transformers' attention interface: then it
    computes softmax attention over keys and values (eager, sdpa, flex or flash alike)."""
    forward = inspect.unwrap(type(module).forward)
    code = getattr(forward, "__code__", None)
    return code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names


def _has(module: nn.Module, path: str) -> bool:
    return _get(module, path) is not None


def _kv_layout_of(attention: nn.Module) -> KVLayout | None:
    """The K/V projections of an attention module, by DeepSeek's latent-attention names or the conventional ones."""
    if all(_has(attention, p.name) for p in LATENT_KV.projections):
        return LATENT_KV
    for key, value in _KV_NAMES:
        if _has(attention, key) and _has(attention, value):
            return KVLayout.separate(_linear_inside(attention, key), _linear_inside(attention, value))
    return None


def _linear_inside(attention: nn.Module, name: str) -> str:
    """`name`, or `name.linear` where the projection wraps its linear map with extras (Inkling's short convolution
    and norm after it, Moshi's per-codebook wrapper): W_K and W_V are the linear maps."""
    wrapped = not _is_linear(_get(attention, name)) and _is_linear(_get(attention, f"{name}.linear"))
    return f"{name}.linear" if wrapped else name


def _is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _module_lists(decoder: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The decoder's non-empty ModuleLists, shallowest first, leaving out sub-models of their own (a vision tower
    inside the text decoder, as in GIT)."""
    config = getattr(decoder, "config", None)
    foreign = [
        name + "."
        for name, module in decoder.named_modules()
        if name and hasattr(module, "base_model_prefix") and getattr(module, "config", config) is not config
    ]
    lists = [
        (name, module)
        for name, module in decoder.named_modules()
        if name
        and isinstance(module, nn.ModuleList)
        and len(module) > 0
        and not name.startswith(tuple(foreign))
    ]
    return sorted(lists, key=lambda item: item[0].count("."))


def _detect(decoder: nn.Module) -> ArchitectureSpec | str:
    """The spec of a model missing from the table, or the reason none was found."""
    fused: list[str] = []
    without_kv: set[str] = set()
    for layers_path, blocks in _module_lists(decoder):
        for block in blocks:
            for attention_path, module in block.named_modules():
                if not attention_path or not _dispatches_through_attention_interface(module):
                    continue
                if "cross" in attention_path or "encoder_attn" in attention_path:
                    continue  # attention over another model's states, not the decoder's own keys and values
                kv = _kv_layout_of(module)
                if kv is None:
                    fused += [f"{attention_path}.{n}" for n in _FUSED_NAMES if _has(module, n)]
                    without_kv.add(type(module).__name__)
                    continue
                custom = {
                    type(_get(module, n)).__name__ for n in kv.module_names if not _is_linear(_get(module, n))
                }
                if custom:
                    return (
                        f"its key/value projections ({', '.join(sorted(custom))}) are not linear layers K/V tuning "
                        "can adapt"
                    )
                parent_path, _, last = attention_path.rpartition(".")
                if last.isdigit() and isinstance(_get(block, parent_path), nn.ModuleList):
                    attention_path = parent_path  # several attention modules per block
                query = "|".join(_linear_inside(module, n) for n in _QUERY_NAMES if _has(module, n)) or None
                parent = layers_path.rsplit(".", 1)[0] + "." if "." in layers_path else ""
                norm = next(
                    (
                        parent + n
                        for n in _pp_plan_names(decoder) + _NORM_NAMES
                        if _is_norm_at(decoder, parent + n)
                    ),
                    None,
                )
                return ArchitectureSpec(kv, query, attention_path, layers_path, norm, detected=True)
    if fused:
        return (
            f"its attention has a fused projection ({sorted(set(fused))[0]}) whose row layout is not in "
            "transformers_momentum.architectures.ARCHITECTURES"
        )
    if without_kv:
        return (
            f"its attention ({', '.join(sorted(without_kv))}) has no key/value projections of its own (it attends "
            "to keys and values computed elsewhere)"
        )
    lists = _module_lists(decoder)
    blocks = [block for block in lists[0][1]] if lists else []
    with_kv = sorted(
        {type(m).__name__ for block in blocks for _, m in block.named_modules() if _kv_layout_of(m)}
    )
    if with_kv:
        return (
            f"its blocks have key/value projections ({', '.join(with_kv)}) but compute no attention through "
            "transformers' attention interface, and the model type is not in "
            "transformers_momentum.architectures.ARCHITECTURES (linear attention, as in RWKV, has no softmax over "
            "keys; softmax attention computed in a model's own code needs a table entry)"
        )
    classes = sorted({type(block).__name__ for block in blocks})
    return (
        f"none of its blocks ({', '.join(classes) or 'none found'}) has an attention module that calls transformers' "
        "attention interface with key/value projections, and the model type is not in "
        "transformers_momentum.architectures.ARCHITECTURES (attention-free models, such as state-space, RWKV or "
        "xLSTM blocks, have no keys and values to tune or probe)"
    )


def _pp_plan_names(decoder: nn.Module) -> tuple[str, ...]:
    plan = getattr(getattr(decoder, "config", None), "base_model_pp_plan", None) or {}
    return tuple(reversed(list(plan)))  # the final norm is the last stage


def _is_norm_at(decoder: nn.Module, path: str) -> bool:
    module = _get(decoder, path)
    return module is not None and is_norm(module)


def get_architecture(model: nn.Module) -> ArchitectureSpec:
    """The table entry for `model` (a causal LM, or a peft model around one), else an automatic detection.

    Raises a one-line `ValueError` saying why when the model has no softmax attention this module can tune or probe
    (encoder-decoder and attention-free models, fused projections of unknown layout).
    """
    model = unwrap_peft(model)
    config = text_config(model)
    model_type = getattr(config, "model_type", None)
    outer_type = getattr(getattr(model, "config", None), "model_type", model_type)
    cached = _DETECTED.get(model)
    if cached is not None and cached[0] == (model_type, outer_type):
        return cached[1]
    for refused in (model_type, outer_type):
        if refused in REFUSED:
            raise ValueError(f"{type(model).__name__} (model_type={refused!r}): {REFUSED[refused]}.")
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if outer_type in ARCHITECTURES:
        return ARCHITECTURES[outer_type]
    if _is_encoder_decoder(getattr(model, "config", None)):
        raise ValueError(
            f"{type(model).__name__} (model_type={outer_type!r}) is an encoder-decoder model; K/V tuning and the "
            "analyzer work on the self-attention of decoder-only causal LMs."
        )
    refuse_encoder_only(model)
    found = _detect(text_decoder(model)[1])
    if isinstance(found, str):
        raise ValueError(
            f"{type(model).__name__} (model_type={outer_type!r}): {found}. For a softmax-attention model, name its "
            "projections: KVTuningConfig(key_module=..., value_module=...) or (fused_module=..., fused_layout=...)."
        )
    _DETECTED[model] = ((model_type, outer_type), found)
    return found


def refuse_encoder_only(model: nn.Module) -> None:
    """Raise a one-line `ValueError` for a BERT-style model built as an encoder (``is_decoder=False``): its
    self-attention is bidirectional, and K/V tuning (a causal-LM peft method) and the analyzer work on the causal
    self-attention of decoder-only LMs.

    Recognised by the config's own ``is_decoder`` flag (only configs of models that run either way have one) being
    False while every attention module says ``is_causal=False``; decoders that build their causal mask themselves
    (GIT) have no such flag and are left to `get_architecture`."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if config is None or "is_decoder" not in config.to_dict() or config.is_decoder:
        return
    flags = [
        module.is_causal for module in base.modules() if isinstance(getattr(module, "is_causal", None), bool)
    ]
    if flags and not any(flags):
        raise ValueError(
            f"{type(base).__name__} (model_type={config.model_type!r}) is built as an encoder (is_decoder=False): its "
            "self-attention is bidirectional, and K/V tuning and the analyzer work on the causal self-attention of "
            "decoder-only LMs. To tune it as a decoder, load it with is_decoder=True (e.g. "
            "AutoModelForCausalLM.from_pretrained(name, is_decoder=True))."
        )


def _is_encoder_decoder(config) -> bool:
    """The config, or its class's defaults, describe an encoder-decoder model (`BartForCausalLM` and the like keep
    only the decoder and clear the flag on their own copy of the config)."""
    if getattr(config, "is_encoder_decoder", False):
        return True
    try:
        return bool(getattr(type(config)(), "is_encoder_decoder", False))
    except Exception:  # a config class that cannot be built without arguments says nothing either way
        return False


# Detection walks the model's modules; remember its answer per model (and per model_type, which tests rename).
_DETECTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------------------------ parts of a model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Every decoder block, in order (attention layers and, in hybrids, the others)."""
    layers = _get(text_decoder(model)[1], get_architecture(model).layers)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(unwrap_peft(model)).__name__} has no block list at {get_architecture(model).layers!r}."
        )
    return layers


def _block_attentions(
    block: nn.Module, spec: ArchitectureSpec, layout: KVLayout
) -> list[tuple[str, nn.Module]]:
    """(path in the block, module) of the block's softmax attention: none in the other blocks of a hybrid, several
    where the path holds a list of attention modules (LongCat-Flash's two per block)."""
    attention = _get(block, spec.attention)
    if isinstance(attention, nn.ModuleList):
        candidates = [(f"{spec.attention}.{j}", module) for j, module in enumerate(attention)]
    else:
        candidates = [(spec.attention, attention)] if attention is not None else []
    return [(path, m) for path, m in candidates if all(_has(m, name) for name in layout.module_names)]


@dataclass(frozen=True)
class AttentionSite:
    """One softmax-attention module: its block's index, its path in the (unwrapped) model, the module."""

    layer: int
    name: str
    module: nn.Module


def attention_sites(model: nn.Module, layout: KVLayout | None = None) -> list[AttentionSite]:
    """Every softmax-attention module, in layer order.

    With an explicit `layout` for a model whose architecture is neither in the table nor detected, the attention
    modules are the modules holding all of the layout's projections.
    """
    base = unwrap_peft(model)
    try:
        spec = get_architecture(base)
    except ValueError:
        if layout is None:
            raise
        return [
            AttentionSite(
                int(match.group(1)) if (match := re.search(r"\.(\d+)\.", f".{name}.")) else 0, name, m
            )
            for name, m in base.named_modules()
            if name and all(_has(m, projection) for projection in layout.module_names)
        ]
    decoder_path = text_decoder(base)[0]
    prefix = f"{decoder_path}.{spec.layers}" if decoder_path else spec.layers
    return [
        AttentionSite(index, f"{prefix}.{index}.{path}", module)
        for index, block in enumerate(decoder_layers(base))
        for path, module in _block_attentions(block, spec, layout or spec.kv)
    ]


def attention_layers(model: nn.Module) -> list[int]:
    """Indices of the blocks with softmax attention (all of them, except in hybrid models)."""
    return sorted({site.layer for site in attention_sites(model)})


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The softmax-attention modules, in layer order (one per attention layer, except LongCat-Flash's two)."""
    return [site.module for site in attention_sites(model)]


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm whose output feeds the LM head (None for post-norm models, whose last block output is final)."""
    path = get_architecture(model).final_norm
    return _get(text_decoder(model)[1], path) if path else None


def kv_projections(model: nn.Module, layout: KVLayout | None = None) -> dict[str, Rows]:
    """Full name in the (unwrapped) model -> {role: output rows} of every key/value projection of every attention
    module. `layout` overrides the architecture's own (explicit `KVTuningConfig` module names)."""
    base = unwrap_peft(model)
    layout = layout or get_architecture(base).kv
    config = text_config(base)
    result: dict[str, Rows] = {}
    for site in attention_sites(base, layout):
        for projection in layout.projections:
            module = _get(site.module, projection.name)
            if module is None and projection.optional:
                continue
            if hasattr(module, "get_base_layer"):  # already wrapped by a peft tuner
                module = module.get_base_layer()
            if not isinstance(module, (nn.Linear, Conv1D)):
                raise ValueError(
                    f"{site.name}.{projection.name} is a {type(module).__name__}, not a linear projection: K/V tuning "
                    "adapts nn.Linear and transformers' Conv1D projections."
                )
            result[f"{site.name}.{projection.name}"] = kv_rows(projection.layout, site.module, config)
    return result


# ------------------------------------------------------------------------------------------------ analyzer support
# What the ICL-vs-finetuning analyzer needs beyond the parts above: where queries come from, how many positions fit,
# which caches a prefix can be reused from, what a norm is.


def head_geometry(model_or_config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of a model (its first attention layer) or of a text config."""
    if isinstance(model_or_config, nn.Module):
        modules = attention_modules(model_or_config)
        return attention_geometry(modules[0], text_config(unwrap_peft(model_or_config)))
    return attention_geometry(None, text_config(model_or_config))


def query_projection(attention: nn.Module, config) -> tuple[nn.Module, float] | None:
    """The module that projects the queries (before any rotary embedding) and the factor attention scales them by.

    None when the queries come out of a fused projection (GPT-2's ``c_attn``, ...) or a mixture of experts.
    """
    spec = ARCHITECTURES.get(getattr(text_config(config), "model_type", None))
    names = (spec.query or "").split("|") if spec is not None else _QUERY_NAMES
    module = next(
        (_get(attention, _linear_inside(attention, n)) for n in names if n and _has(attention, n)), None
    )
    if module is None:
        return None
    scaling = getattr(attention, "scaling", None)
    if scaling is None:
        scaling = attention_geometry(attention, text_config(config))[2] ** -0.5
    return module, float(scaling)


def rotates_queries(model: nn.Module) -> bool:
    """True when queries are rotated by position (RoPE and its variants) after the query projection.

    Then a query projection's output is not the query attention uses; without rotation (absolute or ALiBi positions:
    GPT-2, OPT, XGLM, Bloom, ...) the two are the same vector up to the attention's constant scaling.
    """
    model = unwrap_peft(model)
    config = text_config(model)
    if getattr(config, "position_embedding_type", None) == "rotary" or getattr(config, "rotary_dim", None):
        return True
    rope_fields = ("rope_parameters", "rope_scaling", "rope_theta")
    if any(getattr(config, name, None) is not None for name in rope_fields):
        return True
    return any("rotary" in type(module).__name__.lower() for module in model.modules())


def plain_dot_product_scores(model: nn.Module) -> bool:
    """True when the attention scores are (query projection · scaling)(key projection)ᵀ + mask, computed outside the
    attention interface, so exact pre-softmax scores can be rebuilt from attention probabilities."""
    return get_architecture(model).plain_scores


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position table holds (None when the config does not say)."""
    config = text_config(unwrap_peft(model))
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


__all__ = [
    "ARCHITECTURES",
    "REFUSED",
    "refuse_encoder_only",
    "LATENT_KV",
    "ROW_LAYOUTS",
    "SEPARATE_KV",
    "ArchitectureSpec",
    "AttentionSite",
    "attention_sites",
    "KVLayout",
    "KVProjection",
    "attention_geometry",
    "attention_layers",
    "attention_modules",
    "cache_can_repeat_batch",
    "cache_is_croppable",
    "decoder_layers",
    "final_norm",
    "get_architecture",
    "head_geometry",
    "is_norm",
    "kv_projections",
    "kv_rows",
    "max_positions",
    "plain_dot_product_scores",
    "query_projection",
    "rotates_queries",
    "text_config",
    "text_decoder",
    "unwrap_peft",
]
