"""The architecture table and its detection: the parts it names are the model's real parts, row layouts match
hand-computed indices, and models it cannot address get a one-line reason."""

import pytest
import torch
import transformers
from architecture_zoo import build
from peft import get_peft_model
from torch import nn

from transformers_momentum.architectures import (
    ARCHITECTURES,
    LATENT_KV,
    ArchitectureSpec,
    KVLayout,
    KVProjection,
    attention_layers,
    attention_modules,
    decoder_layers,
    final_norm,
    get_architecture,
    head_geometry,
    is_norm,
    kv_rows,
    max_positions,
    query_projection,
    text_decoder,
)
from transformers_momentum.kv_tuning import KVTuningConfig
from transformers_momentum.models.momentum_gpt import MomentumGPTConfig

INSTALLED_TABLE_TYPES = sorted(t for t in ARCHITECTURES if t in transformers.CONFIG_MAPPING)


def _logits_through_final_norm(model, ids) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}
    handle = final_norm(model).register_forward_hook(lambda m, a, output: seen.setdefault("out", output))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        handle.remove()
        head_logits = model.get_output_embeddings()(seen["out"])
    cap = getattr(
        model.config.get_text_config(), "final_logit_softcapping", None
    )  # gemma2/3 cap after the head
    if cap:
        head_logits = torch.tanh(head_logits / cap) * cap
    return head_logits, logits


@pytest.mark.parametrize(
    "model_type", INSTALLED_TABLE_TYPES + ["llama", "qwen3", "deepseek_v3", "jamba", "gemma3"]
)
def test_spec_names_the_models_real_parts(model_type):
    model = build(model_type)
    spec = get_architecture(model)
    assert spec is ARCHITECTURES.get(model.config.model_type, spec) and spec.detected == (
        model_type not in ARCHITECTURES
    )
    blocks = decoder_layers(model)
    assert (
        isinstance(blocks, nn.ModuleList) and len(blocks) == model.config.get_text_config().num_hidden_layers
    )
    modules = attention_modules(model)
    assert modules and all(
        isinstance(getattr(m, n.split(".")[0]), nn.Module) for m in modules for n in spec.kv.module_names
    )
    if spec.query is not None:
        assert all(query_projection(m, model.config) is not None for m in modules)
    if (
        spec.final_norm is not None
    ):  # the final norm really feeds the LM head: its output is what the head sees
        head_logits, logits = _logits_through_final_norm(model, torch.arange(3, 9)[None])
        torch.testing.assert_close(head_logits, logits, atol=1e-5, rtol=0)


def test_momentum_gpt_entry_matches_the_model():
    from transformers_momentum import MomentumGPTForCausalLM

    model = MomentumGPTForCausalLM(
        MomentumGPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    )
    assert ARCHITECTURES["momentum_gpt"] == ArchitectureSpec(attention="attn")
    assert decoder_layers(model) is model.model.layers and final_norm(model) is model.model.norm
    assert attention_modules(model)[0] is model.model.layers[0].attn


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "jamba"])
def test_lookup_through_peft_wrappers(model_type):
    model = build(model_type)
    peft_model = get_peft_model(model, KVTuningConfig())
    assert get_architecture(peft_model) == get_architecture(model)
    assert decoder_layers(peft_model) is decoder_layers(model)
    assert final_norm(peft_model) is final_norm(model)
    assert attention_modules(peft_model) == attention_modules(model)


def test_detection_for_models_missing_from_the_table():
    model = build("llama")
    model.config.model_type = "llama_lookalike_not_in_table"
    spec = get_architecture(model)
    assert spec == ArchitectureSpec(
        KVLayout.separate("k_proj", "v_proj"), "q_proj", "self_attn", "layers", "norm"
    )
    assert spec.detected and decoder_layers(model) is model.model.layers


def test_detection_finds_a_hybrids_attention_layers_and_a_wrappers_text_decoder():
    jamba = build("jamba")  # block 0 Mamba, block 1 attention
    assert attention_layers(jamba) == [1] and len(decoder_layers(jamba)) == 2
    gemma3 = build("gemma3")  # vision tower + language model
    path, decoder = text_decoder(gemma3)
    assert path == "model.language_model" and decoder is gemma3.model.language_model
    assert all(m in list(gemma3.model.language_model.modules()) for m in attention_modules(gemma3))
    deepseek = build("deepseek_v3")
    assert get_architecture(deepseek).kv == LATENT_KV


def test_unknown_fused_model_error_says_what_is_missing():
    model = build("gpt2")
    model.config.model_type = "fused_and_not_in_table"  # fused c_attn: its row order is not in the weights
    with pytest.raises(ValueError) as error:
        get_architecture(model)
    message = str(error.value)
    assert "\n" not in message
    for looked_for in ("attn.c_attn", "fused_module", "fused_layout", "ARCHITECTURES"):
        assert looked_for in message


@pytest.mark.parametrize(
    ("model_type", "reason"),
    [("mamba", "attention-free"), ("rwkv", "compute no attention through"), ("bart", "encoder-decoder")],
)
def test_refusals_are_one_line_reasons(model_type, reason):
    with pytest.raises(ValueError, match=reason) as error:
        get_architecture(build(model_type))
    assert "\n" not in str(error.value)


def test_layout_validation():
    with pytest.raises(ValueError, match="Unknown row layout"):
        KVProjection("qkv", "no_such_layout")
    with pytest.raises(ValueError, match="Unknown row layout"):
        kv_rows("no_such_layout", nn.Module(), transformers.LlamaConfig())


def _attention(**attributes) -> nn.Module:
    module = nn.Module()
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def test_row_layouts_against_hand_computed_indices():
    """4 query heads of width 8 (2 key/value heads where grouped); every index written out by hand."""
    gqa = _attention(num_heads=4, num_key_value_heads=2, head_dim=8)
    rows = kv_rows("qkv", gqa, None)  # [Q 0..31 | K 32..47 | V 48..63]
    assert rows["k"].tolist() == list(range(32, 48)) and rows["v"].tolist() == list(range(48, 64))
    rows = kv_rows("kv", gqa, None)  # JetMoE [K | V]
    assert rows["k"].tolist() == list(range(16)) and rows["v"].tolist() == list(range(16, 32))
    per_head = kv_rows(
        "per_head_qkv", _attention(num_heads=4, head_dim=8), None
    )  # [q0 k0 v0 | q1 k1 v1 | ...]
    assert per_head["k"][:8].tolist() == list(range(8, 16)) and per_head["v"][:8].tolist() == list(
        range(16, 24)
    )
    assert per_head["k"][8:16].tolist() == list(range(32, 40)) and len(per_head["k"]) == 32
    falcon = transformers.FalconConfig(new_decoder_architecture=True, num_attention_heads=4, num_kv_heads=2)
    rows = kv_rows(
        "falcon", _attention(num_heads=4, num_kv_heads=2, head_dim=8), falcon
    )  # [q q k v] per group
    assert rows["k"].tolist() == list(range(16, 24)) + list(range(48, 56))
    assert rows["v"].tolist() == list(range(24, 32)) + list(range(56, 64))
    multi_query = transformers.FalconConfig(new_decoder_architecture=False, multi_query=True)
    rows = kv_rows("falcon", _attention(num_heads=4, head_dim=8), multi_query)  # [Q 0..31 | k | v]
    assert rows["k"].tolist() == list(range(32, 40)) and rows["v"].tolist() == list(range(40, 48))
    # CodeGen: 4 model-parallel shards of 8 rows each of [q | v | k], i.e. shard s = rows 24s .. 24s+23
    rows = kv_rows("codegen", _attention(num_attention_heads=4, head_dim=8, mp_num=4), None)
    assert rows["v"].tolist() == [r for s in range(4) for r in range(24 * s + 8, 24 * s + 16)]
    assert rows["k"].tolist() == [r for s in range(4) for r in range(24 * s + 16, 24 * s + 24)]
    # latent attention, 2 heads: kv_b_proj per head [k_nope (4) | v (8)]; kv_a_proj_with_mqa [latent (16) | rope (4)]
    latent = _attention(num_heads=2, qk_nope_head_dim=4, v_head_dim=8, kv_lora_rank=16, qk_rope_head_dim=4)
    rows = kv_rows("latent_kv", latent, None)
    assert rows["k"].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert rows["v"].tolist() == list(range(4, 12)) + list(range(16, 24))
    assert kv_rows("latent_rope_key", latent, None)["k_rope"].tolist() == [16, 17, 18, 19]


def test_analyzer_helpers():
    gpt2 = build("gpt2")
    assert head_geometry(gpt2) == (4, 4, 8) and head_geometry(gpt2.config) == (4, 4, 8)
    assert max_positions(gpt2) == gpt2.config.n_positions
    llama = build("llama")
    projection, scaling = query_projection(attention_modules(llama)[0], llama.config)
    assert projection is attention_modules(llama)[0].q_proj and scaling == 8**-0.5
    assert query_projection(attention_modules(gpt2)[0], gpt2.config) is None  # fused c_attn
    assert is_norm(final_norm(llama)) and final_norm(build("bert", is_decoder=True)) is None  # post-norm
