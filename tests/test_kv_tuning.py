"""K/V-only finetuning (KVTuningConfig) as a peft method: what trains, what is saved and loaded, peft's semantics for
target selection, merging and unloading (offloaded layers, the meta device), and clear errors.

Whether every architecture's K/V rows are right is tests/test_architecture_coverage.py's job; here a few
representatives stand for the layouts (separate, fused per kind, latent attention, a hybrid, MomentumGPT).
"""

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from architecture_zoo import build as zoo_build
from peft import (
    LNTuningConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from peft.utils import PeftType
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from transformers_momentum.architectures import get_architecture, kv_projections
from transformers_momentum.kv_tuning import KVTuningConfig, KVTuningLayer, kv_deltas, reset_kv_deltas

VOCAB = 100  # architecture_zoo.TINY
H = 32
LEGACY = Path(__file__).parent / "data" / "kv_adapters_v0.1"

# name -> (model_type, config overrides)
VARIANTS = {
    "falcon": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "falcon_multi_query": ("falcon", dict(new_decoder_architecture=False, multi_query=True)),
    "falcon_classic": ("falcon", dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=4)),
}
REPRESENTATIVE = [
    "llama", "opt", "gpt2", "gpt_bigcode", "gpt_neox", "bloom", "phi3", "codegen", "falcon", "falcon_multi_query",
    "falcon_classic", "deepseek_v3", "jamba", "momentum_gpt",
]  # fmt: skip


def build(name: str, **overrides) -> torch.nn.Module:
    model_type, variant = VARIANTS.get(name, (name, {}))
    return zoo_build(model_type, **{**variant, **overrides})


def _train(peft_model, ids, steps=3, optimizer="adamw", lr=1e-2):
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(parameters, lr=lr)
    peft_model.train()
    torch.manual_seed(0)  # same dropout masks for runs that are compared with each other
    for _ in range(steps):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return peft_model.eval()


def _ids(rows=2, length=12, seed=0):
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- what trains


def _expected_shapes(model) -> dict[str, tuple[int, ...]]:
    """Trainable names and shapes, from the model's own modules and hand-derived row counts per layout."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    model_type = config.model_type
    if model_type == "falcon":
        kv_heads = (
            config.num_kv_heads if config.new_decoder_architecture else (1 if config.multi_query else heads)
        )
    if model_type == "gpt_bigcode":
        kv_heads = 1 if config.multi_query else heads
    expected = {}
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        weight = getattr(module, "weight", None)
        in_attention = re.search(r"\.\d+\.(self_attn|attn|attention|self_attention)\.", name + ".")
        if weight is None or weight.dim() != 2 or not in_attention:
            continue
        in_features = (
            weight.shape[0] if isinstance(module, transformers.pytorch_utils.Conv1D) else weight.shape[1]
        )
        if short in ("k_proj", "v_proj"):
            rows = weight.shape[0]
        elif short in ("c_attn", "query_key_value", "qkv_proj"):
            rows = 2 * kv_heads * head_dim
        elif short == "kv_b_proj":  # latent attention: every row is K (non-rotary part) or V
            rows = weight.shape[0]
        elif short == "kv_a_proj_with_mqa":  # only the rotary key rows
            rows = config.qk_rope_head_dim
        else:
            continue
        prefix = f"base_model.model.{name}"
        expected[f"{prefix}.kv_tuning_weight.default"] = (rows, in_features)
        if getattr(module, "bias", None) is not None:
            expected[f"{prefix}.kv_tuning_bias.default"] = (rows,)
    return expected


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_trainable_set_is_exactly_kv(name):
    model = build(name)
    expected = _expected_shapes(model)
    peft_model = get_peft_model(model, KVTuningConfig())
    trainable = {n: tuple(p.shape) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert peft_model.get_nb_trainable_parameters()[0] == sum(
        torch.Size(s).numel() for s in expected.values()
    )


# Fused models: the model itself must say which of the fused outputs are q, k and v. Releases that split them in a
# helper of their own (Falcon's `_split_heads` up to transformers 5.24, BLOOM's `_reshape`) are asked through it;
# where the split moved inline into `forward` (Falcon since 5.25), the q/k/v the model hands to the attention
# interface are recorded instead.
FUSED_SPLITTERS = {
    "falcon": "_split_heads",
    "falcon_multi_query": "_split_heads",
    "falcon_classic": "_split_heads",
    "bloom": "_reshape",
}


def _first_layer_qkv(peft_model, name: str, layer: KVTuningLayer, x: torch.Tensor):
    """Layer 0's (q, k, v) as the model itself splits the fused projection's output."""
    attention = next((m for m in peft_model.modules() if hasattr(m, FUSED_SPLITTERS[name])), None)
    if attention is not None:
        split = getattr(attention, FUSED_SPLITTERS[name])
        return [t.detach().clone() for t in split(layer(x))[:3]]
    from transformers_momentum.attention_interface import (
        original_attention_function,
        register_wrapped_attention,
    )

    base = peft_model.config._attn_implementation
    recorded = []

    def record(module, query, key, value, *args, **kwargs):
        recorded.append([t.detach().clone() for t in (query, key, value)])
        return original_attention_function(module, base)(module, query, key, value, *args, **kwargs)

    register_wrapped_attention(f"kv-test:{base}", base, record)
    peft_model.set_attn_implementation(f"kv-test:{base}")
    try:
        with torch.no_grad():
            peft_model(torch.arange(5)[None] + 3)
    finally:
        peft_model.set_attn_implementation(base)
    assert recorded, f"{name}: no attention call went through the attention interface"
    return recorded[0]


@pytest.mark.parametrize("name", sorted(FUSED_SPLITTERS))
def test_fused_rows_match_the_models_own_split(name):
    peft_model = get_peft_model(build(name), KVTuningConfig())
    layer = next(m for m in peft_model.modules() if isinstance(m, KVTuningLayer))
    x = torch.randn(1, 5, H)

    def qkv():
        return _first_layer_qkv(peft_model, name, layer, x)

    base_q, base_k, base_v = qkv()
    roles = dict(layer.kv_tuning_roles["default"])
    with torch.no_grad():
        layer.kv_tuning_weight["default"][: roles["k"]].normal_()
    q, k, v = qkv()
    assert torch.equal(q, base_q) and torch.equal(v, base_v) and not torch.equal(k, base_k)
    reset_kv_deltas(peft_model)
    with torch.no_grad():
        layer.kv_tuning_weight["default"][roles["k"] :].normal_()
    q, k, v = qkv()
    assert torch.equal(q, base_q) and torch.equal(k, base_k) and not torch.equal(v, base_v)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_adamw_keeps_query_and_other_weights_bit_identical_and_round_trips(name, tmp_path):
    model = build(name)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    kv_rows = {  # fused projections: their K and V rows
        name: torch.cat(list(roles.values()))
        for name, roles in kv_projections(model).items()
        if all(rows is not None for rows in roles.values())
    }
    ids = _ids()
    base_logits = model(ids).logits.detach()
    peft_model = get_peft_model(model, KVTuningConfig())
    assert torch.equal(peft_model(ids).logits, base_logits)  # zero deltas: exactly the base model
    _train(peft_model, ids)
    adapted = peft_model(ids).logits.detach()
    assert not torch.allclose(adapted, base_logits)

    # Base parameters never change (only deltas train), whatever the optimizer does.
    for n, p in peft_model.base_model.model.named_parameters():
        if "kv_tuning_" not in n:
            assert torch.equal(p, original[n.replace(".base_layer", "")]), n

    # save / load in this process: exact
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build(name), tmp_path).eval()
    assert torch.equal(reloaded(ids).logits, adapted)

    # merge: within 1e-5; unmerge: exactly the base weights again (the merged rows are restored, not subtracted)
    peft_model.merge_adapter()
    torch.testing.assert_close(peft_model(ids).logits, adapted, atol=1e-5, rtol=0)
    peft_model.unmerge_adapter()
    for n, p in peft_model.base_model.model.named_parameters():
        if "kv_tuning_" not in n:
            assert torch.equal(p, original[n.replace(".base_layer", "")]), n
    merged = peft_model.merge_and_unload()
    assert type(merged) is type(model)
    torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=0)
    # outside the K/V rows (the query rows of a fused projection) the merged weights are the original ones
    for module_name, rows in kv_rows.items():
        module = merged.get_submodule(module_name)
        weight, before = module.weight, original[f"{module_name}.weight"]
        if isinstance(module, transformers.pytorch_utils.Conv1D):  # stored [in, out]
            weight, before = weight.T, before.T
        other = torch.ones(weight.shape[0], dtype=torch.bool)
        other[rows] = False
        assert torch.equal(weight[other], before[other])
        assert not torch.equal(weight[~other], before[~other])  # while the K/V rows did change


# ---------------------------------------------------------------------------------------------- selection


def _wrapped(peft_model) -> list[str]:
    return [
        n.removeprefix("base_model.model.")
        for n, m in peft_model.named_modules()
        if isinstance(m, KVTuningLayer)
    ]


def test_targets_bias_and_layers_options():
    k_only = get_peft_model(
        build("opt"), KVTuningConfig(targets="k", train_bias=False, layers_to_transform=[1])
    )
    names = [n for n, p in k_only.named_parameters() if p.requires_grad]
    assert names == ["base_model.model.model.decoder.layers.1.self_attn.k_proj.kv_tuning_weight.default"]
    gpt2 = get_peft_model(build("gpt2"), KVTuningConfig(targets="v"))
    first = next(m for m in gpt2.modules() if isinstance(m, KVTuningLayer))
    assert first.kv_tuning_roles["default"] == [("v", H)]
    deltas = kv_deltas(gpt2)
    assert set(deltas) == {0, 1} and set(deltas[0]) == {"v_weight", "v_bias"}


def test_target_modules_have_peft_semantics():
    """A list selects by name suffix, a string is a regex over full names, exclude_modules and layers_to_transform
    as in peft; only key/value projections of attention layers can match."""
    by_suffix = get_peft_model(build("llama"), KVTuningConfig(target_modules=["v_proj"]))
    assert _wrapped(by_suffix) == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    by_regex = get_peft_model(build("llama"), KVTuningConfig(target_modules=r".*\.1\.self_attn\.(k|v)_proj"))
    assert _wrapped(by_regex) == ["model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"]
    excluded = get_peft_model(
        build("llama"), KVTuningConfig(exclude_modules=["model.layers.0.self_attn.k_proj"])
    )
    assert "model.layers.0.self_attn.k_proj" not in _wrapped(excluded) and len(_wrapped(excluded)) == 3
    default = get_peft_model(build("llama"), KVTuningConfig())
    assert default.peft_config["default"].target_modules == {"k_proj", "v_proj"}
    with pytest.raises(ValueError, match="selects none of the key/value projections.*k_proj"):
        get_peft_model(build("llama"), KVTuningConfig(target_modules=["q_proj"]))


def test_target_module_mapping_comes_from_the_architecture_table():
    from transformers_momentum.architectures import ARCHITECTURES
    from transformers_momentum.kv_tuning import KVTuningModel

    assert KVTuningModel.target_module_mapping["gpt2"] == ["c_attn"]
    assert KVTuningModel.target_module_mapping["xglm"] == ["k_proj", "v_proj"]
    assert set(KVTuningModel.target_module_mapping) == set(ARCHITECTURES)


def test_multimodal_model_adapts_only_its_language_model():
    model = build("gemma3")
    vision_kv = [n for n, _ in model.named_modules() if "vision" in n and n.endswith(("k_proj", "v_proj"))]
    assert vision_kv  # the vision tower has projections by the same names
    wrapped = _wrapped(get_peft_model(model, KVTuningConfig()))
    assert wrapped and all(n.startswith("model.language_model.layers.") for n in wrapped)


def test_hybrid_model_adapts_only_its_attention_layers():
    wrapped = _wrapped(get_peft_model(build("jamba"), KVTuningConfig()))
    assert wrapped == [
        "model.layers.1.self_attn.k_proj",
        "model.layers.1.self_attn.v_proj",
    ]  # layer 0 is Mamba


def test_fan_in_fan_out_is_set_once_from_the_model():
    assert (
        get_peft_model(build("gpt2"), KVTuningConfig()).peft_config["default"].fan_in_fan_out is True
    )  # Conv1D
    assert get_peft_model(build("llama"), KVTuningConfig()).peft_config["default"].fan_in_fan_out is False


def test_kv_deltas_and_reset():
    peft_model = get_peft_model(build("gpt2"), KVTuningConfig())
    _train(peft_model, _ids(length=10), optimizer="sgd", lr=0.5)
    deltas = kv_deltas(peft_model)
    assert deltas[0]["k_weight"].shape == (H, H) and deltas[0]["v_bias"].shape == (H,)
    assert deltas[0]["v_weight"].abs().sum() > 0
    reset_kv_deltas(peft_model)
    assert all(t.abs().sum() == 0 for layer in kv_deltas(peft_model).values() for t in layer.values())


def test_latent_attention_deltas_are_named_by_role():
    deltas = kv_deltas(get_peft_model(build("deepseek_v3"), KVTuningConfig()))
    config = build("deepseek_v3").config
    heads = config.num_attention_heads
    assert deltas[0]["k_weight"].shape == (heads * config.qk_nope_head_dim, config.kv_lora_rank)
    assert deltas[0]["v_weight"].shape == (heads * config.v_head_dim, config.kv_lora_rank)
    assert deltas[0]["k_rope_weight"].shape == (config.qk_rope_head_dim, config.hidden_size)


def test_peft_type_extension():
    assert PeftType("KV_TUNING") is PeftType.KV_TUNING
    assert "KV_TUNING" in list(PeftType)
    assert KVTuningConfig().peft_type == PeftType.KV_TUNING


@pytest.mark.parametrize("name", ["llama", "opt", "momentum_gpt"])
def test_lntuning_on_k_v_trains_the_same_parameter_set(name):
    """For separate projections peft's built-in LNTuningConfig(target_modules=[k,v]) trains the same parameters:
    same count and, under SGD (gradients w.r.t. W and w.r.t. a zero delta on W are the same), the same model."""
    ids = _ids()
    spec = get_architecture(build(name))
    kv = get_peft_model(build(name), KVTuningConfig())
    ln = get_peft_model(build(name), LNTuningConfig(target_modules=[spec.kv.key, spec.kv.value]))
    assert kv.get_nb_trainable_parameters()[0] == ln.get_nb_trainable_parameters()[0]
    _train(kv, ids, optimizer="sgd", lr=0.1)
    _train(ln, ids, optimizer="sgd", lr=0.1)
    torch.testing.assert_close(kv(ids).logits, ln(ids).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_adapters_saved_by_version_0_1_still_load(name):
    """Adapters written before kv_tuning moved onto peft's machinery (full module paths in target_modules,
    key_module/value_module or fused_module with the old layout name) load to the very same model."""
    saved = json.loads((LEGACY / name / "adapter" / "adapter_config.json").read_text())
    assert "fan_in_fan_out" not in saved and saved["target_modules"][0].endswith(("k_proj", "c_attn"))
    base = AutoModelForCausalLM.from_pretrained(LEGACY / name / "base")
    model = PeftModel.from_pretrained(base, LEGACY / name / "adapter").eval()
    # Loading is exact on any machine: every stored delta lands, bit for bit, in the K/V-tuning parameters.
    stored = load_file(LEGACY / name / "adapter" / "adapter_model.safetensors")
    loaded = {n.removesuffix(".default"): p for n, p in model.named_parameters() if "kv_tuning_" in n}
    assert loaded.keys() == stored.keys() and all(torch.equal(loaded[n], stored[n]) for n in stored)
    # The logits were recorded on the machine that wrote the fixture. Float kernels (BLAS blocking, SIMD width,
    # thread count) differ between CPUs, so across machines they agree to rounding, not bit for bit: seen 4.5e-8 on
    # an AMD EPYC against logits of magnitude ~1. 1e-5 is ~200x that and far below any change of the model.
    expected = load_file(LEGACY / name / "expected.safetensors")
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
        torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-5)
        # Within one process the legacy adapter and the same deltas in today's format are the very same model.
        today = get_peft_model(AutoModelForCausalLM.from_pretrained(LEGACY / name / "base"), KVTuningConfig())
        set_peft_model_state_dict(today, get_peft_model_state_dict(model))
        assert torch.equal(today.eval()(input_ids=expected["input_ids"]).logits, logits)


def test_trainer_and_transformers_load_adapter(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids = _ids(16)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    peft_model = get_peft_model(build("llama"), KVTuningConfig())
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    Trainer(model=peft_model, args=args, train_dataset=dataset).train()
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "kv_tuning_" in n)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = peft_model.eval()(ids[:2]).logits
    plain = build("llama")
    plain.load_adapter(str(tmp_path / "adapter"))  # transformers' own PEFT integration
    torch.testing.assert_close(plain(ids[:2]).logits, expected, atol=0, rtol=0)


def test_fresh_process_loads_the_adapter(tmp_path):
    peft_model = get_peft_model(build("gpt2"), KVTuningConfig())
    ids = _ids(length=10)
    _train(peft_model, ids)
    peft_model.save_pretrained(tmp_path / "adapter")
    build("gpt2").save_pretrained(tmp_path / "base")
    expected = peft_model(ids).logits
    from safetensors.torch import save_file

    save_file({"ids": ids, "logits": expected.detach().contiguous()}, tmp_path / "expected.safetensors")
    script = textwrap.dedent(
        f"""
        import torch, transformers_momentum
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained({str(tmp_path / "base")!r})
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        print("FRESH_OK", model.peft_config["default"].peft_type.value)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert "FRESH_OK KV_TUNING" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- meta, offload


def test_meta_device_and_low_cpu_mem_usage(tmp_path):
    """On the meta device the deltas are created there (no memory); low_cpu_mem_usage loading gives the same model."""
    with torch.device("meta"):
        meta_model = build("gpt2")
    meta_peft = get_peft_model(meta_model, KVTuningConfig())
    deltas = {n: p for n, p in meta_peft.named_parameters() if "kv_tuning_" in n}
    assert deltas and all(p.is_meta for p in deltas.values())
    real = get_peft_model(build("gpt2"), KVTuningConfig())
    assert {n: p.shape for n, p in deltas.items()} == {
        n: p.shape for n, p in real.named_parameters() if "kv_tuning_" in n
    }

    _train(real, _ids())
    real.save_pretrained(tmp_path)
    ids = _ids(seed=1)
    expected = real(ids).logits
    lazy = PeftModel.from_pretrained(build("gpt2"), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(p.is_meta for p in lazy.parameters())
    assert torch.equal(lazy(ids).logits, expected)
    lazy_added = get_peft_model(build("gpt2"), KVTuningConfig(), low_cpu_mem_usage=True)
    assert all(p.is_meta for n, p in lazy_added.named_parameters() if "kv_tuning_" in n)


def test_offloaded_layers_forward_merge_and_unmerge():
    """Base projections whose weights live offloaded behind accelerate hooks (materialised only inside their own
    forward): the adapter computes the same model, and BaseTuner's merge/unmerge/unload load them to merge."""
    from accelerate import cpu_offload
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    peft_model = get_peft_model(build("gpt2"), KVTuningConfig())
    _train(peft_model, _ids())
    ids = _ids(seed=1)
    expected = peft_model(ids).logits.detach()
    original = {n: p.detach().clone() for n, p in peft_model.named_parameters()}

    # the whole model offloaded to CPU memory, each K/V layer loaded as a unit (accelerate's cpu_offload)
    whole = copy.deepcopy(peft_model)
    cpu_offload(whole, execution_device="cpu", preload_module_classes=["KVTuningLayer"])
    assert whole.base_model.model.transformer.h[0].attn.c_attn.base_layer.weight.is_meta
    assert torch.equal(whole(ids).logits, expected)

    # only the base projections offloaded: the deltas' output is added to the base layer's own
    layers = [m for m in peft_model.modules() if isinstance(m, KVTuningLayer)]
    for layer in layers:
        add_hook_to_module(layer.base_layer, AlignDevicesHook(execution_device="cpu", offload=True))
    assert layers[0].base_layer.weight.is_meta
    torch.testing.assert_close(peft_model(ids).logits, expected, atol=1e-6, rtol=0)
    peft_model.merge_adapter()
    torch.testing.assert_close(peft_model(ids).logits, expected, atol=1e-5, rtol=0)
    peft_model.unmerge_adapter()
    for layer, name in ((m, n) for n, m in peft_model.named_modules() if isinstance(m, KVTuningLayer)):
        stored = layer.base_layer._hf_hook.weights_map["weight"]
        assert torch.equal(stored, original[f"{name}.base_layer.weight"])  # restored exactly, while offloaded
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- errors


class _NoAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig()
        self.config.model_type = "made_up"
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    def forward(self, x):
        return self.blocks[0](x)


def test_model_without_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="none of its blocks.*attention-free.*name its projections"):
        get_peft_model(_NoAttention(), KVTuningConfig())


def test_config_naming_absent_modules_is_a_clear_error():
    with pytest.raises(ValueError, match="selects none of the key/value projections"):
        get_peft_model(build("llama"), KVTuningConfig(key_module="key", value_module="value"))
    with pytest.raises(ValueError, match="go together"):
        KVTuningConfig(key_module="k_proj")
    with pytest.raises(ValueError, match="targets must be one of"):
        KVTuningConfig(targets="q")
    with pytest.raises(ValueError, match="is not a row layout"):
        KVTuningConfig(fused_module="c_attn", fused_layout="no_such_layout")


def test_explicit_module_names_work_for_unknown_models():
    model = build("llama")
    model.config.model_type = "not_in_the_table"
    expected = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if n.endswith(("self_attn.k_proj", "self_attn.v_proj"))
    )
    peft_model = get_peft_model(model, KVTuningConfig(key_module="k_proj", value_module="v_proj"))
    assert peft_model.get_nb_trainable_parameters()[0] == expected > 0
    # a fused projection of a model the table does not know, named with its layout
    gpt2 = build("gpt2")
    gpt2.config.model_type = "gpt2_lookalike"
    with pytest.raises(ValueError, match="fused projection.*attn.c_attn"):
        get_peft_model(gpt2, KVTuningConfig())
    named = get_peft_model(gpt2, KVTuningConfig(fused_module="c_attn", fused_layout="qkv"))
    reference = get_peft_model(build("gpt2"), KVTuningConfig())
    assert named.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()


def test_adapter_on_the_wrong_base_is_a_clear_error(tmp_path):
    get_peft_model(build("llama"), KVTuningConfig()).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="does not fit the base model.*trained on a model with other dimensions"
    ):
        PeftModel.from_pretrained(build("llama", hidden_size=48), tmp_path)


def test_upcast_adapter_path_matches_and_keeps_bf16_base_exact():
    """peft upcasts adapters of a bf16 model to fp32; the layer then adds the delta output separately, so a fresh
    adapter is still exactly the bf16 base, and both forward paths agree on trained deltas."""
    ids = _ids(length=8)
    model = build("gpt2").to(torch.bfloat16)
    base_logits = model(ids).logits
    peft_model = get_peft_model(model, KVTuningConfig())
    layer = next(m for m in peft_model.modules() if isinstance(m, KVTuningLayer))
    assert layer.kv_tuning_weight["default"].dtype == torch.float32  # upcast by peft
    assert torch.equal(peft_model(ids).logits, base_logits)

    fp32 = get_peft_model(build("gpt2"), KVTuningConfig())
    with torch.no_grad():
        for name, parameter in fp32.named_parameters():
            if "kv_tuning_" in name:
                parameter.normal_(std=0.05)
    effective = fp32(ids).logits  # fp32 deltas on an fp32 base: the base layer's own forward with W + ΔW
    for module in fp32.modules():
        if isinstance(module, KVTuningLayer):  # force the separate-output path
            module.kv_tuning_weight["default"].data = module.kv_tuning_weight["default"].data.double()
            module.kv_tuning_bias["default"].data = module.kv_tuning_bias["default"].data.double()
    torch.testing.assert_close(fp32(ids).logits, effective, atol=1e-5, rtol=0)
