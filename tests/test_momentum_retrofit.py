"""apply_momentum_attention on stock Hugging Face causal LMs (through the attention interface)."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    Qwen2Config,
)

import transformers_momentum as tm
from transformers_momentum.compat import cache_kwargs, output_cache

VOCAB = 101

CONFIGS = {
    "gpt2": lambda impl: GPT2Config(
        vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, attn_implementation=impl
    ),
    "llama": lambda impl: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA: the momentum of one value head serves two query heads
        attn_implementation=impl,
    ),
    "qwen2": lambda impl: Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=impl,
    ),
    "opt": lambda impl: OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        attn_implementation=impl,
    ),
    "gpt_neox": lambda impl: GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        attn_implementation=impl,
    ),
}


def build(name: str, impl: str = "sdpa"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[name](impl)).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eta_zero_unchanged_momentum_changes_and_removal_restores(name, impl):
    model = build(name, impl)
    ids = torch.randint(3, VOCAB, (2, 24))
    base = model(ids).logits
    tm.apply_momentum_attention(model, 0.0)
    assert torch.equal(model(ids).logits, base)
    tm.apply_momentum_attention(model, 0.7)  # changes eta in place
    assert tm.momentum_eta_of(model) == 0.7
    assert (model(ids).logits - base).abs().max() > 1e-4
    tm.remove_momentum_attention(model)
    assert model.config._attn_implementation == impl and tm.momentum_eta_of(model) is None
    assert torch.equal(model(ids).logits, base)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_retrofitted_gpt2_equals_native_momentum_gpt(impl):
    gpt2 = build("gpt2", impl)
    native = tm.gpt2_to_momentum_gpt(gpt2, momentum_eta=0.6)
    tm.apply_momentum_attention(gpt2, 0.6)
    ids = torch.randint(3, VOCAB, (2, 40))
    torch.testing.assert_close(gpt2(ids).logits, native(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_retrofit_cached_generation_equals_full_forward(name):
    model = build(name)
    tm.apply_momentum_attention(model, 0.5)
    ids = torch.randint(3, VOCAB, (2, 30))
    full = model(ids).logits
    out = model(ids[:, :11], use_cache=True)
    pieces = [out.logits]
    for t in range(11, 30):
        out = model(ids[:, t : t + 1], **cache_kwargs(output_cache(out)), use_cache=True)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=0)
    cached = model.generate(ids[:, :8], max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(ids[:, :8], max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_retrofit_left_padding_is_ignored():
    model = build("llama")
    tm.apply_momentum_attention(model, 0.8)
    row = torch.randint(3, VOCAB, (10,))
    ids = torch.cat([torch.zeros(6, dtype=torch.long), row])[None]
    mask = torch.cat([torch.zeros(6, dtype=torch.long), torch.ones(10, dtype=torch.long)])[None]
    padded = model(ids, attention_mask=mask).logits[0, 6:]
    torch.testing.assert_close(padded, model(row[None]).logits[0], atol=1e-5, rtol=0)


def test_retrofit_survives_save_pretrained_and_rejects_bad_eta(tmp_path):
    model = build("llama")
    tm.apply_momentum_attention(model, 0.5)
    model.save_pretrained(tmp_path)  # the runtime state is not in the config, so it serialises cleanly
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\)"):
        tm.apply_momentum_attention(build("llama"), 1.5)


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0
    return ids, mask


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_retrofit_static_cache_equals_dynamic(impl):
    """The static buffer is longer than what was written: momentum sums only the values the mask lets a token see."""
    model = build("llama", impl)
    tm.apply_momentum_attention(model, 0.6)
    ids, mask = left_padded_batch()
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True)
    for batch in ((ids, mask), (ids[:1], mask[:1])):  # padded, and unpadded (sdpa's mask-free prefill)
        dynamic = model.generate(batch[0], attention_mask=batch[1], return_dict_in_generate=True, **settings)
        static = model.generate(
            batch[0],
            attention_mask=batch[1],
            cache_implementation="static",
            return_dict_in_generate=True,
            **settings,
        )
        assert torch.equal(static.sequences, dynamic.sequences)
        for step_static, step_dynamic in zip(static.logits, dynamic.logits, strict=True):
            torch.testing.assert_close(step_static, step_dynamic, atol=1e-4, rtol=0)


def test_retrofit_packed_documents_equal_separate_runs():
    model = build("llama")
    tm.apply_momentum_attention(model, 0.6)
    torch.manual_seed(2)
    documents = [torch.randint(3, VOCAB, (n,)) for n in (11, 20, 5)]
    ids = torch.cat(documents)[None]
    position_ids = torch.cat([torch.arange(len(doc)) for doc in documents])[None]
    packed = model(ids, position_ids=position_ids, use_cache=False).logits[0]
    separate = torch.cat([model(doc[None]).logits[0] for doc in documents])
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=0)


def test_retrofit_refuses_sliding_window_layers_and_unreadable_masks():
    from transformers import MistralConfig

    torch.manual_seed(0)
    mistral = AutoModelForCausalLM.from_config(
        MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=8,
        )
    )
    with pytest.raises(ValueError, match="sliding_attention layers"):
        tm.apply_momentum_attention(mistral, 0.5)
    assert tm.momentum_eta_of(mistral) is None
    model = build("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="supports the eager and sdpa attention implementations"):
        tm.apply_momentum_attention(model, 0.5)
