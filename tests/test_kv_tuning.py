"""K/V-only finetuning (KVTuningConfig) on every architecture in the table."""

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from peft import LNTuningConfig, PeftModel, get_peft_model
from peft.utils import PeftType
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

import transformers_momentum as tm
from transformers_momentum.architectures import (
    ARCHITECTURES,
    attention_modules,
    fused_kv_rows,
    get_architecture,
)
from transformers_momentum.kv_tuning import KVTuningConfig, KVTuningLayer, kv_deltas, reset_kv_deltas

VOCAB = 97
H, HEADS, LAYERS = 32, 4, 2

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, intermediate_size=64),
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=2, intermediate_size=64),
    "mixtral": lambda: transformers.MixtralConfig(
        num_key_value_heads=2, intermediate_size=64, num_local_experts=2
    ),
    "olmo": lambda: transformers.OlmoConfig(num_key_value_heads=2, intermediate_size=64),
    "olmo2": lambda: transformers.Olmo2Config(num_key_value_heads=2, intermediate_size=64),
    "smollm3": lambda: transformers.SmolLM3Config(
        num_key_value_heads=2, intermediate_size=64, pad_token_id=0
    ),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, intermediate_size=64),
    "qwen3": lambda: transformers.Qwen3Config(num_key_value_heads=2, intermediate_size=64, head_dim=8),
    "gemma": lambda: transformers.GemmaConfig(num_key_value_heads=1, intermediate_size=64, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(num_key_value_heads=2, intermediate_size=64, head_dim=8),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        num_key_value_heads=1, intermediate_size=64, head_dim=8
    ),
    "opt": lambda: transformers.OPTConfig(ffn_dim=64, word_embed_proj_dim=H, max_position_embeddings=64),
    "gpt2": lambda: transformers.GPT2Config(n_embd=H, n_layer=LAYERS, n_head=HEADS, n_positions=64),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(intermediate_size=64),
    "bloom": lambda: transformers.BloomConfig(n_embed=H, n_layer=LAYERS, n_head=HEADS),
    "phi3": lambda: transformers.Phi3Config(num_key_value_heads=2, intermediate_size=64, pad_token_id=0),
    "gptj": lambda: transformers.GPTJConfig(
        n_embd=H, n_layer=LAYERS, n_head=HEADS, rotary_dim=4, n_positions=64
    ),
    "gpt_neo": lambda: transformers.GPTNeoConfig(
        hidden_size=H, num_layers=LAYERS, num_heads=HEADS, attention_types=[[["global", "local"], 1]]
    ),
    "falcon": lambda: transformers.FalconConfig(new_decoder_architecture=True, num_kv_heads=2),
    "falcon_multi_query": lambda: transformers.FalconConfig(new_decoder_architecture=False, multi_query=True),
    "falcon_classic": lambda: transformers.FalconConfig(
        new_decoder_architecture=False, multi_query=False, num_kv_heads=HEADS
    ),
    "momentum_gpt": lambda: tm.MomentumGPTConfig(max_position_embeddings=64, bos_token_id=1, eos_token_id=2),
}


def build(name: str) -> torch.nn.Module:
    config = CONFIGS[name]()
    # Common tiny sizes under every naming scheme.
    for key, value in dict(
        vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS
    ).items():
        if key in config.attribute_map or hasattr(config, key):
            with contextlib.suppress(AttributeError, ValueError):  # read-only in some configs
                setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def expected_trainable(model) -> dict[str, tuple[int, ...]]:
    """Names and shapes the K/V tuner must train, computed from the table and the model's own modules."""
    spec = get_architecture(model)
    expected = {}
    for index, attention in enumerate(attention_modules(model)):
        prefix = f"base_model.model.{spec.layers}.{index}.{spec.attention}"
        if spec.kv.fused is None:
            for name in (spec.kv.key, spec.kv.value):
                projection = getattr(attention, name)
                expected[f"{prefix}.{name}.kv_tuning_weight.default"] = tuple(projection.weight.shape)
                if projection.bias is not None:
                    expected[f"{prefix}.{name}.kv_tuning_bias.default"] = (projection.weight.shape[0],)
        else:
            fused = getattr(attention, spec.kv.fused)
            in_features = (
                fused.weight.shape[0]
                if isinstance(fused, transformers.pytorch_utils.Conv1D)
                else fused.weight.shape[1]
            )
            n_heads = model.config.num_attention_heads
            head_dim = model.config.hidden_size // n_heads
            n_kv = {
                "gpt2": n_heads,
                "gpt_neox": n_heads,
                "bloom": n_heads,
                "phi3": getattr(model.config, "num_key_value_heads", n_heads),
            }.get(model.config.model_type)
            if model.config.model_type == "falcon":
                if model.config.new_decoder_architecture:
                    n_kv = model.config.num_kv_heads
                else:
                    n_kv = 1 if model.config.multi_query else n_heads
            rows = 2 * n_kv * head_dim
            expected[f"{prefix}.{spec.kv.fused}.kv_tuning_weight.default"] = (rows, in_features)
            if fused.bias is not None:
                expected[f"{prefix}.{spec.kv.fused}.kv_tuning_bias.default"] = (rows,)
    return expected


ALL = sorted(CONFIGS)


def test_every_table_entry_is_tested():
    assert set(ARCHITECTURES) <= {CONFIGS[name]().model_type for name in CONFIGS}


@pytest.mark.parametrize("name", ALL)
def test_trainable_set_is_exactly_kv(name):
    model = build(name)
    expected = expected_trainable(model)
    peft_model = get_peft_model(model, KVTuningConfig())
    trainable = {n: tuple(p.shape) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == expected
    count, _ = peft_model.get_nb_trainable_parameters()
    assert count == sum(torch.Size(s).numel() for s in expected.values())


class _CaptureQKV:
    """An attention implementation that records the (q, k, v) each layer receives, wrapping sdpa."""

    name = "capture_qkv_test"

    def __init__(self):
        self.records = {}
        AttentionInterface.register(self.name, self)
        AttentionMaskInterface.register(self.name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        self.records.setdefault(
            id(module), (query.detach().clone(), key.detach().clone(), value.detach().clone())
        )
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


FUSED_ON_INTERFACE = ["gpt2", "gpt_neox", "phi3"]
# Fused models off the attention interface: their own splitting function says which outputs are q, k and v.
FUSED_SPLITTERS = {
    "falcon": "_split_heads",
    "falcon_multi_query": "_split_heads",
    "falcon_classic": "_split_heads",
    "bloom": "_reshape",
}


@pytest.mark.parametrize("name", FUSED_ON_INTERFACE)
def test_fused_rows_are_really_keys_and_values(name):
    """Perturbing the K delta moves only keys, the V delta only values: the layout table matches the model code."""
    model = build(name)
    capture = _CaptureQKV()
    model.set_attn_implementation(capture.name)
    peft_model = get_peft_model(model, KVTuningConfig())
    ids = torch.randint(3, VOCAB, (1, 6))
    first_layer = next(m for m in peft_model.modules() if isinstance(m, KVTuningLayer))

    def qkv():
        capture.records.clear()
        peft_model(ids)
        return next(iter(capture.records.values()))

    base_q, base_k, base_v = qkv()
    roles = dict(first_layer.kv_tuning_roles["default"])
    with torch.no_grad():
        first_layer.kv_tuning_weight["default"][: roles["k"]].normal_()
    q, k, v = qkv()
    assert torch.equal(q, base_q) and torch.equal(v, base_v) and not torch.equal(k, base_k)
    reset_kv_deltas(peft_model)
    with torch.no_grad():
        first_layer.kv_tuning_weight["default"][roles["k"] :].normal_()
    q, k, v = qkv()
    assert torch.equal(q, base_q) and torch.equal(k, base_k) and not torch.equal(v, base_v)


@pytest.mark.parametrize("name", sorted(FUSED_SPLITTERS))
def test_fused_rows_match_the_models_own_split(name):
    peft_model = get_peft_model(build(name), KVTuningConfig())
    attention = attention_modules(peft_model)[0]
    projection = getattr(attention, get_architecture(peft_model).kv.fused)
    split = getattr(attention, FUSED_SPLITTERS[name])
    x = torch.randn(1, 5, H)

    def qkv():
        return [t.detach().clone() for t in split(projection(x))[:3]]

    base_q, base_k, base_v = qkv()
    roles = dict(projection.kv_tuning_roles["default"])
    with torch.no_grad():
        projection.kv_tuning_weight["default"][: roles["k"]].normal_()
    q, k, v = qkv()
    assert torch.equal(q, base_q) and torch.equal(v, base_v) and not torch.equal(k, base_k)
    reset_kv_deltas(peft_model)
    with torch.no_grad():
        projection.kv_tuning_weight["default"][roles["k"] :].normal_()
    q, k, v = qkv()
    assert torch.equal(q, base_q) and torch.equal(k, base_k) and not torch.equal(v, base_v)


def _train(peft_model, ids, steps=3, optimizer="adamw", lr=1e-2):
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(parameters, lr=lr)
    peft_model.train()
    torch.manual_seed(0)  # same dropout masks for runs that are compared with each other
    for _ in range(steps):
        peft_model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return peft_model.eval()


@pytest.mark.parametrize("name", ALL)
def test_adamw_keeps_query_and_other_weights_bit_identical_and_round_trips(name, tmp_path):
    model = build(name)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, VOCAB, (2, 12))
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

    # merge: within 1e-5; unmerge: exactly the base weights again
    peft_model.merge_adapter()
    torch.testing.assert_close(peft_model(ids).logits, adapted, atol=1e-5, rtol=0)
    peft_model.unmerge_adapter()
    for n, p in peft_model.base_model.model.named_parameters():
        if "kv_tuning_" not in n:
            assert torch.equal(p, original[n.replace(".base_layer", "")]), n
    merged = peft_model.merge_and_unload()
    assert type(merged) is type(model)
    torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=0)
    spec = get_architecture(merged)
    if spec.kv.fused is not None:  # the query rows of the merged fused weight are the original ones
        changed = [n for n, p in merged.named_parameters() if not torch.equal(p, original[n])]
        assert changed and all(spec.kv.fused in n for n in changed), changed
        k_rows, v_rows = fused_kv_rows(spec.kv.fused_layout, merged.config)
        for attention_index, attention in enumerate(attention_modules(merged)):
            fused = getattr(attention, spec.kv.fused)
            out_features = fused.weight.shape[1 if isinstance(fused, Conv1D) else 0]
            query_rows = torch.ones(out_features, dtype=torch.bool)
            query_rows[torch.cat([k_rows, v_rows])] = False
            name = f"{spec.layers}.{attention_index}.{spec.attention}.{spec.kv.fused}"
            weight, before = fused.weight, original[f"{name}.weight"]
            if isinstance(fused, Conv1D):  # stored [in, out]
                weight, before = weight.T, before.T
            assert query_rows.sum() > 0 and torch.equal(weight[query_rows], before[query_rows])
            assert not torch.equal(weight[~query_rows], before[~query_rows])  # while K/V rows did change
            if fused.bias is not None:
                assert torch.equal(fused.bias[query_rows], original[f"{name}.bias"][query_rows])


def test_targets_bias_and_layers_options():
    model = build("opt")
    k_only = get_peft_model(model, KVTuningConfig(targets="k", train_bias=False, layers_to_transform=[1]))
    names = [n for n, p in k_only.named_parameters() if p.requires_grad]
    assert names == ["base_model.model.model.decoder.layers.1.self_attn.k_proj.kv_tuning_weight.default"]
    gpt2 = get_peft_model(build("gpt2"), KVTuningConfig(targets="v"))
    (layer,) = {type(m) for m in gpt2.modules() if isinstance(m, KVTuningLayer)}
    first = next(m for m in gpt2.modules() if isinstance(m, KVTuningLayer))
    assert first.kv_tuning_roles["default"] == [("v", H)]
    deltas = kv_deltas(gpt2)
    assert set(deltas) == {0, 1} and set(deltas[0]) == {"v_weight", "v_bias"}


def test_kv_deltas_and_reset():
    peft_model = get_peft_model(build("gpt2"), KVTuningConfig())
    ids = torch.randint(3, VOCAB, (2, 10))
    _train(peft_model, ids, optimizer="sgd", lr=0.5)
    deltas = kv_deltas(peft_model)
    assert deltas[0]["k_weight"].shape == (H, H) and deltas[0]["v_bias"].shape == (H,)
    assert deltas[0]["v_weight"].abs().sum() > 0
    reset_kv_deltas(peft_model)
    assert all(t.abs().sum() == 0 for layer in kv_deltas(peft_model).values() for t in layer.values())


def test_peft_type_extension():
    assert PeftType("KV_TUNING") is PeftType.KV_TUNING
    assert "KV_TUNING" in list(PeftType)
    assert KVTuningConfig().peft_type == PeftType.KV_TUNING


@pytest.mark.parametrize("name", ["llama", "opt", "momentum_gpt"])
def test_lntuning_on_k_v_trains_the_same_parameter_set(name):
    """For separate projections peft's built-in LNTuningConfig(target_modules=[k,v]) trains the same parameters:
    same count and, under SGD (gradients w.r.t. W and w.r.t. a zero delta on W are the same), the same model."""
    ids = torch.randint(3, VOCAB, (2, 12))
    spec = get_architecture(build(name))
    kv = get_peft_model(build(name), KVTuningConfig())
    ln = get_peft_model(build(name), LNTuningConfig(target_modules=[spec.kv.key, spec.kv.value]))
    assert kv.get_nb_trainable_parameters()[0] == ln.get_nb_trainable_parameters()[0]
    _train(kv, ids, optimizer="sgd", lr=0.1)
    _train(ln, ids, optimizer="sgd", lr=0.1)
    torch.testing.assert_close(kv(ids).logits, ln(ids).logits, atol=1e-5, rtol=0)


def test_trainer_and_transformers_load_adapter(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids = torch.randint(3, VOCAB, (16, 12))
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
    ids = torch.randint(3, VOCAB, (2, 10))
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
    with pytest.raises(ValueError, match="Could not find the attention.*Name the modules explicitly"):
        get_peft_model(_NoAttention(), KVTuningConfig())


def test_config_naming_absent_modules_is_a_clear_error():
    with pytest.raises(ValueError, match="None of the modules"):
        get_peft_model(build("llama"), KVTuningConfig(key_module="key", value_module="value"))
    with pytest.raises(ValueError, match="go together"):
        KVTuningConfig(key_module="k_proj")
    with pytest.raises(ValueError, match="targets must be one of"):
        KVTuningConfig(targets="q")


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
    # peft's usual spelling names the same modules
    model = build("llama")
    model.config.model_type = "not_in_the_table"
    peft_model = get_peft_model(model, KVTuningConfig(target_modules=["k_proj", "v_proj"]))
    assert peft_model.get_nb_trainable_parameters()[0] == expected
    with pytest.raises(ValueError, match="fused_module"):
        KVTuningConfig(target_modules=["qkv_proj"])


def test_adapter_on_the_wrong_base_is_a_clear_error(tmp_path):
    get_peft_model(build("llama"), KVTuningConfig()).save_pretrained(tmp_path)
    other = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
    )
    with pytest.raises(
        ValueError, match="does not fit the base model.*trained on a model with other dimensions"
    ):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_config(other), tmp_path)


def test_upcast_adapter_path_matches_and_keeps_bf16_base_exact():
    """peft upcasts adapters of a bf16 model to fp32; the layer then adds the delta output separately, so a fresh
    adapter is still exactly the bf16 base, and both forward paths agree on trained deltas."""
    ids = torch.randint(3, VOCAB, (2, 8))
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
    effective = fp32(ids).logits  # fp32 deltas on an fp32 base: one matmul with W + ΔW
    for module in fp32.modules():
        if isinstance(module, KVTuningLayer):  # force the separate-output path
            module.kv_tuning_weight["default"].data = module.kv_tuning_weight["default"].data.double()
            module.kv_tuning_bias["default"].data = module.kv_tuning_bias["default"].data.double()
    torch.testing.assert_close(fp32(ids).logits, effective, atol=1e-5, rtol=0)
