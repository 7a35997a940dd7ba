"""User data and task definitions are checked before any forward: one-line `AnalysisInputError`s (exit code 2)."""

import pytest
from analysis_fixtures import sst2_words
from datasets import Dataset

from transformers_momentum.analysis import AnalysisConfig, AnalysisInputError, TaskData, TaskSpec, analyze
from transformers_momentum.cli import main as cli_main

ROWS = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}] * 4


@pytest.fixture(scope="module")
def tokenizer(word_tokenizer):
    return word_tokenizer(sst2_words())


@pytest.fixture
def model(tiny_llama, tokenizer):
    """A model that fails the test if anything runs a forward through it."""
    model = tiny_llama(len(tokenizer))

    def no_forward(module, args, kwargs):
        raise AssertionError("a forward ran before the input was checked")

    model.register_forward_pre_hook(no_forward, with_kwargs=True)
    return model


def _analyze(model, tokenizer, *, task=None, train=ROWS, eval_rows=ROWS):
    data = TaskData(Dataset.from_list(train), Dataset.from_list(eval_rows))
    config = AnalysisConfig(task="sst2", k=2, n_eval=2, lr=0.1, seeds=[1], controls=[], progress=False)
    return analyze(model, tokenizer, config, task=task, data=data)


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t"], ids=["none", "empty", "spaces", "whitespace"])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_missing_or_empty_text_is_refused(model, tokenizer, text, split):
    bad = ROWS[:3] + [{"text": text, "label": 0}] + ROWS[4:]
    rows = {"train": ROWS, "eval": ROWS, split: bad}
    with pytest.raises(
        AnalysisInputError, match=rf"1 row\(s\) of the {split} split .* no text in the field 'text'.*rows 3\)"
    ):
        _analyze(model, tokenizer, train=rows["train"], eval_rows=rows["eval"])


def test_a_row_without_the_field_is_refused(model, tokenizer):
    # datasets fills a key missing from some rows with None; before, str(None) became the text "None"
    rows = ROWS + [{"label": 1}]
    with pytest.raises(AnalysisInputError, match="no text in the field 'text'"):
        _analyze(model, tokenizer, train=rows)


@pytest.mark.parametrize(
    "words, message",
    [
        (("Negative", ""), r"label word\(s\) \[1\] \(0-based\) are empty"),
        (("  ", "Positive"), r"label word\(s\) \[0\] \(0-based\) are empty"),
        (("Positive",), "needs at least two label words"),
        ((), "needs at least two label words"),
        (("Positive", "Positive"), r"label word\(s\) \['Positive'\] name more than one class"),
        ("Positive", "must be a sequence of strings"),
    ],
    ids=["empty", "whitespace", "one_class", "no_class", "repeated", "a_string"],
)
def test_bad_label_words_are_refused_when_the_task_is_defined(words, message):
    with pytest.raises(AnalysisInputError, match=message):
        TaskSpec("t", "Sentence: {text} Label:", words)


def test_label_words_that_collide_after_tokenization_are_refused(model, tokenizer):
    # different strings, the same tokens: the word-level tokenizer drops the trailing space
    task = TaskSpec("t", "Sentence: {text} Label:", ("Positive", "Positive "))
    with pytest.raises(
        AnalysisInputError, match=r"'Positive' \(label 0\) and 'Positive ' \(label 1\) tokenize identically"
    ):
        _analyze(model, tokenizer, task=task)


def test_the_cli_reports_bad_data_in_one_line_with_exit_code_2(tiny_llama, tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_llama(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    capsys.readouterr()  # the save's progress bar is not the CLI's output
    folder = tmp_path / "data" / "sst2"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"text": "good", "label": 1}\n{"text": null, "label": 0}\n')
    (folder / "eval.jsonl").write_text('{"text": "bad", "label": 0}\n')
    code = cli_main(["analyze", "--model", str(model_dir), "--data-dir", str(tmp_path / "data"),
                     "--n-eval", "1", "--quiet", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no text in the field 'text'" in err, err
