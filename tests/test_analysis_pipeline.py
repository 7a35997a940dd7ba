"""The analysis pipeline end to end on tiny models: wiring tests with known answers, batching, records, controls."""

import math

import numpy as np
import pytest
import torch
from analysis_fixtures import sst2_words
from peft import get_peft_model

from transformers_momentum.analysis import (
    AnalysisConfig,
    AnalysisResult,
    AttentionProbe,
    CandidateScorer,
    KVInputSecondMoment,
    PromptLayout,
    TaskData,
    TaskSpec,
    analyze,
    flipped_label_demos,
    get_task,
    kv_finetune,
    load_task_data,
    random_label_demos,
    untrained_copy,
    weight_space_cosines,
)
from transformers_momentum.analysis.collect import SeedValues, VariantValues
from transformers_momentum.analysis.report import render_report
from transformers_momentum.analysis.summarize import warnings_for
from transformers_momentum.analysis.variants import aligned_tokens
from transformers_momentum.kv_tuning import KVTuningConfig, kv_deltas

# Two label words of different token lengths: random labels change the training tokens' count.
TWO_WORD = TaskSpec("two_word", "Sentence: {text} Label:", ("Negative", "Positive Positive"))


@pytest.fixture(scope="module")
def tokenizer(word_tokenizer):
    return word_tokenizer(sst2_words())


def _config(**overrides) -> AnalysisConfig:
    fields = dict(
        task="sst2", k=2, n_eval=4, lr=0.05, seeds=[1], controls=[], progress=False, n_resamples=999
    )
    return AnalysisConfig(**{**fields, **overrides})


def _two_word_data() -> TaskData:
    sst2 = load_task_data("sst2")
    return TaskData(sst2.train.select(range(40)), sst2.eval.select(range(40)), "sst2 subset")


# ------------------------------------------------------------------------------------------------ end to end


def test_analyze_end_to_end_api(tokenizer, tiny_llama):
    model = tiny_llama(len(tokenizer))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = analyze(
        model,
        tokenizer,
        _config(
            seeds=[1, 2],
            controls=["untrained", "lcgd", "random_label", "flipped_label", "other_task", "order"],
        ),
    )
    pretrained = result.models["pretrained"]
    assert set(pretrained.comparisons) == {"gd", "lcgd", "random_label", "flipped_label", "other_task"}
    assert set(result.models["untrained"].comparisons) == {"gd"}
    gd = pretrained.comparisons["gd"]
    assert len(gd.simaou.per_layer) == 2 and -1 <= gd.simaou.mean <= 1 and len(gd.simaou.per_seed) == 2
    assert gd.simaou.n == 4 and gd.simaou.ci95[0] <= gd.simaou.mean <= gd.simaou.ci95[1]
    assert gd.simaou.n_seeds == 2 and gd.simaou.ci95_examples_only is not None
    assert (
        pretrained.comparisons["other_task"].kendall.mean is None
    )  # its tokens do not line up with the demos
    # Random labels are drawn uniformly (the count kept is reported); flipped labels are SST-2's other class.
    pool = load_task_data("sst2").train
    for seed, random, flipped in zip(
        result.seeds,
        pretrained.comparisons["random_label"].info,
        pretrained.comparisons["flipped_label"].info,
        strict=True,
    ):
        gold = [pool[i]["label"] for i in seed.demo_indices]
        assert random["labels_kept"] == sum(a == b for a, b in zip(gold, random["labels"], strict=True))
        assert flipped["labels"] == [1 - g for g in gold] and flipped["labels_kept"] == 0
    report = render_report(result)
    assert "flipped-label FT" in report and "random-label FT" in report
    assert "cannot capture demonstration variation" in report  # two seeds
    assert result.statistics["n_seeds"] == 2 and "note" in result.statistics
    assert gd.output_kl.mean >= 0 and 0 <= gd.output_topk.mean <= 1
    assert pretrained.order.orders == 3 and 0 <= pretrained.order.icl_flip_rate.mean <= 100
    assert [s.k_effective for s in result.seeds] == [2, 2] and result.run["seeds_analyzed"] == [1, 2]
    assert len(gd.weight_space.per_layer_head[0]) == 2  # per key/value head
    assert result["models.pretrained.comparisons.gd.simaou.mean"] == pytest.approx(gd.simaou.mean)
    # The model comes back unwrapped and unchanged.
    assert type(model.model.layers[0].self_attn.k_proj) is torch.nn.Linear
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_batched_forwards_equal_batch_one(tokenizer, tiny_llama):
    # Multi-token labels, examples of different lengths, a cached context: predictions identical, metrics within 1e-5.
    model = tiny_llama(len(tokenizer))
    runs = {
        batch: analyze(model, tokenizer, _config(k=3, n_eval=5, controls=["lcgd"], batch_size=batch, save_records=True), task=TWO_WORD, data=_two_word_data())
        for batch in (1, 4)
    }  # fmt: skip
    one, four = (runs[b].records.to_arrays() for b in (1, 4))
    for key in one:
        if "/predicted/" in key:
            assert np.array_equal(one[key], four[key]), key
        else:
            np.testing.assert_allclose(one[key], four[key], atol=1e-5, rtol=0, err_msg=key)
    a, b = runs[1].models["pretrained"], runs[4].models["pretrained"]
    for variant in ("gd", "lcgd"):
        for metric in ("simaou", "simam_after", "delta_simam", "kendall", "output_kl"):
            x, y = getattr(a.comparisons[variant], metric), getattr(b.comparisons[variant], metric)
            assert x.mean == pytest.approx(y.mean, abs=1e-5), (variant, metric)


def test_learning_rate_zero_makes_ft_equal_zsl(tokenizer, tiny_llama):
    result = analyze(tiny_llama(len(tokenizer)), tokenizer, _config(lr=0.0, save_records=True, batch_size=2))
    pretrained = result.models["pretrained"]
    gd = pretrained.comparisons["gd"]
    records = result.records.to_arrays()
    assert np.array_equal(records["pretrained/seed1/predicted/gd"], records["pretrained/seed1/predicted/zsl"])
    assert gd.accuracy_ft.mean == pretrained.accuracy_zsl.mean
    assert gd.simam_after.per_layer == pytest.approx(pretrained.simam_before.per_layer, abs=1e-12)
    assert gd.simaou.mean == 0.0  # no FT update: cos(Δ_ICL, 0) = 0 with the paper's 1e-20
    assert gd.weight_space.mean == 0.0
    assert gd.output_kl.mean == pytest.approx(pretrained.output_kl_zsl.mean, abs=1e-9)
    np.testing.assert_array_equal(
        records["pretrained/seed1/attention_output/gd"], records["pretrained/seed1/attention_output/zsl"]
    )


def test_records_recompute_the_headline_metrics_with_independent_numpy(tokenizer, tiny_llama, tmp_path):
    config = _config(
        seeds=[1, 2], n_eval=5, kendall_n=3, batch_size=2, save_records=True, controls=["random_label"]
    )
    result = analyze(tiny_llama(len(tokenizer)), tokenizer, config)
    result.save(tmp_path / "run", plots=False)
    records = np.load(tmp_path / "run" / "records.npz")
    loaded = AnalysisResult.load(tmp_path / "run")
    gd = loaded.models["pretrained"].comparisons["gd"]

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def cos(a, b):
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    def tau(
        x, y
    ):  # Kendall's tau-b by counting pairs (identical tokens at equal FT positions tie in layer 0)
        i, j = np.triu_indices(len(x), 1)
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        return sx @ sy / np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))

    simaou, shuffled, before, after, kendall = [], [], [], [], []
    for seed in (1, 2):
        get = lambda name, s=seed: records[f"pretrained/seed{s}/{name}"]  # noqa: E731
        zsl, icl, ft = (unit(get(f"attention_output/{s}").astype(float)) for s in ("zsl", "icl", "gd"))
        simaou.append(cos(icl - zsl, ft - zsl))  # (examples, layers)
        shuffled.append(cos((icl - zsl)[1:], (ft - zsl)[:-1]))  # ICL update of i vs FT update of i-1
        offsets = get("query_offsets")
        rows = {s: get(f"query_scores/{s}").astype(float) for s in ("zsl", "icl", "gd")}
        spans = [slice(offsets[i], offsets[i + 1]) for i in range(len(offsets) - 1)]
        # per head cosine of the score rows over each example's query keys, then the mean over heads
        before.append(np.stack([cos(rows["icl"][..., k], rows["zsl"][..., k]).mean(-1) for k in spans]))
        after.append(np.stack([cos(rows["icl"][..., k], rows["gd"][..., k]).mean(-1) for k in spans]))
        m_icl, m_ft = get("kendall_icl/gd").astype(float), get("kendall_ft/gd").astype(float)
        assert m_icl.shape[0] == 3  # the first kendall_n examples
        kendall.append([[tau(m_icl[e, layer], m_ft[e, layer]) for layer in range(2)] for e in range(3)])
    paper_mean = lambda values: np.concatenate(values).mean(axis=0).mean()  # noqa: E731 - examples, then layers
    assert gd.simaou.mean == pytest.approx(paper_mean(simaou), abs=1e-6)
    assert gd.simaou_shuffled_null.mean == pytest.approx(paper_mean(shuffled), abs=1e-6)
    assert loaded.models["pretrained"].simam_before.mean == pytest.approx(paper_mean(before), abs=1e-6)
    assert gd.simam_after.mean == pytest.approx(paper_mean(after), abs=1e-6)
    assert gd.kendall.mean == pytest.approx(paper_mean([np.array(k) for k in kendall]), abs=1e-6)
    assert loaded.to_dict() == result.to_dict()


def test_label_controls_with_label_words_of_different_token_lengths(tokenizer, tiny_llama):
    # Every flipped label changes the demo's token count; Kendall compares the tokens that still line up.
    config = _config(k=4, n_eval=3, controls=["random_label", "flipped_label"], save_records=True)
    result = analyze(tiny_llama(len(tokenizer)), tokenizer, config, task=TWO_WORD, data=_two_word_data())
    control = result.models["pretrained"].comparisons["flipped_label"]
    assert control.info[0]["labels_kept"] == 0 and control.kendall.mean is not None
    records = result.records.to_arrays()
    layout = PromptLayout(tokenizer, TWO_WORD)
    demos = [_two_word_data().train[i] for i in result.seeds[0].demo_indices]
    demo_tokens = records["pretrained/seed1/kendall_icl/gd"].shape[-1]
    inputs_only = sum(len(layout.input_ids(d)) for d in demos)
    assert records["pretrained/seed1/kendall_icl/flipped_label"].shape[-1] == inputs_only < demo_tokens
    # Random labels: the demos that kept their gold label keep their label tokens in the Kendall alignment.
    random = result.models["pretrained"].comparisons["random_label"].info[0]
    kept = [d for d, label in zip(demos, random["labels"], strict=True) if d["label"] == label]
    assert random["labels_kept"] == len(kept)
    expected = inputs_only + sum(len(layout.label_ids[d["label"]]) for d in kept)
    assert records["pretrained/seed1/kendall_icl/random_label"].shape[-1] == expected


def test_aligned_tokens_pair_the_same_place_in_the_same_demo(tokenizer):
    layout = PromptLayout(tokenizer, TWO_WORD)
    demos = [{"text": "good film", "label": 0}, {"text": "bad", "label": 1}]
    flipped = [{"text": "good film", "label": 1}, {"text": "bad", "label": 0}]
    context = layout.context(demos)  # <s> S : good film L : Neg </s> S : bad L : Pos Pos </s>
    icl, ft = aligned_tokens(layout, context, demos, demos)
    assert icl.tolist() == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
    assert ft.tolist() == list(range(14))
    icl, ft = aligned_tokens(layout, context, demos, flipped)  # label lengths differ: inputs only
    assert icl.tolist() == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13]
    # FT tokens: good-film demo with a 2-token label (8 tokens), then the bad demo's 5 input tokens.
    assert ft.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12]


def test_weight_space_hand_computed(tiny_llama):
    # One layer, 2 heads of dim 2. W_K = W_V = I, no bias, ΔW_K = 0, ΔW_V = diag(1, 2, 3, -1), S' = S = I:
    # ΔW_ICL = [I|0] I [I|0]ᵀ = I and ΔW_FT = (I + D) - I = D, so per head cos(I_2, D_h) = tr(D_h) / (√2 ‖D_h‖).
    model = tiny_llama(
        97,
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        attention.k_proj.weight.copy_(torch.eye(4))
        attention.v_proj.weight.copy_(torch.eye(4))
    peft_model = get_peft_model(model, KVTuningConfig())
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad and "v_proj" in name and parameter.ndim == 2:
                parameter.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0, -1.0])))
    assert torch.equal(kv_deltas(peft_model)[0]["v_weight"], torch.diag(torch.tensor([1.0, 2.0, 3.0, -1.0])))
    moments = KVInputSecondMoment(peft_model)
    identity = [torch.eye(5, dtype=torch.float64)]
    cosines = weight_space_cosines(peft_model, moments, identity, identity)
    assert cosines[0] == pytest.approx(
        [3 / (math.sqrt(2) * math.sqrt(5)), 2 / (math.sqrt(2) * math.sqrt(10))]
    )
    # The moments are Σ x̃ x̃ᵀ of the K/V projections' input over the selected tokens, x̃ = [x; 1].
    seen = []
    hook = attention.k_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].detach().double()))
    mask = torch.tensor([[False, True, True, False]])
    with torch.no_grad(), moments.accumulate(mask):
        peft_model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    hook.remove()
    x = torch.cat([seen[0][1:3], torch.ones(2, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(moments.take()[0], x.T @ x)
    moments.remove()


def test_learning_rate_tuning_scores_each_rate_by_its_ft_accuracy(tokenizer, tiny_llama):
    model = tiny_llama(len(tokenizer))
    config = _config(lr=None, lr_grid=[0.0, 1e30], n_tune=6, n_eval=2)
    result = analyze(model, tokenizer, config)
    search = result.seeds[0].lr_search
    assert result.seeds[0].lr == 0.0 and search["1e+30"] == -1.0  # a diverging rate is never chosen
    # lr = 0 is the base model: its tuning-split accuracy, computed independently with full forwards.
    layout = PromptLayout(tokenizer, get_task("sst2"))
    pool = load_task_data("sst2").train
    tune = list(pool.add_column("i", list(range(len(pool)))).shuffle(seed=10_000).select(range(6)))
    correct = []
    for example in tune:
        ids = torch.tensor([layout.start_ids + layout.input_ids(example)])
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        correct.append(int(torch.argmax(logits[[a[0] for a in layout.label_ids]])) == example["label"])
    assert search["0.0"] == pytest.approx(100 * np.mean(correct))
    assert result.run["tuning_split"] == "6 examples held out of the demo pool"


def test_prompt_analysis_position_and_the_paper_protocol(tokenizer, tiny_llama):
    model = tiny_llama(len(tokenizer))
    config = _config(
        analysis_position="prompt", paper_protocol=True, lr=None, lr_grid=[0.01, 0.1], save_records=True
    )
    result = analyze(model, tokenizer, config)
    assert result.run["tuning_split"].startswith("eval (paper protocol")
    # The recorded attention output is the last prompt token's (not the appended label token's).
    layout = PromptLayout(tokenizer, get_task("sst2"))
    example = load_task_data("sst2").eval.shuffle(seed=1)[0]
    ids = torch.tensor([layout.start_ids + layout.query_ids(example, 0)])
    seen = {}
    hook = model.model.layers[1].self_attn.register_forward_hook(
        lambda m, a, o: seen.update(out=o[0][0])  # returns None: the output stays as it is
    )
    with torch.no_grad():
        model(ids)
    hook.remove()
    recorded = result.records.to_arrays()["pretrained/seed1/attention_output/zsl"][0, 1]
    np.testing.assert_allclose(recorded, seen["out"][-2].numpy(), atol=1e-5)  # -1 is the label token


def test_warnings_for_collapsed_ft_and_a_label_control_equal_to_the_main_run():
    def variant(predicted, simaou):
        v = VariantValues(predicted=predicted)
        v.per_layer["simaou"] = [np.array([s]) for s in simaou]
        return v

    values = SeedValues(gold=[0, 1, 0, 1])
    values.variants = {
        "gd": variant([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]),
        "random_label": variant([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]),
        "flipped_label": variant([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]),
    }
    messages = warnings_for("pretrained", [3], [values], get_task("sst2"))
    assert len(messages) == 5
    assert "FT (gd) predicts 'Positive' for every evaluation example" in messages[0]
    assert "random-label control equals the main run" in messages[3]
    assert "flipped-label control equals the main run" in messages[4]
    values.variants = {
        "gd": variant([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]),
        "random_label": variant([0, 1, 1, 0], [0.1] * 4),
        "flipped_label": variant([1, 0, 0, 1], [-0.1] * 4),
    }
    assert warnings_for("pretrained", [3], [values], get_task("sst2")) == []


def test_ft_dropout_is_seeded_and_bf16_forwards_keep_fp32_metrics(tokenizer, tiny_llama):
    # FT runs in train mode, so a model's own dropout is active (as in the paper's fairseq FT): seeded, reproducible.
    model = tiny_llama(len(tokenizer), attention_dropout=0.5)
    first, second = (analyze(model, tokenizer, _config(n_eval=2)) for _ in range(2))
    assert (
        first.models["pretrained"].comparisons["gd"].simaou.mean
        == second.models["pretrained"].comparisons["gd"].simaou.mean
    )
    bf16 = analyze(model.to(torch.bfloat16), tokenizer, _config(n_eval=2, save_records=True))
    assert bf16.run["dtype"] == "bfloat16"
    assert all(
        array.dtype in (np.float32, np.float64, np.int64) for array in bf16.records.to_arrays().values()
    )
    assert math.isfinite(bf16.models["pretrained"].comparisons["gd"].simaou.mean)


# ------------------------------------------------------------------------------------------------ FT and controls


def test_kv_finetune_is_one_sgd_step_per_demo_on_kv_only(tiny_llama):
    model = get_peft_model(tiny_llama(100), KVTuningConfig())
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
    assert trainable and all("kv_tuning" in n for n in trainable)
    trace = kv_finetune(model, sequences, lr=0.1, probe=probe, start_length=1)
    assert len(trace.losses) == 2
    assert [q.shape for q in trace.train_queries] == [(4 + 3, 32)] * 2  # start tokens dropped
    lcgd = kv_finetune(model, sequences, lr=0.1, method="lcgd")
    assert len(lcgd.losses) == 2 and all(math.isfinite(x) for x in lcgd.losses)
    probe.remove()


def test_lcgd_layer_gradient_comes_only_from_its_own_logit_lens(tiny_llama):
    from transformers_momentum.analysis.finetune import _layer_causal

    model = get_peft_model(tiny_llama(100), KVTuningConfig())
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with _layer_causal(model) as outputs:
        model(input_ids=ids, logits_to_keep=1)
    head, norm = model.get_base_model().lm_head, model.get_base_model().model.norm
    last_layer_loss = torch.nn.functional.cross_entropy(head(norm(outputs[1]))[0, :-1], ids[0, 1:])
    layer0 = [p for n, p in model.named_parameters() if p.requires_grad and ".layers.0." in n]
    grads = torch.autograd.grad(last_layer_loss, layer0, allow_unused=True)
    # The stop-gradient between blocks: layer 1's loss does not reach layer 0's K/V deltas.
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_untrained_copy_keeps_embeddings_norms_and_unembedding(tiny_llama):
    model = tiny_llama(100, tie_word_embeddings=False)
    clone = untrained_copy(model, seed=3)
    original, changed = model.state_dict(), clone.state_dict()
    kept = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{i}.{norm}.weight"
        for i in range(2)
        for norm in ("input_layernorm", "post_attention_layernorm")
    }
    assert {name for name in original if torch.equal(original[name], changed[name])} == kept
    assert model.model.layers[0].self_attn.q_proj.weight is not clone.model.layers[0].self_attn.q_proj.weight


def test_random_labels_are_uniform_and_flipped_labels_a_consistent_derangement():
    demos = [{"text": str(i), "label": i % 3} for i in range(300)]
    # Random labels (Min et al.): uniform over the label set, so the gold label is kept at chance (1/3 here).
    uniform, kept = random_label_demos(demos, 3, seed=5)
    assert kept == sum(d["label"] == s["label"] for d, s in zip(demos, uniform, strict=True))
    assert 70 <= kept <= 130  # Binomial(300, 1/3): mean 100, sd 8.2
    counts = np.bincount([s["label"] for s in uniform], minlength=3)
    assert counts.min() >= 70  # every class drawn, none favoured
    assert random_label_demos(demos, 3, seed=5)[0] == uniform  # seeded
    assert random_label_demos(demos, 3, seed=6)[0] != uniform
    binary = [{"text": str(i), "label": i % 2} for i in range(400)]
    kept_binary = random_label_demos(binary, 2, seed=1)[1]
    assert 160 <= kept_binary <= 240  # half the time on a binary task, not never
    # Flipped labels (Wei et al.): the binary inverse; for k classes one fixed permutation without a fixed point.
    flipped, mapping = flipped_label_demos(binary, 2)
    assert mapping == [1, 0] and [s["label"] for s in flipped] == [1 - d["label"] for d in binary]
    flipped, mapping = flipped_label_demos(demos, 3)
    assert sorted(mapping) == [0, 1, 2] and all(mapping[c] != c for c in range(3))
    assert all(s["label"] == mapping[d["label"]] for d, s in zip(demos, flipped, strict=True))
    assert flipped_label_demos(demos[:7], 3)[1] == mapping  # the same mapping whatever the demonstrations
    assert [d["label"] for d in demos] == [i % 3 for i in range(300)]  # inputs untouched
    with pytest.raises(ValueError):
        flipped_label_demos(demos[:1], 1)


def test_momentum_gpt_context_cache_is_reused_unchanged(tokenizer, tiny_momentum_gpt):
    """MomentumGPT's momentum state cannot be cropped: the scorer copies the cache and must still match."""
    model = tiny_momentum_gpt(vocab_size=len(tokenizer), max_position_embeddings=512, momentum_eta=0.5)
    layout = PromptLayout(tokenizer, get_task("sst2"))
    data = load_task_data("sst2")
    examples, demos = list(data.eval.select(range(3))), list(data.train.select(range(2)))
    context = layout.context(demos)
    for batch_size in (1, 3):
        scorer = CandidateScorer(model, layout, batch_size=batch_size)
        prefix = scorer.prefix(context)
        for _ in range(2):  # the second pass sees the cache exactly as the first did
            scored = scorer.score(prefix, examples)
            assert prefix.cache.get_seq_length() == len(context)
            for example, result in zip(examples, scored, strict=True):
                ids = torch.tensor([context.input_ids + layout.input_ids(example)])
                with torch.no_grad():
                    log_probs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
                expected = [log_probs[answer[0]].item() for answer in layout.label_ids]
                np.testing.assert_allclose(result.scores, expected, atol=1e-5, rtol=0)
    result = analyze(model, tokenizer, _config(n_eval=3))
    assert 0 <= result.models["pretrained"].accuracy_icl.mean <= 100


# ------------------------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_smollm2_end_to_end():
    pytest.importorskip("gguf")
    from transformers_momentum.analysis import load_model

    torch.set_num_threads(1)  # two threads oversubscribe a shared 2-core machine
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    config = AnalysisConfig(
        task="sst2", k=4, n_eval=12, lr=1e-3, seeds=[1], controls=["other_task", "order"], order_permutations=1,
        kendall_n=12, progress=False, batch_size=4,
    )  # fmt: skip
    result = analyze(model, tokenizer, config)
    pretrained = result.models["pretrained"]
    gd = pretrained.comparisons["gd"]
    # ICL moves the real model's next-token distribution: KL(ICL || ZSL) is well above zero.
    assert pretrained.output_kl_zsl.mean > 0.01 and gd.output_kl.mean >= 0
    assert result.run["other_task_used"] == "agnews" and pretrained.order.orders == 2
    assert result.run["num_layers"] == 30 and len(gd.simaou.per_layer) == 30
    assert result.run["start_token_ids"] == [tokenizer.bos_token_id]
    # The real model's SimAM before FT is far from zero: ICL and ZSL attend to the query tokens alike.
    assert 0.3 < pretrained.simam_before.mean <= 1.0
    assert all(-1.0 <= v <= 1.0 for v in gd.simaou.per_layer)
