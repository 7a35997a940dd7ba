"""MomentumGPT in every generation and training mode: static caches, packed batches, torch.compile, eta = 0 as plain
attention (assisted / prompt-lookup decoding, continuous batching), and clear refusals where momentum cannot go."""

import pytest
import torch
from factories import momentum_gpt
from transformers import DataCollatorWithFlattening, GenerationConfig, StaticCache
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM
from transformers_momentum.compat import cache_kwargs

ATOL_CACHE = 1e-4  # static vs dynamic cache: same arithmetic in a different order
ATOL_PACKED = 1e-5  # a packed row vs its documents run one by one

MODES = {
    "eta=0.5": dict(momentum_eta=0.5),
    "eta=0": dict(momentum_eta=0.0),
    "learnable eta": dict(momentum_eta=0.5, learnable_eta=True),
}


def tiny_model(**overrides) -> MomentumGPTForCausalLM:
    model = momentum_gpt(**{"max_position_embeddings": 64, "momentum_chunk_size": 8, **overrides})
    if model.config.learnable_eta:
        with torch.no_grad():  # distinct etas per head and layer, as after training
            for layer in model.model.layers:
                layer.attn.eta_logit.uniform_(-2, 2)
    return model


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 12, 7 and 3 tokens, left-padded to 12."""
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (3, 12))
    mask = torch.ones_like(ids)
    for row, length in enumerate((12, 7, 3)):
        ids[row, : 12 - length] = 0
        mask[row, : 12 - length] = 0
    return ids, mask


# ---------------------------------------------------------------------------------------------------- static cache


@pytest.mark.parametrize("mode", sorted(MODES))
def test_static_cache_generation_equals_dynamic_on_a_left_padded_batch(mode):
    model = tiny_model(**MODES[mode])
    ids, mask = left_padded_batch()
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, output_logits=True)
    dynamic = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **settings)
    user_cache = StaticCache(config=model.config, max_cache_len=30)
    for static in (
        model.generate(ids, attention_mask=mask, cache_implementation="static", return_dict_in_generate=True, **settings),
        model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **cache_kwargs(user_cache), **settings),
    ):  # fmt: skip
        assert torch.equal(static.sequences, dynamic.sequences)
        for step_static, step_dynamic in zip(static.logits, dynamic.logits, strict=True):
            torch.testing.assert_close(step_static, step_dynamic, atol=ATOL_CACHE, rtol=0)
    # The momentum state lives in the cache's own fixed buffer (static address), and eta = 0 keeps none at all.
    layer = user_cache.layers[0]
    assert hasattr(layer, "recurrent_states") == model.config.uses_momentum
    if model.config.uses_momentum:
        assert layer.recurrent_states[0].shape == (3, 4, 8)


def test_static_cache_longer_than_the_position_table_is_a_clear_error():
    model = tiny_model(momentum_eta=0.5)
    ids = torch.randint(3, 97, (1, 8))
    with pytest.raises(ValueError, match=r"static cache holds \d+ positions.*max_position_embeddings=64"):
        model.generate(ids, max_new_tokens=72, cache_implementation="static", do_sample=False)


def test_static_cache_built_for_another_config_is_refused():
    """A static cache without a momentum slot (built from an eta = 0 config) cannot carry the momentum."""
    model = tiny_model(momentum_eta=0.5)
    cache = StaticCache(config=tiny_model(momentum_eta=0.0).config, max_cache_len=20)
    with pytest.raises(ValueError, match="preallocated key/value buffer but no momentum state"):
        model(torch.randint(3, 97, (1, 5)), **cache_kwargs(cache), use_cache=True)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_static_cache_reused_after_reset_equals_a_fresh_cache(mode):
    """`reset()` empties a static cache in place; prefill and decoding through it again equal a fresh cache."""
    model = tiny_model(**MODES[mode]).eval()
    ids = torch.randint(3, 97, (1, 10))

    def prefill_then_decode(cache):
        with torch.no_grad():
            logits = [model(ids[:, :8], **cache_kwargs(cache), use_cache=True).logits]
            logits += [model(ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits for t in (8, 9)]
        return torch.cat(logits, 1)

    reused = StaticCache(config=model.config, max_cache_len=20)
    prefill_then_decode(reused)
    reused.reset()
    fresh = prefill_then_decode(StaticCache(config=model.config, max_cache_len=20))
    assert torch.equal(prefill_then_decode(reused), fresh)  # same kernels, same order: bit for bit
    torch.testing.assert_close(fresh, model(ids).logits, atol=ATOL_CACHE, rtol=0)


def test_old_cache_argument_name_warns_like_transformers_models():
    """`past_key_values=` is transformers' pre-5.24 name: accepted, with the FutureWarning its own models give."""
    from transformers_momentum.compat import CACHE_NAME

    model = tiny_model().eval()
    ids = torch.randint(3, 97, (1, 6))
    cache = StaticCache(config=model.config, max_cache_len=10)
    if CACHE_NAME == "past_key_values":  # 5.23: it is the release's own name
        model(ids, past_key_values=cache, use_cache=True)
        return
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        old = model(ids, past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(old, model(ids).logits, atol=ATOL_CACHE, rtol=0)


def _exportable(model, max_cache_len: int = 12):
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model.generation_config.cache_implementation = "static"
    return TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache_len)


def test_export_with_momentum_is_refused_and_exact_at_eta_zero():
    """ExecuTorch's wrapper exports keys/values and lengths, never the momentum state: with momentum the export is
    refused (naming why); at eta = 0 the exported program's step-by-step logits equal a full forward."""
    ids = torch.randint(3, 97, (1, 4))
    with pytest.raises(Exception, match="cannot be exported with a cache"):
        _exportable(tiny_model(momentum_eta=0.5).eval()).export(
            input_ids=ids[:, :1], cache_position=torch.tensor([0])
        )
    model = tiny_model(momentum_eta=0.0).eval()
    program = _exportable(model).export(input_ids=ids[:, :1], cache_position=torch.tensor([0])).module()
    steps = [program(input_ids=ids[:, t : t + 1], cache_position=torch.tensor([t])) for t in range(4)]
    torch.testing.assert_close(torch.cat(steps, 1), model(ids).logits, atol=ATOL_CACHE, rtol=0)


# ---------------------------------------------------------------------------------------------------- packed batches


@pytest.mark.parametrize("mode", sorted(MODES))
def test_packed_documents_equal_separate_runs(mode):
    """DataCollatorWithFlattening (position_ids that restart, no mask): attention and momentum stay per document."""
    model = tiny_model(**MODES[mode])
    torch.manual_seed(2)
    documents = [torch.randint(3, 97, (n,)).tolist() for n in (11, 20, 1, 9)]
    batch = DataCollatorWithFlattening()([{"input_ids": doc} for doc in documents])
    separate = torch.cat([model(torch.tensor([doc])).logits[0] for doc in documents])
    for use_cache in (False, True):
        packed = model(batch["input_ids"], position_ids=batch["position_ids"], use_cache=use_cache).logits[0]
        torch.testing.assert_close(packed, separate, atol=ATOL_PACKED, rtol=0)
    # Training on the packed row: the loss is the mean over the documents' own next-token losses.
    loss = model(**batch).loss
    log_probs = torch.log_softmax(separate, dim=-1)
    targets = batch["labels"][0]
    keep = targets[1:] != -100
    want = -log_probs[:-1][keep].gather(1, targets[1:][keep, None]).mean()
    torch.testing.assert_close(loss, want, atol=ATOL_PACKED, rtol=0)


# ---------------------------------------------------------------------------------------------------- eta = 0


def test_eta_zero_is_plain_attention_assisted_and_prompt_lookup_decoding_equal_greedy():
    model = tiny_model(momentum_eta=0.0)
    assert not model._is_stateful and set(model.config.layer_types) == {"full_attention"}
    ids = torch.randint(3, 97, (1, 12))
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    greedy = model.generate(ids, **settings)
    draft = MomentumGPTForCausalLM(
        MomentumGPTConfig(**{**model.config.to_dict(), "num_hidden_layers": 1})
    ).eval()
    assert torch.equal(model.generate(ids, assistant_model=draft, **settings), greedy)
    assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=3, **settings), greedy)


def _continuous_batching(model, prompts: list[list[int]]) -> list[list[int]]:
    outputs = model.generate_batch(
        prompts,
        generation_config=GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1),
        # A small paged cache: the default sizing probes device memory and takes a minute on CPU.
        continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64, page_size=16),
        progress_bar=False,
    )
    return [outputs[f"req_{index}"].generated_tokens for index in range(len(prompts))]


def test_eta_zero_continuous_batching_equals_greedy():
    model = tiny_model(momentum_eta=0.0)
    torch.manual_seed(3)
    prompts = [torch.randint(3, 97, (n,)).tolist() for n in (12, 5)]
    batched = _continuous_batching(model, prompts)
    for prompt, tokens in zip(prompts, batched, strict=True):
        greedy = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert tokens == greedy[0, len(prompt) :].tolist()


def test_continuous_batching_with_momentum_is_refused_clearly():
    with pytest.raises(ValueError, match="no per-sequence momentum state"):
        _continuous_batching(tiny_model(momentum_eta=0.5), [[5, 6, 7]])


# ---------------------------------------------------------------------------------------------------- compile


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["learnable eta"])  # per-head eta tensors; a float eta traces as a constant
def test_compiled_fullgraph_train_step_and_static_decoding_equal_eager(mode):
    """fullgraph=True: no graph break anywhere (no host sync for the length check, the state through the Cache API).
    The aot_eager backend traces forward and backward exactly as inductor would, without its minutes of codegen."""
    assert MomentumGPTForCausalLM._can_compile_fullgraph
    model = tiny_model(**MODES[mode]).train()
    ids = torch.randint(3, 97, (2, 24))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled_out = compiled(ids, labels=ids, use_cache=False)
    compiled_out.loss.backward()
    compiled_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    eager_out = model(ids, labels=ids, use_cache=False)
    eager_out.loss.backward()
    torch.testing.assert_close(compiled_out.logits, eager_out.logits, atol=1e-6, rtol=0)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(compiled_grads[name], parameter.grad, atol=1e-6, rtol=1e-5, msg=name)

    # Decoding steps with a static cache, the step generate() compiles.
    model.eval()
    decode = torch.compile(model, fullgraph=True, backend="eager")
    caches = [StaticCache(config=model.config, max_cache_len=24) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model(ids[:, :10], **cache_kwargs(cache), use_cache=True)
        for position in range(10, 20):
            step = dict(input_ids=ids[:, position : position + 1], position_ids=torch.full((2, 1), position))
            got = decode(**step, **cache_kwargs(caches[0]), use_cache=True).logits
            want = model(**step, **cache_kwargs(caches[1]), use_cache=True).logits
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
