"""Tasks, prompt layout and the ICL core shared by the analyzer and the pretraining ICL evaluation."""

import numpy as np
import pytest
import torch
from analysis_fixtures import sst2_words
from datasets import Dataset

from transformers_momentum.analysis import (
    TASKS,
    AnalysisInputError,
    CandidateScorer,
    PromptLayout,
    TaskSpec,
    choose_demos,
    get_task,
    load_task_data,
)


@pytest.fixture(scope="module")
def tokenizer(word_tokenizer):
    return word_tokenizer(sst2_words())


# ------------------------------------------------------------------------------------------------ prompt layout


def test_prompt_layout_token_by_token(tokenizer):
    layout = PromptLayout(tokenizer, get_task("sst2"))
    vocab = tokenizer.get_vocab()
    bos, eos = vocab["<s>"], vocab["</s>"]
    demos = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]
    w = lambda *words: [vocab[x] for x in words]  # noqa: E731
    demo1 = w("Sentence", ":", "good", "film", "Label", ":", "Positive")
    demo2 = w("Sentence", ":", "bad", "film", "Label", ":", "Negative")
    context = layout.context(demos)
    # [<s>] + demo_1 + </s> + demo_2 + </s>  (the fairseq layout of the paper's code)
    assert context.input_ids == [bos, *demo1, eos, *demo2, eos]
    assert context.demo_spans == [(1, 1 + len(demo1)), (2 + len(demo1), 2 + len(demo1) + len(demo2))]
    # FT training sequence: [<s>] + T_in + " label", no trailing </s>
    assert layout.ft_sequence(demos[0]) == [bos, *demo1]
    for (a, b), demo in zip(context.demo_spans, demos, strict=True):
        assert context.input_ids[a:b] == layout.ft_sequence(demo)[1:]
    query = {"text": "a film", "label": 1}
    assert layout.query_ids(query, 0) == w("Sentence", ":", "a", "film", "Label", ":", "Negative")
    assert layout.zero_shot_context().input_ids == [bos]
    assert layout.label_ids == [w("Negative"), w("Positive")] and layout.single_token_labels


def test_prompt_layout_start_token_and_fairseq_newlines(tokenizer, word_tokenizer):
    vocab = tokenizer.get_vocab()
    no_bos = word_tokenizer(sst2_words())
    no_bos.bos_token = None
    assert PromptLayout(no_bos, get_task("sst2")).start_ids == [vocab["</s>"]]  # GPT-2 style: EOS starts
    assert PromptLayout(tokenizer, get_task("sst2"), start_token="</s>").start_ids == [vocab["</s>"]]
    with pytest.raises(AnalysisInputError, match="not a token"):
        PromptLayout(tokenizer, get_task("sst2"), start_token="<nope>")
    # fairseq encodes every line separately and ends it with </s>: a line break inside the text becomes EOS.
    fairseq = PromptLayout(tokenizer, get_task("sst2"), newline="eos")
    ids = fairseq.input_ids({"text": "good\nfilm", "label": 1})
    assert ids == [
        vocab["Sentence"],
        vocab[":"],
        vocab["good"],
        vocab["</s>"],
        vocab["film"],
        vocab["Label"],
        vocab[":"],
    ]


# ------------------------------------------------------------------------------------------------ tasks and data


def test_bundled_tasks_load_with_their_template_fields():
    for name in TASKS:
        data = load_task_data(name)
        task = get_task(name)
        assert len(data.train) > 0 and len(data.eval) > 0
        assert task.format_input(data.eval[0])
        assert set(data.eval["label"]) <= set(range(task.num_classes))
    assert load_task_data("sst2").train.column_names == ["text", "label"]  # the Hub's "sentence" renamed


def test_data_dir_reads_jsonl_csv_and_tsv_with_datasets(tmp_path):
    rows = [{"sentence": "a fine film", "label": 1}, {"sentence": "dull, flat", "label": 0}]
    (tmp_path / "sst2").mkdir()
    Dataset.from_list(rows).to_json(tmp_path / "sst2" / "train.jsonl")
    (tmp_path / "sst2" / "eval.tsv").write_text('text\tlabel\n"dull, flat"\t0\ngreat\t1\n', encoding="utf-8")
    data = load_task_data("sst2", tmp_path)
    assert data.train["text"] == ["a fine film", "dull, flat"] and data.eval["label"] == [0, 1]
    assert data.eval["text"] == ["dull, flat", "great"]
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr" / "train.csv").write_text('text,label\n"good, really",1\n', encoding="utf-8")
    (tmp_path / "mr" / "eval.csv").write_text("text,label\nbad,0\n", encoding="utf-8")
    assert load_task_data("mr", tmp_path).train["text"] == ["good, really"]


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ('{"text": "good", "label": 7}\n', "label(s) [7]"),
        ('{"words": "good", "label": 1}\n', "lacks the field(s) ['text']"),
        ("{not json\n", "could not parse"),
        ("", "is empty"),
    ],
)
def test_bad_data_files_give_one_clear_error(tmp_path, train, message):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.jsonl").write_text(train, encoding="utf-8")
    (tmp_path / "sst2" / "eval.jsonl").write_text('{"text": "bad", "label": 0}\n', encoding="utf-8")
    with pytest.raises(
        AnalysisInputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        load_task_data("sst2", tmp_path)


# ------------------------------------------------------------------------------------------------ the ICL core


def test_choose_demos_takes_the_seed_shuffled_pool_in_order_while_it_fits(tokenizer):
    layout = PromptLayout(tokenizer, get_task("sst2"))
    pool = load_task_data("sst2").train
    order = pool.shuffle(seed=3)
    sizes = [len(layout.demo_ids(ex)) + 1 for ex in order.select(range(5))]  # content + </s>
    # Room for exactly three demos: the fourth would reach the budget (the code's "<" rule).
    budget = 1 + sum(sizes[:3]) + sizes[3]
    demos = choose_demos(pool, 3, layout, 5, budget, allow_fewer=True)
    assert [d["text"] for d in demos] == order.select(range(3))["text"]
    with pytest.raises(AnalysisInputError, match="only 3 fit"):
        choose_demos(pool, 3, layout, 5, budget)


def _reference_scores(model, layout, context_ids, example):
    """Each candidate's mean label-token log-probability from one full-sequence forward per candidate."""
    scores = []
    for answer in layout.label_ids:
        ids = torch.tensor([context_ids + layout.input_ids(example) + answer])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0].double(), -1)
        n = len(answer)
        scores.append(np.mean([log_probs[-n - 1 + j, token].item() for j, token in enumerate(answer)]))
    return np.array(scores)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scorer_equals_full_sequence_mean_log_probabilities(tokenizer, batch_size, tiny_llama):
    # Multi-token labels, examples of different lengths, a cached context and right-padded batches.
    task = TaskSpec("two_word", "Sentence: {text} Label:", ("Negative", "Positive Positive", "film"))
    model = tiny_llama(len(tokenizer))
    layout = PromptLayout(tokenizer, task)
    data = load_task_data("sst2")
    examples = [{**ex, "label": i % 3} for i, ex in enumerate(data.eval.select(range(5)))]
    demos = [{**ex, "label": i % 3} for i, ex in enumerate(data.train.select(range(3)))]
    scorer = CandidateScorer(model, layout, batch_size=batch_size)
    for context in (layout.zero_shot_context(), layout.context(demos)):
        prefix = scorer.prefix(context)
        assert (prefix.cache is None) == (context is not None and not context.demo_spans)
        scored = scorer.score(prefix, examples)
        for example, result in zip(examples, scored, strict=True):
            expected = _reference_scores(model, layout, context.input_ids, example)
            np.testing.assert_allclose(result.scores, expected, atol=2e-5, rtol=0)
            assert result.predicted == int(np.argmax(expected))
        if prefix.cache is not None:
            assert prefix.cache.get_seq_length() == len(context)  # the shared cache comes back unchanged


def test_pretraining_icl_evaluation_is_the_analyzer_core(tokenizer, tiny_llama):
    from transformers_momentum.pretraining.icl_eval import icl_accuracy

    model = tiny_llama(len(tokenizer), max_position_embeddings=120)
    result = icl_accuracy(model, tokenizer, "sst2", k=4, n_eval=6, seeds=(1, 2), batch_size=3)
    layout = PromptLayout(tokenizer, get_task("sst2"))
    data = load_task_data("sst2")
    examples = list(data.eval.shuffle(seed=1).select(range(6)))
    budget = 120 - layout.longest_query(examples)
    for seed in (1, 2):
        # Independently: the seed-shuffled pool, demos while they fit, full-sequence mean log-probabilities.
        demos, length = [], 1
        for ex in data.train.shuffle(seed=seed).select(range(4)):
            size = len(layout.demo_ids(ex)) + 1
            if length + size >= budget:
                break
            demos.append(ex)
            length += size
        context = layout.context(demos).input_ids
        correct = [np.argmax(_reference_scores(model, layout, context, ex)) == ex["label"] for ex in examples]
        assert result["icl_per_seed"][seed] == pytest.approx(np.mean(correct))
        assert result["k_effective"][seed] == len(demos)
    assert result["demos_dropped"] == sum(4 - n for n in result["k_effective"].values()) > 0
