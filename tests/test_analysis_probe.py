"""The analyzer's probe: bit-identical logits, score rows equal to eager attention, cached prefixes, batched rows."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoConfig

from transformers_momentum.analysis import AttentionProbe
from transformers_momentum.compat import cache_kwargs, output_cache

ATOL = 1e-6


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_probe_logits_bit_identical_and_rows_match_eager(attn, tiny_llama):
    model = tiny_llama(100, attn_implementation=attn)
    ids = torch.randint(3, 100, (1, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bare = model(ids).logits
    outputs = {}
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0][0, -1]))
        for i, layer in enumerate(model.model.layers)
    ]
    probe = AttentionProbe(model)
    assert not probe.fallback and model.config._attn_implementation == f"tm_probe:{attn}"
    with torch.no_grad():
        off = model(ids).logits
        with probe.record_eval(-1):
            on = model(ids).logits
    assert torch.equal(bare, off) and torch.equal(bare, on)
    record = probe.eval_record()
    for layer in range(2):
        assert torch.equal(record.attention_output[layer], outputs[layer])
    probe.remove()
    for hook in hooks:
        hook.remove()
    assert model.config._attn_implementation == attn
    model.set_attn_implementation("eager")
    with torch.no_grad():
        maps = model(ids, output_attentions=True).attentions
    for layer in range(2):
        assert record.scores[layer].shape == (4, 11)  # one row per head: O(T)
        torch.testing.assert_close(
            torch.softmax(record.scores[layer], -1), maps[layer][0, :, -1], atol=ATOL, rtol=0
        )
    assert record.query.shape == (2, 32)


def test_probe_with_cached_prefix_matches_full_sequence(tiny_llama):
    model = tiny_llama(100)
    probe = AttentionProbe(model)
    ids = torch.randint(3, 100, (1, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), probe.record_eval(-2):
        full = model(ids).logits[0, -2]
    full_record = probe.eval_record()
    with torch.no_grad():
        cache = output_cache(model(ids[:, :9], use_cache=True))
        with probe.record_eval(-2):
            cached = model(ids[:, 9:], **cache_kwargs(cache), use_cache=True).logits[0, -2]
    cached_record = probe.eval_record()
    torch.testing.assert_close(full, cached, atol=1e-5, rtol=0)
    for a, b in zip(full_record.scores, cached_record.scores, strict=True):
        assert a.shape == b.shape == (4, 13)  # keys up to the analysis position only
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        full_record.attention_output, cached_record.attention_output, atol=1e-5, rtol=0
    )


def test_probe_rows_of_a_right_padded_batch_equal_single_forwards(tiny_llama):
    model = tiny_llama(100)
    probe = AttentionProbe(model)
    generator = torch.Generator().manual_seed(2)
    sequences = [torch.randint(3, 100, (n,), generator=generator) for n in (9, 6, 12)]
    analysis = {0: 8, 1: 3, 2: 11}  # each row's own analysis index
    single = {}
    for row, ids in enumerate(sequences):
        with torch.no_grad(), probe.record_eval(analysis[row]):
            model(ids[None])
        single[row] = probe.eval_record()
    batch = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for row, ids in enumerate(sequences):
        batch[row, : len(ids)], mask[row, : len(ids)] = ids, 1
    with torch.no_grad(), probe.record_eval(analysis):
        model(batch, attention_mask=mask)
    batched = probe.eval_records()
    for row in range(3):
        a, b = single[row], batched[row]
        torch.testing.assert_close(a.attention_output, b.attention_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.query, b.query, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.projected_query, b.projected_query, atol=1e-5, rtol=0)
        for x, y in zip(a.scores, b.scores, strict=True):
            assert x.shape == y.shape == (4, analysis[row] + 1)
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    probe.remove()


def test_probe_fallback_for_models_off_the_interface():
    config = GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]], max_position_embeddings=64, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(3, 100, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bare = model(ids).logits
    probe = AttentionProbe(model)
    assert probe.fallback
    with torch.no_grad(), probe.record_eval(-1):
        on = model(ids).logits
    torch.testing.assert_close(bare, on, atol=0, rtol=0)
    record = probe.eval_record()
    with torch.no_grad():
        maps = model(ids, output_attentions=True).attentions
    # Log-probabilities: the pre-softmax row up to a per-row constant, so softmax recovers the map.
    torch.testing.assert_close(torch.softmax(record.scores[1], -1), maps[1][0, :, -1], atol=ATOL, rtol=0)
    assert record.query is None
    # GPT-Neo's queries are position-free (no rotary): the query projection gives them.
    assert record.projected_query.shape == (2, 32)


def test_probe_rebuilds_exact_scores_for_xglm_off_the_interface():
    # XGLM (the paper's GPT architecture) computes attention inside its module: the probe falls back to eager
    # probabilities and rebuilds the pre-softmax rows from the analysis token's own score q_t·k_t.
    from transformers import XGLMConfig, XGLMForCausalLM

    torch.manual_seed(0)
    config = XGLMConfig(
        vocab_size=100, d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=64
    )
    model = XGLMForCausalLM(config).eval()
    ids = torch.randint(4, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    captured = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj"):
            module = getattr(layer.self_attn, name)
            hooks.append(
                module.register_forward_hook(lambda m, a, o, key=(i, name): captured.__setitem__(key, o[0]))
            )
    with torch.no_grad():
        bare = model(ids).logits
    probe = AttentionProbe(model)
    assert probe.fallback and probe.exact_scores
    with torch.no_grad(), probe.record_eval(9):
        on = model(ids).logits
    assert torch.equal(bare, on)
    record = probe.eval_record()
    for layer in range(2):
        # Independently: scaled queries against every key up to the analysis position, per head.
        q = (captured[(layer, "q_proj")][9] * 8**-0.5).view(4, 8)
        k = captured[(layer, "k_proj")][:10].view(10, 4, 8)
        torch.testing.assert_close(record.scores[layer], torch.einsum("hd,thd->ht", q, k), atol=1e-4, rtol=0)
    probe.remove()
    for hook in hooks:
        hook.remove()
