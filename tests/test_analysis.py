"""ICL-vs-finetuning analyzer: metrics on hand-computed cases, the probe, prompt layout, FT, controls, CLI, errors."""

import json
import math
import re

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPTNeoConfig, LlamaConfig, PreTrainedTokenizerFast

from transformers_momentum.analysis import (
    AnalysisConfig,
    AnalysisInputError,
    AttentionProbe,
    PromptLayout,
    StreamingMetric,
    TaskData,
    TaskSpec,
    analyze,
    bootstrap_ci,
    cosine,
    delta_simam,
    ft_attention_to_training_tokens,
    get_task,
    kendall,
    kv_finetune,
    load_task_data,
    order_sensitivity,
    output_kl,
    random_label_demos,
    rec2ftp,
    simam,
    simaou,
    simaou_null,
    topk_recall,
    untrained_copy,
)
from transformers_momentum.analysis.tasks import BUNDLED_DIR, TASKS
from transformers_momentum.cli import main as cli_main
from transformers_momentum.compat import cache_kwargs, output_cache
from transformers_momentum.kv_tuning import KVTuningConfig

ATOL = 1e-6

# ------------------------------------------------------------------------------------------------ fixtures


def _word_tokenizer(extra_words=()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the bundled SST-2 subset: ids are predictable, unknown words map to [UNK]."""
    # AG News label words too: the default different-task control finetunes on AG News demonstrations.
    words = {
        "Sentence",
        "Label",
        ":",
        "Negative",
        "Positive",
        "World",
        "Sports",
        "Business",
        "Technology",
        *extra_words,
    }
    for split in ("train", "eval"):
        for line in (BUNDLED_DIR / "sst2" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            words.update(re.findall(r"\w+|[^\w\s]", json.loads(line)["sentence"]))
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]"
    )


@pytest.fixture(scope="module")
def tokenizer():
    return _word_tokenizer()


def _tiny_llama(vocab_size: int, seed: int = 0, attn: str = "sdpa", **overrides):
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    fields.update(overrides)
    return AutoModelForCausalLM.from_config(LlamaConfig(**fields), attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny_llama")
    _tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------ metrics


def test_cosine_hand_computed():
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2)
    )
    assert cosine(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])).item() == 0.0  # the paper's +1e-20


def test_rec2ftp_hand_computed_and_no_ft_corrected():
    zsl = [False, False, False, True, False]
    ft = [True, True, False, True, True]
    icl = [True, False, True, False, True]
    r = rec2ftp(zsl, icl, ft)  # FT fixes examples 0, 1, 4; ICL also gets 0 and 4 right
    assert (r.n_ft_corrected, r.n_both_corrected) == (3, 2)
    assert r.value == pytest.approx(200 / 3)
    none = rec2ftp([True, False], [True, True], [True, False])  # FT fixes nothing: undefined, not 0 or 100
    assert none.value is None and none.n_ft_corrected == 0


def test_simaou_hand_computed():
    # One layer. Normalized: zsl=(1,0), icl=(0,1), ft=(1,1)/√2 → Δicl=(-1,1), Δft=(1/√2-1, 1/√2).
    h_zsl, h_icl, h_ft = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 1.0]])
    d_icl, d_ft = np.array([-1.0, 1.0]), np.array([1 / math.sqrt(2) - 1, 1 / math.sqrt(2)])
    expected = d_icl @ d_ft / (np.linalg.norm(d_icl) * np.linalg.norm(d_ft))
    assert simaou(h_zsl, h_icl, h_ft).item() == pytest.approx(expected)
    # FT update identical to the ICL update gives 1.
    assert simaou(h_zsl, h_icl, h_icl).item() == pytest.approx(1.0)


def test_simaou_nulls():
    generator = torch.Generator().manual_seed(0)
    positive = torch.ones(
        3, 4000
    )  # Uniform[0,1) is not zero-mean: its cosine with a positive update is large
    assert simaou_null(positive, "uniform", generator).mean().item() > 0.8
    assert abs(simaou_null(positive, "gaussian", generator).mean().item()) < 0.05
    with pytest.raises(ValueError):
        simaou_null(positive, "laplace", generator)


def test_simam_and_delta_simam_hand_computed():
    # One layer, two heads, two query keys.
    zsl = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    icl = [torch.tensor([[1.0, 1.0], [0.0, 2.0]])]
    ft = [torch.tensor([[2.0, 0.0], [1.0, 1.0]])]
    # head 0: cos((1,1),(2,0)) = 1/√2; head 1: cos((0,2),(1,1)) = 1/√2
    assert simam(icl, ft).item() == pytest.approx(1 / math.sqrt(2))
    # updates: head 0 icl-zsl=(0,1), ft-zsl=(1,0) → 0; head 1 (0,1) vs (1,0) → 0
    assert delta_simam(zsl, icl, ft).item() == pytest.approx(0.0)
    assert delta_simam(zsl, icl, icl).item() == pytest.approx(1.0)


def test_kendall_and_topk_hand_computed():
    # (1,2,3) vs (1,3,2): concordant pairs (0,1),(0,2), discordant (1,2) → (2-1)/3
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1.0], [2.0]))
    assert topk_recall([5, 4, 3, 2, 1], [5, 0, 4, 0, 0], 2) == 0.5
    assert topk_recall([1, 2], [2, 1], 10) == 1.0  # k capped at the length


def test_ft_attention_to_training_tokens():
    queries = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    assert ft_attention_to_training_tokens(queries, torch.tensor([1.0, 1.0])).tolist() == [3.0, 1.0, 3.0]


def test_output_kl_and_order_sensitivity_hand_computed():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert output_kl(p.log(), q.log()) == pytest.approx(expected)
    assert output_kl(q.log(), q.log()) == 0.0
    predictions = np.array([[0, 1, 2], [0, 1, 1], [0, 0, 2]])  # 3 orders x 3 examples
    gold = np.array([[0.9, 0.5, 0.2], [0.9, 0.7, 0.2], [0.9, 0.3, 0.5]])
    flipped, spread = order_sensitivity(predictions, gold)
    assert flipped.tolist() == [False, True, True]
    np.testing.assert_allclose(spread, gold.std(axis=0))
    assert spread[0] == 0.0
    with pytest.raises(ValueError, match="orders >= 2"):
        order_sensitivity(predictions[:1], gold[:1])


def test_streaming_metric_and_bootstrap():
    metric = StreamingMetric()
    metric.add(np.array([1.0, 3.0]))
    metric.add(np.array([3.0, float("nan")]))
    assert metric.per_layer == [2.0, 3.0]
    assert metric.mean == pytest.approx(2.5)  # examples → layers
    assert metric.example_means == [2.0, 3.0]
    other = StreamingMetric()
    other.add(np.array([5.0, 5.0]))
    metric.merge(other)
    assert metric.per_layer == [3.0, 4.0]
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = bootstrap_ci(list(range(100)), seed=1)
    assert low < 49.5 < high
    assert bootstrap_ci([1.0]) is None


# ------------------------------------------------------------------------------------------------ probe


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_probe_logits_bit_identical_and_rows_match_eager(attn):
    model = _tiny_llama(100, attn=attn)
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


def test_probe_with_cached_prefix_matches_full_sequence():
    model = _tiny_llama(100)
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


# ------------------------------------------------------------------------------------------------ prompt layout


def test_prompt_layout_token_by_token(tokenizer):
    layout = PromptLayout(tokenizer, get_task("sst2"))
    vocab = tokenizer.get_vocab()
    bos, eos = vocab["<s>"], vocab["</s>"]
    demos = [{"sentence": "good film", "label": 1}, {"sentence": "bad film", "label": 0}]
    demos = [{"text": d["sentence"], "label": d["label"]} for d in demos]
    w = lambda *words: [vocab[x] for x in words]  # noqa: E731
    demo1 = w("Sentence", ":", "good", "film", "Label", ":", "Positive")
    demo2 = w("Sentence", ":", "bad", "film", "Label", ":", "Negative")
    context = layout.context(demos)
    # [<s>] + demo_1 + </s> + demo_2 + </s>  (paper_spec §2.4)
    assert context.input_ids == [bos, *demo1, eos, *demo2, eos]
    assert context.demo_spans == [(1, 1 + len(demo1)), (2 + len(demo1), 2 + len(demo1) + len(demo2))]
    # FT training sequence: [<s>] + T_in + " label", no trailing </s>
    assert layout.ft_sequence(demos[0]) == [bos, *demo1]
    # Each demo span in the context holds exactly the FT sequence's tokens after <s>.
    for (a, b), demo in zip(context.demo_spans, demos, strict=True):
        assert context.input_ids[a:b] == layout.ft_sequence(demo)[1:]
    # Eval sequence for candidate c: context + T_in(x) + " c"; ZSL/FT context is [<s>]
    query = {"text": "a film", "label": 1}
    assert layout.query_ids(query, 0) == w("Sentence", ":", "a", "film", "Label", ":", "Negative")
    assert layout.zero_shot_context().input_ids == [bos]
    assert layout.label_ids == [w("Negative"), w("Positive")] and layout.single_token_labels
    newline = PromptLayout(_word_tokenizer(extra_words=()), get_task("sst2"), separator="newline")
    assert newline.start_ids == [bos]


def test_prompt_layout_without_bos_uses_eos(tokenizer):
    tokenizer_no_bos = _word_tokenizer()
    tokenizer_no_bos.bos_token = None
    layout = PromptLayout(tokenizer_no_bos, get_task("sst2"))
    assert layout.start_ids == [tokenizer.get_vocab()["</s>"]]


# ------------------------------------------------------------------------------------------------ FT and controls


def test_kv_finetune_is_one_sgd_step_per_demo_on_kv_only():
    from peft import get_peft_model

    base = _tiny_llama(100)
    model = get_peft_model(base, KVTuningConfig())
    sequences = [[1, 5, 6, 7, 8], [1, 9, 10, 11]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Reference: the gradient of the token-mean NLL (targets = all tokens after <s>) at the starting point.
    ids = torch.tensor([sequences[0]])
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = dict(zip(trainable, torch.autograd.grad(loss, list(trainable.values())), strict=True))
    probe = AttentionProbe(model)
    trace = kv_finetune(model, sequences[:1], lr=0.5, probe=probe)
    assert trace.losses[0] == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        if name in trainable:
            torch.testing.assert_close(p.detach(), before[name] - 0.5 * grads[name], atol=1e-6, rtol=0)
        else:
            assert torch.equal(p.detach(), before[name]), name
    assert all(n for n in trainable) and all("kv_tuning" in n for n in trainable)
    trace = kv_finetune(model, sequences, lr=0.1, probe=probe, start_length=1)
    assert len(trace.losses) == 2
    assert [q.shape for q in trace.train_queries] == [(3 + 4 - 2 + 2, 32)] * 2  # start tokens dropped
    lcgd = kv_finetune(model, sequences, lr=0.1, method="lcgd")
    assert len(lcgd.losses) == 2 and all(math.isfinite(x) for x in lcgd.losses)
    probe.remove()


def test_lcgd_layer_gradient_comes_only_from_its_own_logit_lens():
    from peft import get_peft_model

    from transformers_momentum.analysis.finetune import _layer_causal

    model = get_peft_model(_tiny_llama(100), KVTuningConfig())
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with _layer_causal(model) as outputs:
        model(input_ids=ids, logits_to_keep=1)
    head, norm = model.get_base_model().lm_head, model.get_base_model().model.norm
    last_layer_loss = torch.nn.functional.cross_entropy(head(norm(outputs[1]))[0, :-1], ids[0, 1:])
    layer0 = [p for n, p in model.named_parameters() if p.requires_grad and ".layers.0." in n]
    grads = torch.autograd.grad(last_layer_loss, layer0, allow_unused=True)
    # The stop-gradient between blocks: layer 1's loss does not reach layer 0's K/V deltas.
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_untrained_copy_keeps_embeddings_norms_and_unembedding():
    model = _tiny_llama(100, tie_word_embeddings=False)
    clone = untrained_copy(model, seed=3)
    original, changed = model.state_dict(), clone.state_dict()
    for name, tensor in original.items():
        same = torch.equal(tensor, changed[name])
        if "embed_tokens" in name or "norm" in name or "lm_head" in name:
            assert same, name
        elif name.endswith("weight"):
            assert not same, name
    assert model.model.layers[0].self_attn.q_proj.weight is not clone.model.layers[0].self_attn.q_proj.weight


def test_random_label_demos_are_seeded():
    demos = [{"text": str(i), "label": 0} for i in range(20)]
    a, b = random_label_demos(demos, 3, seed=5), random_label_demos(demos, 3, seed=5)
    assert a == b and {d["label"] for d in a} <= {0, 1, 2} and len({d["label"] for d in a}) > 1
    assert all(d["label"] == 0 for d in demos)


# ------------------------------------------------------------------------------------------------ tasks and data


def test_bundled_tasks_load_with_their_template_fields():
    for name in TASKS:
        data = load_task_data(name)
        task = get_task(name)
        assert len(data.train) > 0 and len(data.eval) > 0
        example = data.eval[0]
        assert task.format_input(example)
        assert set(data.eval["label"]) <= set(range(task.num_classes))


# ------------------------------------------------------------------------------------------------ end to end


def test_analyze_end_to_end_api(tokenizer):
    model = _tiny_llama(len(tokenizer))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = analyze(
        model, tokenizer, AnalysisConfig(task="sst2", k=3, n_eval=6, lr=0.05, seeds=(1, 2), progress=False)
    )
    r = result.results
    for key in ("accuracy.zsl", "accuracy.icl", "accuracy.ft", "rec2ftp", "simaou.mean", "simaou.per_layer",
                "simaou.random_mean", "simam.before_ft", "simam.after_ft", "kendall.mean", "kendall.random_mean", "config"):  # fmt: skip
        result[key]  # noqa: B018 - every documented key exists
    assert len(r["simaou"]["per_layer"]) == 2 and -1 <= r["simaou"]["mean"] <= 1
    assert set(r["controls"]) == {"lcgd", "random_label", "other_task", "untrained"}
    other = r["controls"]["other_task"]
    assert -1 <= other["simaou"]["mean"] <= 1 and other["kendall"]["mean"] is None  # tokens do not line up
    out = r["output"]
    assert out["kl_icl_ft"] >= 0 and out["kl_icl_zsl"] >= 0 and 0 <= out["topk_overlap_icl_ft"] <= 1
    order = r["order_sensitivity"]
    assert order["orders"] == 3 and 0 <= order["icl_flip_rate"] <= 100 and order["ft_gold_prob_std"] >= 0
    assert r["config"]["seeds_analyzed"] == [1, 2] and [s["k_effective"] for s in r["seeds"]] == [3, 3]
    assert r["weight_space"]["per_layer"] and len(r["weight_space"]["per_layer_head"][0]) == 2  # kv heads
    # The model comes back unwrapped and unchanged.
    assert type(model.model.layers[0].self_attn.k_proj) is torch.nn.Linear
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_cached_context_on_momentum_gpt_equals_full_forward_and_is_reused_unchanged(tokenizer):
    """MomentumGPT's momentum state cannot be cropped; the engine must still reuse the demo context exactly."""
    from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM
    from transformers_momentum.analysis.runner import _Engine

    torch.manual_seed(0)
    config = MomentumGPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
        momentum_eta=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = MomentumGPTForCausalLM(config).eval()
    context, query = list(range(3, 20)), list(range(40, 49))
    engine = _Engine(model, layout=None, config=AnalysisConfig(progress=False))
    try:
        with torch.no_grad():
            cache = output_cache(engine.model(input_ids=torch.tensor([context]), use_cache=True))
        full, _ = engine._forward(context + query, None, keep=3)
        for _ in range(2):  # the second call sees the cache exactly as the first did
            cached, _ = engine._forward(query, cache, keep=3)
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
        assert cache.get_seq_length() == len(context)
    finally:
        engine.close()
    result = analyze(
        model, tokenizer, AnalysisConfig(task="sst2", k=2, n_eval=3, lr=0.05, controls=(), progress=False)
    )
    assert 0 <= result["accuracy.icl"] <= 100 and len(result["simaou.per_layer"]) == 2


def test_analyze_with_lr_tuning_and_prompt_position(tokenizer):
    model = _tiny_llama(len(tokenizer))
    config = AnalysisConfig(task="sst2", k=2, n_eval=4, lr=None, lr_grid=(0.01, 0.1), n_tune=4, controls=(), analysis_position="prompt", progress=False)  # fmt: skip
    r = analyze(model, tokenizer, config).results
    assert r["seeds"][0]["lr"] in (0.01, 0.1) and set(r["seeds"][0]["lr_search"]) == {"0.01", "0.1"}
    assert r["config"]["tuning_split"].startswith("4 examples held out")
    paper = analyze(model, tokenizer, AnalysisConfig(**{**config.__dict__, "paper_protocol": True})).results
    assert paper["config"]["tuning_split"].startswith("eval (paper protocol")


def test_cli_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code = cli_main(["analyze", "--model", str(tiny_model_dir), "--task", "sst2", "--k", "2", "--n-eval", "4",
                     "--lr", "0.05", "--seeds", "1,2", "--out", str(out), "--quiet", "--device", "cpu"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["task"] == "sst2" and results["config"]["k"] == 2
    assert results["accuracy"]["zsl"] is not None and "untrained" in results["controls"]
    report = (out / "report.md").read_text()
    assert "paper 1.3B" in report and "92.7" in report  # the paper's ICL accuracy beside ours
    assert {p.name for p in out.glob("*.png")} == {
        "simaou_per_layer.png",
        "simam_per_layer.png",
        "kendall_per_layer.png",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind
    from transformers_momentum.analysis.report import render_task_table

    table = render_task_table({"sst2": results})
    # paper 1.3B / 2.7B and Deutch et al. beside ours
    assert "| SimAOU (ΔFT) |" in table and "(0.110/0.195; D 0.111)" in table


# ------------------------------------------------------------------------------------------------ bad input


def _cli_error(args, tmp_path, capsys) -> str:
    out = tmp_path / "out"
    code = cli_main(["analyze", *args, "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return capsys.readouterr().err


def test_error_unknown_task(tiny_model_dir, tmp_path, capsys):
    err = _cli_error(["--model", str(tiny_model_dir), "--task", "imdb"], tmp_path, capsys)
    assert "Unknown task 'imdb'" in err and "sst2" in err


def test_error_k_does_not_fit(tiny_model_dir, tmp_path, capsys):
    err = _cli_error(["--model", str(tiny_model_dir), "--task", "sst2", "--k", "64", "--n-eval", "2", "--lr", "0.1", "--max-length", "256"], tmp_path, capsys)  # fmt: skip
    assert "do not fit the context" in err and "--allow-fewer-demos" in err


def test_error_empty_data_file(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"text": "good", "label": 1}\n')
    (data / "eval.jsonl").write_text("")
    err = _cli_error(
        ["--model", str(tiny_model_dir), "--task", "sst2", "--data-dir", str(tmp_path / "data")],
        tmp_path,
        capsys,
    )
    assert "eval.jsonl is missing or empty" in err


def test_error_label_word_missing_from_vocabulary(tokenizer):
    task = TaskSpec("spam", "Sentence: {text} Label:", ("Negative", "Zyzzyvaqq"))
    data = TaskData(
        train=Dataset.from_list([{"text": "good", "label": 1}] * 4),
        eval=Dataset.from_list([{"text": "bad", "label": 0}]),
    )
    with pytest.raises(
        AnalysisInputError, match="label word 'Zyzzyvaqq' is missing from the tokenizer's vocabulary"
    ):
        analyze(
            _tiny_llama(len(tokenizer)),
            tokenizer,
            AnalysisConfig(k=1, n_eval=1, progress=False),
            task=task,
            data=data,
        )


def test_error_model_without_attention(tokenizer, tmp_path):
    from transformers import MambaConfig

    model = AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1)
    )
    with pytest.raises(AnalysisInputError, match="No attention"):
        analyze(model, tokenizer, AnalysisConfig(k=1, n_eval=1, progress=False))


def test_error_out_folder_not_empty(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli_main(
        ["analyze", "--model", str(tiny_model_dir), "--task", "sst2", "--out", str(out), "--quiet"]
    )
    assert code == 2 and "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_smollm2_end_to_end():
    pytest.importorskip("gguf")
    from transformers_momentum.analysis.cli import load_model

    torch.set_num_threads(1)  # two threads oversubscribe a shared 2-core machine
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    config = AnalysisConfig(
        task="sst2", k=4, n_eval=12, lr=1e-3, controls=("other_task", "order"), order_permutations=1, kendall_n=12,
        progress=False,
    )  # fmt: skip
    r = analyze(model, tokenizer, config).results
    # ICL moves the real model's next-token distribution: KL(ICL || ZSL) is well above zero.
    assert r["output"]["kl_icl_zsl"] > 0.01 and r["output"]["kl_icl_ft"] >= 0
    assert r["config"]["other_task_used"] == "agnews" and r["order_sensitivity"]["orders"] == 2
    assert r["config"]["num_layers"] == 30 and len(r["simaou"]["per_layer"]) == 30
    assert r["config"]["start_token_ids"] == [tokenizer.bos_token_id]
    # The real model's SimAM before FT is far from zero: ICL and ZSL attend to the query tokens alike.
    assert 0.3 < r["simam"]["before_ft"] <= 1.0
    assert all(-1.0 <= v <= 1.0 for v in r["simaou"]["per_layer"])


def test_multi_token_labels_scored_by_mean_log_probability(tokenizer):
    from transformers_momentum.analysis.runner import _Engine

    task = TaskSpec("two_word", "Sentence: {text} Label:", ("Negative", "Positive Positive"))
    model = _tiny_llama(len(tokenizer))
    layout = PromptLayout(tokenizer, task)
    assert not layout.single_token_labels and [len(x) for x in layout.label_ids] == [1, 2]
    example = {"text": "a good film", "label": 1}
    engine = _Engine(model, layout, AnalysisConfig(progress=False))
    try:
        predicted, record = engine.predict(layout.zero_shot_context(), None, example, record=True)
    finally:
        engine.close()
    scores = []
    for answer in layout.label_ids:
        ids = torch.tensor([layout.start_ids + layout.input_ids(example) + answer])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0], -1)
        n = len(answer)
        scores.append(np.mean([log_probs[-n - 1 + j, token].item() for j, token in enumerate(answer)]))
    assert predicted == int(np.argmax(scores))
    assert record is not None and record.attention_output.shape == (2, 32)
