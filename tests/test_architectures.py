"""The architecture table: every entry resolves to the real modules of a tiny random model of that architecture."""

import pytest
import torch
import transformers
from peft import get_peft_model
from test_kv_tuning import ALL, CONFIGS, build
from torch import nn
from transformers.pytorch_utils import Conv1D

from transformers_momentum.architectures import (
    ARCHITECTURES,
    ArchitectureSpec,
    KVLayout,
    attention_modules,
    decoder_layers,
    final_norm,
    fused_kv_rows,
    get_architecture,
)
from transformers_momentum.kv_tuning import KVTuningConfig

_NORMS = (nn.LayerNorm, nn.RMSNorm)


def _is_norm(module: nn.Module) -> bool:
    # transformers ships one RMSNorm class per model (LlamaRMSNorm, GemmaRMSNorm, ...)
    return isinstance(module, _NORMS) or "norm" in type(module).__name__.lower()


@pytest.mark.parametrize("name", ALL)
def test_table_entry_points_at_real_modules(name):
    model = build(name)
    spec = get_architecture(model)
    assert spec is ARCHITECTURES[model.config.model_type]
    layers = decoder_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == model.config.num_hidden_layers
    assert _is_norm(final_norm(model))
    attentions = attention_modules(model)
    assert len(attentions) == len(layers)
    for attention in attentions:
        for module_name in spec.kv.module_names:
            assert isinstance(getattr(attention, module_name), (nn.Linear, Conv1D))
    # the final norm really feeds the LM head: its output is exactly what the head sees (olmo's has no weight)
    ids = torch.randint(3, 90, (1, 5))
    seen = {}
    handle = final_norm(model).register_forward_hook(
        lambda module, args, output: seen.setdefault("out", output)
    )
    logits = model(ids).logits
    handle.remove()
    head_logits = model.get_output_embeddings()(seen["out"])
    cap = getattr(
        model.config, "final_logit_softcapping", None
    )  # gemma2 / gemma3 cap the logits after the head
    if cap:
        head_logits = torch.tanh(head_logits / cap) * cap
    torch.testing.assert_close(head_logits, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "momentum_gpt"])
def test_lookup_through_peft_wrappers(name):
    model = build(name)
    peft_model = get_peft_model(model, KVTuningConfig())
    assert get_architecture(peft_model) is get_architecture(model)
    assert decoder_layers(peft_model) is decoder_layers(model)
    assert final_norm(peft_model) is final_norm(model)


def test_momentum_gpt_entry_matches_the_model():
    momentum_gpt = pytest.importorskip("transformers_momentum.models.momentum_gpt")
    config = momentum_gpt.MomentumGPTConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
    )
    model = momentum_gpt.MomentumGPTForCausalLM(config)
    assert ARCHITECTURES["momentum_gpt"] == ArchitectureSpec(
        "model.layers", "attn", "model.norm", KVLayout(key="k_proj", value="v_proj")
    )
    assert decoder_layers(model) is model.model.layers and final_norm(model) is model.model.norm
    attention = attention_modules(model)[0]
    assert attention.k_proj.bias is not None and attention.v_proj.bias is not None


def test_automatic_detection_for_models_missing_from_the_table():
    model = build("llama")
    model.config.model_type = "llama_lookalike_not_in_table"
    spec = get_architecture(model)
    assert spec == ArchitectureSpec(
        "model.layers", "self_attn", "model.norm", KVLayout(key="k_proj", value="v_proj")
    )
    assert decoder_layers(model) is model.model.layers
    expected = sum(p.numel() for n, p in model.named_parameters() if ".k_proj." in n or ".v_proj." in n)
    peft_model = get_peft_model(model, KVTuningConfig())
    assert peft_model.get_nb_trainable_parameters()[0] == expected


def test_unknown_model_error_says_what_was_looked_for():
    model = build("gpt2")
    model.config.model_type = "fused_and_not_in_table"  # fused c_attn: detection cannot guess the layout
    with pytest.raises(ValueError) as error:
        get_architecture(model)
    message = str(error.value)
    for looked_for in ("transformer.h", "k_proj", "fused_module", "fused_layout", "ARCHITECTURES"):
        assert looked_for in message


def test_kv_layout_validation():
    with pytest.raises(ValueError, match="either separate"):
        KVLayout(key="k_proj")
    with pytest.raises(ValueError, match="either separate"):
        KVLayout(key="k_proj", value="v_proj", fused="qkv", fused_layout="contiguous_qkv")
    with pytest.raises(ValueError, match="Unknown fused_layout"):
        KVLayout(fused="qkv", fused_layout="no_such_layout")


def test_fused_row_sets_are_disjoint_and_sized():
    """K and V rows never overlap each other or the query rows, for every fused layout with GQA sizes."""
    gqa = transformers.Phi3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    rows = dict(zip("kv", fused_kv_rows("contiguous_qkv", gqa)))
    assert rows["k"].tolist() == list(range(32, 48)) and rows["v"].tolist() == list(range(48, 64))
    neox = transformers.GPTNeoXConfig(hidden_size=32, num_attention_heads=4)
    k, v = fused_kv_rows("per_head_qkv", neox)
    assert k[:8].tolist() == list(range(8, 16)) and v[:8].tolist() == list(range(16, 24)) and len(k) == 32
    falcon = transformers.FalconConfig(
        hidden_size=32, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True
    )
    k, v = fused_kv_rows("falcon", falcon)
    # per KV group: [q q | k | v] with head_dim 8 -> group width 32
    assert k.tolist() == list(range(16, 24)) + list(range(48, 56))
    assert v.tolist() == list(range(24, 32)) + list(range(56, 64))
    for layout, config in (("contiguous_qkv", gqa), ("per_head_qkv", neox), ("falcon", falcon)):
        k, v = fused_kv_rows(layout, config)
        assert len(set(k.tolist()) | set(v.tolist())) == len(k) + len(v)


def test_every_tested_config_is_in_the_table():
    assert {CONFIGS[name]().model_type for name in CONFIGS} <= set(ARCHITECTURES)
