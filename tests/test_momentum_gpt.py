"""MomentumGPT: the momentum scan, exactness anchors (GPT-2, eager/sdpa, padding, cache), Auto classes, errors."""

import json
from pathlib import Path

import pytest
import torch
from factories import momentum_gpt, momentum_gpt_config
from remote_code import run_without_plugin
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
)

import transformers_momentum as tm
from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM, momentum_scan
from transformers_momentum.compat import cache_kwargs, output_cache
from transformers_momentum.models.momentum_gpt.modeling_momentum_gpt import allowed_keys, masked_momentum

ATOL_FP32 = 1e-5
ATOL_CACHE = 1e-4


def tiny_config(**overrides) -> MomentumGPTConfig:
    # small chunks so that short test sequences cross chunk boundaries
    return momentum_gpt_config(**{"momentum_chunk_size": 8, **overrides})


def tiny_model(**overrides) -> MomentumGPTForCausalLM:
    return momentum_gpt(**{"momentum_chunk_size": 8, **overrides})


def naive_momentum(
    values: torch.Tensor, eta, state=None, document_starts=()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference recurrence m_0 = s, m_{t+1} = eta * (m_t + v_t), in float64; m restarts at 0 at document starts."""
    v = values.double()
    eta = torch.as_tensor(eta, dtype=torch.float64).reshape(-1)[None, :, None].expand(1, v.shape[1], 1)
    m = torch.zeros_like(v[:, :, 0]) if state is None else state.double()
    out = torch.empty_like(v)
    for t in range(v.shape[2]):
        if t in document_starts:
            m = torch.zeros_like(m)
        out[:, :, t] = m
        m = eta * (m + v[:, :, t])
    return out, m


# ---------------------------------------------------------------------------------------------------- the scan


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
@pytest.mark.parametrize("eta", [0.0, 0.3, 0.95])
def test_scan_matches_recurrence(chunk_size, eta):
    torch.manual_seed(1)
    values = torch.randn(2, 3, 37, 5, dtype=torch.float64)
    state = torch.randn(2, 3, 5, dtype=torch.float64)
    for initial in (None, state):
        got, final = momentum_scan(values, eta, initial_state=initial, chunk_size=chunk_size)
        want, want_final = naive_momentum(values, eta, initial)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(final, want_final, atol=1e-12, rtol=1e-12)


def test_scan_per_head_eta_and_split_equals_whole():
    torch.manual_seed(2)
    values = torch.randn(1, 4, 50, 6, dtype=torch.float64)
    eta = torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    whole, final = momentum_scan(values, eta, chunk_size=7)
    torch.testing.assert_close(whole, naive_momentum(values, eta)[0], atol=1e-12, rtol=1e-12)
    # Carrying the state across a split is exactly what incremental decoding does.
    first, state = momentum_scan(values[:, :, :23], eta, chunk_size=7)
    second, final2 = momentum_scan(values[:, :, 23:], eta, initial_state=state, chunk_size=7)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(final2, final, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("eta", [0.5, [0.1, 0.5, 0.9]])
def test_scan_restarts_at_each_packed_document(eta):
    torch.manual_seed(5)
    values = torch.randn(2, 3, 40, 4, dtype=torch.float64)
    state = torch.randn(2, 3, 4, dtype=torch.float64)
    eta = torch.tensor(eta, dtype=torch.float64)
    starts = {0: (9, 10, 31), 1: (17,)}  # row 0: four documents (one of a single token); row 1: two
    sequence_ids = torch.zeros(2, 40, dtype=torch.long)
    for row, row_starts in starts.items():
        for start in row_starts:
            sequence_ids[row, start:] += 1
    got, final = momentum_scan(values, eta, initial_state=state, chunk_size=8, sequence_ids=sequence_ids)
    for row, row_starts in starts.items():  # the first document continues the state, later ones start from 0
        want, want_final = naive_momentum(values[row : row + 1], eta, state[row : row + 1], row_starts)
        torch.testing.assert_close(got[row : row + 1], want, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(final[row : row + 1], want_final, atol=1e-12, rtol=1e-12)


def naive_masked_momentum(values: torch.Tensor, eta: float, allowed: torch.Tensor) -> torch.Tensor:
    """Loop reference of m_t = sum_{i<t, allowed[t, i]} eta^(t-i) v_i, a query at the last key it may see."""
    batch, heads, keys, dim = values.shape
    queries = allowed.shape[2]
    out = torch.zeros(batch, heads, queries, dim, dtype=torch.float64)
    for b in range(batch):
        for q in range(queries):
            visible = allowed[b, 0, q].nonzero().flatten().tolist()
            if not visible:
                continue
            t = max(visible)
            for i in visible:
                if i < t:
                    out[b, :, q] += eta ** (t - i) * values[b, :, i].double()
    return out


def test_masked_momentum_follows_any_4d_mask():
    torch.manual_seed(6)
    values = torch.randn(2, 3, 12, 4, dtype=torch.float64)
    # Row 0: 4 queries at positions 5..8 of a 12-slot static buffer (slots 9.. unwritten), 2 left-padding slots.
    # Row 1: block-diagonal (two packed documents) over the same queries.
    allowed = torch.zeros(2, 1, 4, 12, dtype=torch.bool)
    for q, t in enumerate(range(5, 9)):
        allowed[0, 0, q, 2 : t + 1] = True
        allowed[1, 0, q, (7 if t >= 7 else 0) : t + 1] = True
    want = naive_masked_momentum(values, 0.7, allowed)
    torch.testing.assert_close(masked_momentum(values, 0.7, allowed), want, atol=1e-12, rtol=1e-12)
    additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(
        ~allowed, torch.finfo(torch.float64).min
    )
    torch.testing.assert_close(
        masked_momentum(values, 0.7, allowed_keys(additive)), want, atol=1e-12, rtol=1e-12
    )


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_scan_stable_at_8192_tokens_eta_099(dtype, rtol):
    torch.manual_seed(3)
    values = torch.randn(1, 2, 8192, 16)
    want, _ = naive_momentum(values.to(dtype).double(), 0.99)
    got, final = momentum_scan(values.to(dtype), 0.99, chunk_size=64)
    assert got.dtype == dtype and torch.isfinite(got).all() and torch.isfinite(final).all()
    # Relative to the signal's scale: the unnormalised sum reaches ~1/(1-eta) = 100x the values.
    error = (got.double() - want).abs().max() / want.abs().max()
    assert error < rtol, f"relative error {error:.2e}"


# ---------------------------------------------------------------------------------------------------- the model


def test_forward_shapes_and_backward_with_learnable_eta():
    model = tiny_model(learnable_eta=True).train()
    ids = torch.randint(3, 97, (2, 19))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 19, 97)
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
    eta_grads = [layer.attn.eta_logit.grad for layer in model.model.layers]
    assert all(g.shape == (4,) and g.abs().sum() > 0 for g in eta_grads)
    torch.testing.assert_close(model.model.layers[0].attn.eta, torch.full((4,), 0.6))


def test_lm_head_is_tied_and_not_saved(tmp_path):
    model = tiny_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_eta_zero_equals_gpt2_both_ways(attn_implementation):
    torch.manual_seed(4)
    gpt2_config = GPT2Config(
        vocab_size=97,
        n_positions=128,
        n_embd=32,
        n_layer=3,
        n_head=4,
        attn_implementation=attn_implementation,
    )
    gpt2 = GPT2LMHeadModel(gpt2_config).eval()
    ids = torch.randint(0, 97, (2, 40))
    converted = tm.gpt2_to_momentum_gpt(gpt2, momentum_eta=0.0)
    assert isinstance(converted, MomentumGPTForCausalLM)
    torch.testing.assert_close(converted(ids).logits, gpt2(ids).logits, atol=ATOL_FP32, rtol=0)
    back = tm.momentum_gpt_to_gpt2(converted)
    assert isinstance(back, GPT2LMHeadModel)
    torch.testing.assert_close(back(ids).logits, gpt2(ids).logits, atol=ATOL_FP32, rtol=0)
    with pytest.raises(ValueError, match="GPT-2 cannot express momentum"):
        tm.momentum_gpt_to_gpt2(tm.gpt2_to_momentum_gpt(gpt2, momentum_eta=0.5))


def test_momentum_changes_the_model_and_eta_zero_skips_it():
    ids = torch.randint(3, 97, (1, 30))
    with_momentum = tiny_model(momentum_eta=0.6)
    without = tiny_model(momentum_eta=0.0)
    assert (with_momentum(ids).logits - without(ids).logits).abs().max() > 1e-3


def test_eager_equals_sdpa():
    ids = torch.randint(3, 97, (2, 45))
    eager = tiny_model(attn_implementation="eager")
    sdpa = tiny_model(attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager(ids).logits, sdpa(ids).logits, atol=ATOL_FP32, rtol=0)


def test_left_padded_batch_equals_unpadded_rows():
    model = tiny_model()
    rows = [torch.randint(3, 97, (n,)) for n in (25, 9, 17)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    batched = model(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        single = model(row[None]).logits[0]
        torch.testing.assert_close(batched[i, width - len(row) :], single, atol=ATOL_FP32, rtol=0)


@pytest.mark.parametrize("learnable_eta", [False, True])
def test_incremental_decoding_equals_full_forward(learnable_eta):
    model = tiny_model(learnable_eta=learnable_eta)
    ids = torch.randint(3, 97, (2, 40))
    full = model(ids).logits
    out = model(ids[:, :13], use_cache=True)
    cache, pieces = output_cache(out), [out.logits]
    for start in range(13, 40, 3):  # several tokens per step, crossing chunk boundaries
        out = model(ids[:, start : start + 3], **cache_kwargs(cache), use_cache=True)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL_CACHE, rtol=0)
    state = cache.layers[0].recurrent_states[0]
    assert state.shape == (2, 4, 8), "the momentum state is carried in the cache: O(1) per step"


def test_plain_dynamic_cache_recomputes_momentum():
    model = tiny_model()
    ids = torch.randint(3, 97, (1, 30))
    full = model(ids).logits
    cache = DynamicCache()  # no state slot: the model rescans the cached values instead
    first = model(ids[:, :20], **cache_kwargs(cache), use_cache=True).logits
    rest = [model(ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits for t in range(20, 30)]
    torch.testing.assert_close(torch.cat([first, *rest], 1), full, atol=ATOL_CACHE, rtol=0)


def test_4d_and_dict_masks_equal_the_2d_mask():
    """A caller's 4-D mask (additive or boolean) steers momentum like attention; a dict is generate()'s per-type masks."""
    from transformers.masking_utils import create_causal_mask, create_masks_for_generate

    model = tiny_model()
    ids = torch.randint(3, 97, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    want = model(ids, attention_mask=mask).logits
    embeds = model.model.embed_tokens(ids)
    for implementation in ("eager", "sdpa"):  # additive float / boolean 4-D masks
        model.config._attn_implementation = implementation
        mask_4d = create_causal_mask(
            model.config, embeds, mask, **cache_kwargs(None), position_ids=position_ids
        )
        got = model(ids, attention_mask=mask_4d, position_ids=position_ids).logits
        torch.testing.assert_close(got[1, 6:], want[1, 6:], atol=ATOL_FP32, rtol=0)
        torch.testing.assert_close(got[0], want[0], atol=ATOL_FP32, rtol=0)
        masks = create_masks_for_generate(
            model.config, embeds, mask, **cache_kwargs(None), position_ids=position_ids
        )
        assert set(masks) == {"full_attention", "linear_attention"}
        got = model(ids, attention_mask=masks, position_ids=position_ids).logits
        torch.testing.assert_close(got[1, 6:], want[1, 6:], atol=ATOL_FP32, rtol=0)


def test_4d_mask_continues_the_cached_state():
    """Prefill with a 4-D mask, decode with the carried state: equal to the full forward."""
    from transformers.masking_utils import create_causal_mask

    model = tiny_model()
    ids = torch.randint(3, 97, (1, 24))
    full = model(ids).logits
    cache = DynamicCache(config=model.config)
    embeds = model.model.embed_tokens(ids[:, :16])
    mask_4d = create_causal_mask(
        model.config, embeds, torch.ones(1, 16, dtype=torch.long), **cache_kwargs(cache)
    )
    pieces = [model(ids[:, :16], attention_mask=mask_4d, **cache_kwargs(cache), use_cache=True).logits]
    pieces += [model(ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits for t in range(16, 24)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL_CACHE, rtol=0)


def test_missing_momentum_state_is_an_error_not_a_silent_restart():
    """A cache whose keys/values came from elsewhere (here: an eta = 0 model) has no momentum state to continue."""
    model = tiny_model()
    cache = DynamicCache(config=model.config)
    tiny_model(momentum_eta=0.0)(torch.randint(3, 97, (1, 10)), **cache_kwargs(cache), use_cache=True)
    with pytest.raises(ValueError, match="holds 10 tokens but no momentum state"):
        model(torch.randint(3, 97, (1, 1)), **cache_kwargs(cache), use_cache=True)


def test_croppable_only_where_rollback_is_exact():
    """The momentum state cannot roll back (`is_croppable` False); eta = 0 caches and state-less caches can."""
    ids = torch.randint(3, 97, (1, 30))
    model = tiny_model()
    assert model._is_stateful and not output_cache(model(ids, use_cache=True)).is_croppable
    plain = tiny_model(momentum_eta=0.0)
    assert not plain._is_stateful and output_cache(plain(ids, use_cache=True)).is_croppable
    # A `DynamicCache()` rescans its values: crop, then continue, equals the full forward.
    full = model(ids).logits
    cache = DynamicCache()
    model(ids[:, :25], **cache_kwargs(cache), use_cache=True)
    assert cache.is_croppable
    cache.crop(-5)  # drop the last 5 tokens
    rest = [model(ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits for t in range(20, 30)]
    torch.testing.assert_close(torch.cat(rest, 1), full[:, 20:], atol=ATOL_CACHE, rtol=0)


def test_generate_greedy_sampling_and_beam_search_cache_equals_no_cache():
    model = tiny_model()
    ids = torch.randint(3, 97, (2, 10))
    mask = torch.ones_like(ids)
    for kwargs in (
        dict(do_sample=False),
        dict(do_sample=True, top_k=5),
        dict(do_sample=False, num_beams=3),
    ):
        outputs = []
        for use_cache in (True, False):
            torch.manual_seed(0)
            outputs.append(
                model.generate(ids, attention_mask=mask, max_new_tokens=12, use_cache=use_cache, **kwargs)
            )
        assert outputs[0].shape == (2, 22)
        assert torch.equal(outputs[0], outputs[1]), kwargs


def test_generate_left_padded_batch_equals_single_rows():
    model = tiny_model()
    rows = [torch.randint(3, 97, (n,)) for n in (12, 5)]
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 12 - len(row) :], mask[i, 12 - len(row) :] = row, 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    for i, row in enumerate(rows):
        single = model.generate(
            row[None],
            attention_mask=torch.ones(1, len(row)),
            max_new_tokens=10,
            min_new_tokens=10,
            do_sample=False,
        )
        assert torch.equal(batched[i, 12:], single[0, len(row) :])


def test_assisted_and_prompt_lookup_decoding_are_refused_clearly():
    """The momentum state cannot be cropped back: generate refuses (5.23/5.24 through `_is_stateful`, 5.25 through
    the cache's `is_croppable`, which the plugin sets from its own state)."""
    model = tiny_model()
    ids = torch.randint(3, 97, (1, 8))
    refused = "stateful|cache that can be cropped"
    with pytest.raises(ValueError, match=refused):
        model.generate(ids, max_new_tokens=4, assistant_model=tiny_model(), do_sample=False)
    with pytest.raises(ValueError, match=refused):
        model.generate(ids, max_new_tokens=4, prompt_lookup_num_tokens=2, do_sample=False)


# ---------------------------------------------------------------------------------------------------- Auto / I/O


def test_auto_classes_and_save_load_round_trip(tmp_path):
    model = tiny_model(learnable_eta=True)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.eta_logit.uniform_(-2, 2)  # trained etas must survive the round trip
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "momentum_gpt"
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert (tmp_path / "modeling_momentum_gpt.py").is_file() and (
        tmp_path / "configuration_momentum_gpt.py"
    ).is_file()

    assert isinstance(AutoConfig.from_pretrained(tmp_path), MomentumGPTConfig)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MomentumGPTForCausalLM  # the plugin's class, not remote code
    ids = torch.randint(3, 97, (2, 30))
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "MomentumGPTModel"
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert classifier(ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 3)


def test_remote_code_load_without_the_plugin(tmp_path):
    """A fresh process without the plugin loads the causal LM and, non-interactively, the classifier through the
    checkpoint's own code (the classifier once asked to trust the same code a second time)."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "ckpt")
    ids = torch.randint(3, 97, (2, 30))
    expected = {
        "ids": ids,
        "logits": model(ids).logits.detach().contiguous(),
        "hidden": model.model(ids).last_hidden_state.detach().contiguous(),
    }
    save_file(expected, tmp_path / "expected.safetensors")
    script = f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        try:
            import transformers_momentum
            raise SystemExit("plugin was importable")
        except ModuleNotFoundError:
            pass
        checkpoint = {str(tmp_path / "ckpt")!r}
        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        classifier = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, trust_remote_code=True, num_labels=3
        ).eval()
        assert type(classifier.model).__module__.startswith("transformers_modules")
        assert torch.equal(classifier.model(expected["ids"]).last_hidden_state, expected["hidden"])
        assert classifier(expected["ids"]).logits.shape == (2, 3)
        print("REMOTE_OK", type(model).__name__, type(classifier).__name__)
        """
    result = run_without_plugin(script, tmp_path / "modules")  # non-interactive: a second trust prompt fails
    assert "REMOTE_OK MomentumGPTForCausalLM MomentumGPTForSequenceClassification" in result.stdout, (
        result.stderr[-3000:]
    )


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(3, 97, (2, 33))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(learnable_eta=True).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_forward_tracks_fp32():
    model = tiny_model()
    ids = torch.randint(3, 97, (2, 40))
    reference = model(ids).logits
    low = model.to(torch.bfloat16)(ids).logits
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.1


SHIPPED = sorted((Path(__file__).parent.parent / "model_cards").glob("*-gpt-*/config.json"))


@pytest.mark.parametrize("config_file", SHIPPED, ids=[path.parent.name for path in SHIPPED])
def test_shipped_checkpoints_leave_decoding_to_the_caller(config_file):
    """No sampling or length defaults (they would override callers' max_length and lm-eval's max_gen_toks), and the
    cache layout follows eta: the vanilla twin gets plain attention layers, the momentum arm stateful ones."""
    from transformers import GenerationConfig

    folder = config_file.parent
    overrides = {
        "do_sample",
        "top_k",
        "top_p",
        "temperature",
        "max_new_tokens",
        "max_length",
        "min_new_tokens",
    }
    assert not overrides & set(json.loads((folder / "generation_config.json").read_text()))
    assert not GenerationConfig.from_pretrained(folder).do_sample  # greedy unless the caller asks
    config = AutoConfig.from_pretrained(folder)
    assert set(config.layer_types) == ({"hybrid"} if config.momentum_eta > 0 else {"full_attention"})


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(momentum_eta=1.0), "momentum_eta must be in"),
        (dict(momentum_eta=-0.1), "momentum_eta must be in"),
        (dict(hidden_size=30), "must be divisible by num_attention_heads"),
        (dict(momentum_eta=0.0, learnable_eta=True), "learnable_eta=True needs"),
        (dict(momentum_chunk_size=0), "momentum_chunk_size"),
    ],
)
def test_bad_config_values_are_clear_errors(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


def test_sequence_longer_than_position_table_is_a_clear_error():
    model = tiny_model(max_position_embeddings=16)
    with pytest.raises(ValueError, match="longer than the learned position table"):
        model(torch.randint(3, 97, (1, 17)))
    out = model(torch.randint(3, 97, (1, 16)), use_cache=True)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(torch.randint(3, 97, (1, 1)), **cache_kwargs(output_cache(out)), use_cache=True)


# ---------------------------------------------------------------------------------------------------- Trainer


def test_trainer_short_real_training_run_loss_falls(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    # Real English prose (Project Gutenberg), byte-level tokens: no tokenizer download needed.
    text = (Path(__file__).parent / "data" / "gutenberg_sample.txt").read_bytes()[:24_000]
    block = 64
    blocks = [list(text[i : i + block]) for i in range(0, len(text) - block, block)]
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    torch.manual_seed(0)
    model = MomentumGPTForCausalLM(
        tiny_config(vocab_size=256, hidden_size=64, num_attention_heads=4, max_position_embeddings=64)
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        max_steps=40,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.75 * losses[0], losses  # from ~ln(256)=5.5 to well below
