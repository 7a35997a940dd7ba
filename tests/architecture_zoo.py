"""A tiny random model of every causal-LM `model_type` the installed transformers knows, and the checks that say
whether K/V tuning and the analyzer's probe work on it (tests/test_architecture_coverage.py; docs/architectures.md
is the rendering of `coverage()`).

What a model type *is* comes from running its tiny model, not from a list: whether its config describes an
encoder-decoder model, whether its forward computes softmax attention over the key axis at all (a call through
transformers' attention interface, or an eager softmax whose last axis is the key axis), and whether it is causal as
built or only once its `is_decoder` / `causal` flag is set (BERT-style encoders run as decoders).

The checks never read `transformers_momentum.architectures` to decide what is right: the queries, keys and values
are read where attention consumes them (the arguments of the attention-interface call, or the operands of the eager
`q @ kᵀ -> softmax -> @ v` ops), and the K/V deltas must move every key (value) coordinate and nothing else.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from dataclasses import dataclass
from functools import cache

import torch
import transformers
from peft import get_peft_model
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from transformers_momentum import architectures
from transformers_momentum.attention_interface import original_attention_function, register_wrapped_attention
from transformers_momentum.kv_tuning import KVTuningConfig, KVTuningLayer

MODEL_TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
SEQUENCE_LENGTH = 7  # prime, and unlike any tiny size below: a softmax over 7 entries is over the key axis
MERGE_TOLERANCE = dict(atol=1e-5, rtol=1e-5)  # merged vs unmerged logits, fp32

# One tiny size for every naming scheme a config uses; a key is passed only where the config has the field.
TINY = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    rotary_dim=4,
    # mixtures of experts
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    # multi-head latent attention
    q_lora_rank=16,
    kv_lora_rank=16,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=8,
    # the state-space and linear-attention blocks of hybrids
    index_head_dim=8,  # the sparse-attention indexers of DeepSeek-V3.2-style models
    index_n_heads=2,
    index_topk=4,
    linear_head_dim=8,
    linear_num_heads=2,
    vocab_size_per_layer_input=100,
    hidden_size_per_layer_input=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    mamba_n_heads=4,
    mamba_n_groups=1,
    n_groups=1,
    mamba_d_head=16,
    mamba_d_state=8,
    mamba_num_heads=4,
    mamba_head_dim=16,
    n_mamba_heads=4,
    ssm_state_size=8,
    mamba_chunk_size=16,
    chunk_size=16,
    mamba_d_ssm=64,
)
_SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id")
_LAYER_SCHEDULES = ("layer_types", "layers_block_type", "block_types")

# Where a config's defaults do not describe a buildable tiny model: fields the generic sizes above cannot set
# (a hybrid's schedule written as periods or indices, defaults that transformers leaves unset).
OVERRIDES: dict[str, dict] = {
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    "bamba": dict(attn_layer_indices=[1]),
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention"]),
    "nemotron_h": dict(layers_block_type=["linear_attention", "full_attention", "mlp"]),
    "zamba": dict(layers_block_type=["linear_attention", "hybrid"] * 2, num_hidden_layers=4),
    "zamba2": dict(layers_block_type=["linear_attention", "hybrid"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "zaya": dict(num_experts_per_tok=1),
    # both compressed-attention layers must compress within the test sequence, so their compressors train
    "deepseek_v4": dict(compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4}),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "longcat_flash": dict(num_layers=1, zero_expert_num=2),
    "cohere_compass_text": dict(
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}
    ),
    "dbrx": dict(attn_config=dict(kv_n_heads=2, rope_theta=1e4, clip_qkv=8.0)),
    "reformer": dict(axial_pos_embds_dim=[16, 16], axial_pos_shape=[1, SEQUENCE_LENGTH]),
    "qwen4_exp_text": dict(
        indexer_budget=4, indexer_compress_ratio=2, indexer_head_dim=8, indexer_kv_heads=1, indexer_n_heads=2
    ),
    "gemma3n_text": dict(num_kv_shared_layers=0),
    "mamba2": dict(num_heads=4, head_dim=16),
    "xlnet": dict(d_head=8),
    "moshi": dict(audio_vocab_size=64),
    "xmod": dict(default_language="en_XX"),
    "blt": dict(encoder_hash_byte_group_vocab=64),
}


# ------------------------------------------------------------------------------------------------ tiny configs


def _tiny_kwargs(config_class: type[PreTrainedConfig], depth: int = 0) -> dict:
    defaults = config_class()
    fields = set(defaults.to_dict()) | set(getattr(config_class, "attribute_map", {}))
    kwargs = {key: value for key, value in TINY.items() if key in fields}
    if getattr(defaults, "q_lora_rank", 0) is None:
        kwargs.pop("q_lora_rank")  # keep the query path the checkpoint family uses (no query compression)
    if "qk_rope_head_dim" in fields:  # latent attention: head_dim is the rotary part; one K/V head per head
        kwargs.update(head_dim=TINY["qk_rope_head_dim"], num_key_value_heads=TINY["num_attention_heads"])
    for key in _SPECIAL_TOKENS:
        value = getattr(defaults, key, None)
        if isinstance(value, int) and value >= TINY["vocab_size"]:
            kwargs[key] = 1
        elif isinstance(value, list):
            kwargs[key] = [1]
    # A hybrid's real schedule mixes layer kinds: keep one layer of each, in order of first appearance.
    schedule = getattr(defaults, "layer_types", None)
    schedule_field = getattr(config_class, "attribute_map", {}).get("layer_types", "layer_types")
    settable = schedule_field in getattr(config_class, "__dataclass_fields__", {})
    if isinstance(schedule, (list, tuple)) and len(set(schedule)) > 1 and settable:
        kinds = list(dict.fromkeys(schedule))[:3]
        kwargs.update(layer_types=kinds, num_hidden_layers=len(kinds))
    for key in getattr(config_class, "sub_configs", {}):
        sub = getattr(defaults, key, None)
        if isinstance(sub, PreTrainedConfig) and depth < 2:
            kwargs[key] = {"model_type": sub.model_type, **_tiny_kwargs(type(sub), depth + 1)}
    override = dict(OVERRIDES.get(getattr(config_class, "model_type", None), {}))
    schedule = next((override[key] for key in _LAYER_SCHEDULES if key in override), None)
    if schedule is not None:
        kwargs.pop("layer_types", None)
        override.setdefault("num_hidden_layers", len(schedule))
    for key, value in override.items():  # a sub-config override refines the tiny sub-config
        kwargs[key] = (
            {**kwargs[key], **value}
            if isinstance(kwargs.get(key), dict) and isinstance(value, dict)
            else value
        )
    return kwargs


def tiny_config(model_type: str, **overrides) -> PreTrainedConfig:
    """A config of `model_type` with every size tiny (2 layers of width 32, 4 heads, vocabulary 100)."""
    config_class = CONFIG_MAPPING[model_type]
    return config_class(**{**_tiny_kwargs(config_class), **overrides})


def build(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random `AutoModelForCausalLM` of `model_type`, in eval mode."""
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(config).eval()


# ------------------------------------------------------------------------------------------------ reading q, k, v

_MATMULS = {torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm}
_BADDBMM = {torch.baddbmm, torch.Tensor.baddbmm}
_SOFTMAX = {
    torch.softmax,
    torch.nn.functional.softmax,
    torch.Tensor.softmax,
    torch.logsumexp,
    torch.Tensor.logsumexp,
}
_SDPA = torch.nn.functional.scaled_dot_product_attention


def _is_key_axis(length: int) -> bool:
    return SEQUENCE_LENGTH <= length <= 4 * SEQUENCE_LENGTH  # keys (plus sinks or memory tokens), not experts


class _EagerOps(TorchFunctionMode):
    """Watches torch calls. Inside a watched attention module's forward it reads q, kᵀ (operands of the last matmul
    before the softmax over the key axis) and v (second operand of the first matmul after it); everywhere it notes
    whether any softmax attention ran."""

    def __init__(self):
        super().__init__()
        self.current: list | None = None
        self.saw_attention = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SOFTMAX and _is_key_axis(args[0].shape[-1]) or func is _SDPA:
            self.saw_attention = True
        if self.current is not None:
            if func in _MATMULS:
                self.current.append(("matmul", args[0], args[1]))
            elif func in _BADDBMM:
                operands = list(args[1:]) + [kwargs[k] for k in ("batch1", "batch2") if k in kwargs]
                self.current.append(("matmul", operands[0], operands[1]))
            elif func in _SOFTMAX:
                self.current.append(("softmax", args[0]))
            elif func is _SDPA:
                self.current.append(("sdpa", *args[:3]))
        return out

    @staticmethod
    def qkv(ops: list) -> tuple[torch.Tensor, ...] | None:
        for i, op in enumerate(ops):
            if op[0] == "sdpa":
                return op[1:4]
            if op[0] == "softmax" and _is_key_axis(op[1].shape[-1]):
                before = [o for o in ops[:i] if o[0] == "matmul"]
                after = [o for o in ops[i + 1 :] if o[0] == "matmul"]
                if before and after:
                    return before[-1][1], before[-1][2], after[0][2]
        return None


class QKVReader:
    """Reads the (q, k, v) every attention module consumes, in one of two ways that need no model knowledge: through
    transformers' attention interface (a registered implementation that records its arguments, then calls the
    model's own), or, for models computing attention in their own code, from the eager ops (after switching the
    model to eager attention)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.original = architectures.text_config(model)._attn_implementation or "eager"
        self.records: dict[int, list] = {}
        self.via_interface = True
        name = f"zoo_capture:{self.original}"
        register_wrapped_attention(name, self.original, self._attention)
        try:
            model.set_attn_implementation(name)
        except (ValueError, TypeError, KeyError):
            self.via_interface = False

    def _attention(self, module, query, key, value, attention_mask, *args, **kwargs):
        self.records.setdefault(id(module), []).append((query.detach(), key.detach(), value.detach()))
        return original_attention_function(module, self.original)(
            module, query, key, value, attention_mask, *args, **kwargs
        )

    def run(self, ids: torch.Tensor, modules: list[torch.nn.Module] | None = None):
        """(logits, whether any softmax attention ran, per module in `modules`: the first (q, k, v) it consumed)."""
        self.records.clear()
        ops = _EagerOps()
        hooks = []
        if not self.via_interface and modules:
            for module in modules:
                hooks.append(module.register_forward_pre_hook(lambda m, a: setattr(ops, "current", [])))
                hooks.append(module.register_forward_hook(lambda m, a, o: self._keep(m, ops)))
        try:
            with ops, torch.no_grad():
                logits = self.model(input_ids=ids).logits
        finally:
            for hook in hooks:
                hook.remove()
        qkv = [(self.records.get(id(m)) or [None])[0] for m in modules or []]
        return logits, ops.saw_attention or bool(self.records), qkv

    def _keep(self, module, ops: _EagerOps) -> None:
        found = _EagerOps.qkv(ops.current or [])
        if found is not None:
            self.records.setdefault(id(module), []).append(tuple(t.detach().clone() for t in found))
        ops.current = None

    def to_eager(self) -> None:
        """Read q, k, v from the eager ops instead (models whose attention does not call the interface)."""
        self.via_interface = False
        self.model.set_attn_implementation("eager")
        self.original = "eager"

    def remove(self) -> None:
        self.model.set_attn_implementation(self.original)


# ------------------------------------------------------------------------------------------------ the checks


@dataclass
class Entry:
    """One row of the coverage table."""

    model_type: str
    model_class: str = ""
    kind: str = (
        ""  # decoder | encoder as decoder | encoder-decoder | bidirectional | attention-free | not built
    )
    status: str = ""  # supported | refused | FAILED | not built
    attention: str = ""  # attention layers / blocks
    kv: str = ""  # what K/V tuning trains
    source: str = ""  # table | detected
    note: str = ""


def _is_causal(model: torch.nn.Module, ids: torch.Tensor) -> bool:
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=other).logits
    return torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6, rtol=0)


def _causal_flag(config: PreTrainedConfig) -> str | None:
    names = set(config.to_dict())
    return next((flag for flag in ("is_decoder", "causal") if flag in names), None)


def _describe_kv(peft_model: torch.nn.Module) -> str:
    """What K/V tuning wrapped, per projection name: all rows, or which rows of how many."""
    parts: dict[str, str] = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, KVTuningLayer):
            short = re.sub(r"^.*?\.\d+\.", "", name)
            roles = "+".join(role for role, _ in module.kv_tuning_roles["default"])
            rows = sum(count for _, count in module.kv_tuning_roles["default"])
            covered = "all rows" if rows == module.out_features else f"{rows} of {module.out_features} rows"
            parts.setdefault(short, f"`{short}` ({roles}: {covered})")
    return ", ".join(parts.values())


def _perturb(layers: list[KVTuningLayer], role: str, generator: torch.Generator) -> None:
    with torch.no_grad():
        for layer in layers:
            start = 0
            for name, count in layer.kv_tuning_roles["default"]:
                if name.split("_")[0] == role:
                    delta = layer.kv_tuning_weight["default"]
                    noise = torch.randn(count, delta.shape[1], generator=generator, dtype=delta.dtype)
                    delta[start : start + count] = 0.5 * noise
                start += count


def _check_supported(model: torch.nn.Module, reader: QKVReader, ids: torch.Tensor, entry: Entry) -> list[str]:
    """Every check of a model K/V tuning supports; returns the problems found (empty: supported)."""
    from transformers_momentum.analysis.probe import AttentionProbe

    problems: list[str] = []
    sites = architectures.attention_sites(model)
    modules = [site.module for site in sites]
    entry.attention = f"{len({s.layer for s in sites})}/{len(architectures.decoder_layers(model))} blocks"
    spec = architectures.get_architecture(model)
    entry.source = "detected" if spec.detected else "table"
    logits, _, base_qkv = reader.run(ids, modules)
    if any(qkv is None for qkv in base_qkv):
        reader.to_eager()
        logits, _, base_qkv = reader.run(ids, modules)
    if any(qkv is None for qkv in base_qkv):
        return [f"could not read q, k, v of {type(modules[0]).__name__} (neither interface nor eager ops)"]

    # The analyzer's probe records every attention module, and leaves the logits bit-identical.
    probe = AttentionProbe(model)
    try:
        with probe.record_eval(), torch.no_grad():
            probed = model(input_ids=ids).logits
        if not torch.equal(probed, logits):
            problems.append(f"probe changes logits by {(probed - logits).abs().max():.2e}")
        scores = probe.eval_record().scores
        if len(scores) != len(modules) or not all(s.numel() and torch.isfinite(s).all() for s in scores):
            problems.append(
                f"probe recorded {len(scores)} finite score rows for {len(modules)} attention modules"
            )
    finally:
        probe.remove()
    reader.run(ids, modules)  # the probe restored the implementation the reader installed

    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    kv_rows = {
        name: torch.cat(
            [rows if rows is not None else torch.arange(_rows(model, name)) for rows in roles.values()]
        )
        for name, roles in architectures.kv_projections(model).items()
    }
    peft_model = get_peft_model(model, KVTuningConfig())
    entry.kv = _describe_kv(peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    if not trainable or any("kv_tuning_" not in n for n in trainable):
        problems.append(
            f"trainable parameters besides the K/V deltas: {[n for n in trainable if 'kv_tuning_' not in n]}"
        )
    with torch.no_grad():
        if not torch.equal(peft_model(input_ids=ids).logits, logits):
            problems.append("a fresh adapter changes the logits")

    # The K deltas move every key coordinate and nothing else; the V deltas every value coordinate.
    names = {id(m): n for n, m in peft_model.base_model.model.named_modules()}
    generator = torch.Generator().manual_seed(0)
    for index, module in enumerate(modules):
        prefix = names[id(module)] + "."
        layers = [m for n, m in peft_model.base_model.model.named_modules() if n.startswith(prefix)]
        layers = [m for m in layers if isinstance(m, KVTuningLayer)]
        # Shared-KV attention (DeepSeek-V4) reads one projection as both keys and values: its "kv" deltas move both.
        shared = any(role == "kv" for layer in layers for role, _ in layer.kv_tuning_roles["default"])
        for role, moved in (("kv", (1, 2)),) if shared else (("k", (1,)), ("v", (2,))):
            _perturb(layers, role, generator)
            _, _, qkv = reader.run(ids, modules)
            for position, (after, before) in enumerate(zip(qkv[index], base_qkv[index])):
                tensor = "qkv"[position]
                if position in moved and not (after != before).all():
                    share = (after == before).float().mean()
                    problems.append(
                        f"{role} deltas of attention {index} leave {share:.0%} of {tensor} unmoved"
                    )
                elif position not in moved and position != 0 and not torch.equal(after, before):
                    problems.append(f"{role} deltas of attention {index} move {tensor}")
                elif position == 0 and not torch.equal(after, before):
                    problems.append(f"{role} deltas of attention {index} move the queries")
            for layer in layers:
                with torch.no_grad():
                    layer.kv_tuning_weight["default"].zero_()

    # One AdamW step with weight decay: every delta moves, no base parameter does (query rows included).
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    peft_model.train()
    logits_train = peft_model(input_ids=ids).logits
    torch.nn.functional.cross_entropy(logits_train[0, :-1].float(), ids[0, 1:]).backward()
    dead = [n for n, p in peft_model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    if dead:
        problems.append(f"deltas without gradient: {dead[:2]}")
    optimizer.step()
    peft_model.eval()
    moved_base = [
        n
        for n, p in peft_model.base_model.model.named_parameters()
        if "kv_tuning_" not in n and not torch.equal(p, original[n.replace(".base_layer", "")])
    ]
    if moved_base:
        problems.append(f"base parameters changed by training: {moved_base[:2]}")

    # Merging equals the unmerged adapter; outside the K/V rows the merged weights are the original ones.
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()
        merged_logits = merged(input_ids=ids).logits
    if not torch.allclose(merged_logits, adapted, **MERGE_TOLERANCE):
        problems.append(f"merged logits differ by {(merged_logits - adapted).abs().max():.2e}")
    for name, parameter in merged.named_parameters():
        module_name, _, kind = name.rpartition(".")
        if module_name in kv_rows and kind in ("weight", "bias"):
            transposed = kind == "weight" and isinstance(
                merged.get_submodule(module_name), Conv1D
            )  # [in, out]
            now, before = (parameter.T, original[name].T) if transposed else (parameter, original[name])
            keep = torch.ones(now.shape[0], dtype=torch.bool)
            keep[kv_rows[module_name]] = False
            if not torch.equal(now[keep], before[keep]):
                problems.append(f"merging changed rows of {module_name} outside its K/V rows")
        elif not torch.equal(parameter, original[name]):
            problems.append(f"merging changed {name}")
    return problems


def _rows(model: torch.nn.Module, name: str) -> int:
    module = model.get_submodule(name)
    return module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]


def _refusal(model: torch.nn.Module) -> str | None:
    """The one-line error K/V tuning gives, or None when it accepts the model."""
    try:
        architectures.get_architecture(model)
    except ValueError as error:
        return str(error)
    return None


@contextlib.contextmanager
def _one_thread():
    # Tiny matmuls: thread hand-offs cost more than the work, by ~20x on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@cache
def check(model_type: str) -> Entry:
    start = time.perf_counter()
    try:
        return _check(model_type)
    finally:
        TIMINGS[model_type] = time.perf_counter() - start


TIMINGS: dict[str, float] = {}


def _check(model_type: str) -> Entry:
    """Classify `model_type` from its tiny model's behaviour and run the checks that apply."""
    entry = Entry(model_type)
    with _one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        ids = torch.randint(
            3, TINY["vocab_size"], (1, SEQUENCE_LENGTH), generator=torch.Generator().manual_seed(0)
        )
        try:
            needs_flag = False
            try:
                model = build(model_type)
            except AssertionError:  # an encoder whose LM head demands its decoder flag (Reformer)
                model, needs_flag = build(model_type, is_decoder=True), True
            reader = QKVReader(model)
            _, saw_attention, _ = reader.run(ids)
            causal = _is_causal(model, ids)
        except Exception as error:  # transformers' own defaults for this type do not build a tiny model
            entry.kind = entry.status = "not built"
            entry.note = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            return entry
        entry.model_class = type(model).__name__
        flag = _causal_flag(model.config)
        if architectures._is_encoder_decoder(model.config):
            entry.kind = "encoder-decoder"
        elif flag is not None and (not causal or needs_flag):
            model = build(model_type, **{flag: True})
            reader = QKVReader(model)
            _, saw_attention, _ = reader.run(ids)
            entry.kind = "encoder as decoder" if _is_causal(model, ids) else "bidirectional"
        elif not causal:
            entry.kind = "bidirectional"
        else:
            entry.kind = "decoder" if saw_attention else "attention-free"
        if entry.kind == "encoder as decoder" and not saw_attention:
            entry.kind = "attention-free"

        refusal = _refusal(model)
        if entry.kind in ("encoder-decoder", "bidirectional", "attention-free"):
            entry.status = "refused" if refusal is not None and "\n" not in refusal else "FAILED"
            entry.note = _reason(refusal) if refusal else "accepted although it should be refused"
            return entry
        if refusal is not None:
            entry.status, entry.note = "refused", _reason(refusal)
            return entry
        try:
            problems = _check_supported(model, reader, ids, entry)
        except Exception as error:
            problems = [f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"]
        entry.status = "supported" if not problems else "FAILED"
        entry.note = "; ".join(dict.fromkeys(problems))
        return entry


def _reason(message: str) -> str:
    """The refusal without the model's class name and the generic advice."""
    message = re.sub(r"^\S+ \(model_type='[^']*'\)(: | )", "", message)
    return message.split(". For a softmax-attention model")[0].rstrip(".")


def coverage() -> list[Entry]:
    return [check(model_type) for model_type in MODEL_TYPES]


# ------------------------------------------------------------------------------------------------ the table

KIND_ORDER = (
    "decoder",
    "encoder as decoder",
    "encoder-decoder",
    "bidirectional",
    "attention-free",
    "not built",
)


def summary(entries: list[Entry]) -> dict[str, tuple[int, int]]:
    """Per kind: (supported, total)."""
    return {
        kind: (sum(e.status == "supported" for e in group), len(group))
        for kind in KIND_ORDER
        if (group := [e for e in entries if e.kind == kind])
    }


def render(entries: list[Entry]) -> str:
    """docs/architectures.md"""
    counts = summary(entries)
    supported, total = counts.get("decoder", (0, 0))
    lines = [
        "# Architecture coverage",
        "",
        "<!-- Generated by tests/test_architecture_coverage.py from its own measurements; do not edit. Regenerate:",
        "     TM_WRITE_ARCHITECTURES_DOC=1 pytest tests/test_architecture_coverage.py -->",
        "",
        f"Measured on transformers {transformers.__version__}: one tiny random model of every `model_type` in",
        "`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (2 blocks of width 32; a hybrid gets one block of each kind), classified",
        "from its own behaviour and checked by `tests/test_architecture_coverage.py`:",
        "",
        "* **K/V tuning trains exactly the key/value parameters**: only the deltas are trainable; the K deltas move",
        "  every coordinate of the keys the attention consumes (read from the attention-interface call, or from the",
        "  eager `q @ kᵀ → softmax → @ v` ops) and leave queries and values bit-identical, the V deltas likewise;",
        "  after an AdamW step with weight decay every delta has moved and no base parameter has (the query rows of",
        "  a fused projection included);",
        "* **merge equals unmerged**: `merge_and_unload()` logits within 1e-5 (absolute and relative) of the adapter's,",
        "  and outside the K/V rows the merged weights are bit-identical to the base;",
        "* **the analyzer's probe records** a score row for every attention module, with logits bit-identical to",
        "  the bare model's.",
        "",
        f"**Decoder-only models with softmax attention: {supported} of {total} supported"
        f" ({100 * supported / max(total, 1):.1f}%).**",
        "",
        "| kind | supported / types |",
        "|---|---|",
        *[f"| {kind} | {s} / {t} |" for kind, (s, t) in counts.items()],
        "",
        "Kinds, from the tiny model's behaviour: *decoder*: causal as built, with softmax attention; *encoder as",
        "decoder*: causal only with its `is_decoder`/`causal` flag set (BERT-style); *encoder-decoder*: its config",
        "class describes an encoder-decoder model; *bidirectional*: not causal; *attention-free*: no softmax over the",
        "key axis in its forward; *not built*: transformers' defaults for the type do not build a tiny model.",
        "",
        "## What K/V means",
        "",
        "* Separate projections (`k_proj`/`v_proj`, `key`/`value`, ...): every output row.",
        "* Fused projections (`c_attn`, `query_key_value`, `qkv_proj`, `Wqkv`, `kv_proj`): only the K and V rows,",
        "  located by the row layouts of `transformers_momentum.architectures.ROW_LAYOUTS` (contiguous `[Q|K|V]`,",
        "  per head `[q|k|v]`, Falcon's per-group order, CodeGen's model-parallel `[q|v|k]` shards, multi-query",
        "  sizes); the query rows have no trainable parameter.",
        "* Multi-head latent attention (DeepSeek-V2/V3, MiniCPM3, GLM-4-MoE-Lite, Kimi-Linear, ...): keys are",
        "  `[W_UK c ; RoPE(W_KR x)]` and values `W_UV c` with `c = norm(W_DKV x)`; K/V tuning trains the",
        "  up-projection `kv_b_proj` (W_UK and W_UV, all rows) and the rotary-key rows W_KR of `kv_a_proj_with_mqa`.",
        "  The shared compression W_DKV feeds keys and values alike, like the layer input, and stays frozen.",
        "* Hybrids (Jamba, Zamba, Qwen3-Next, LFM2, RecurrentGemma, ...): the softmax-attention blocks only; the",
        "  state-space, linear-attention and convolution blocks are not touched.",
        "",
        "## Every model type",
        "",
        "| model_type | class | kind | status | attention | K/V trained | found by | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    for e in sorted(entries, key=lambda e: (order.get(e.kind, 99), e.model_type)):
        note = e.note.replace("|", "\\|")
        lines.append(
            f"| `{e.model_type}` | {e.model_class} | {e.kind} | {e.status} | {e.attention} | {e.kv} | {e.source} "
            f"| {note} |"
        )
    return "\n".join(lines) + "\n"
