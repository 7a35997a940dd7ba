"""``transformers-momentum analyze``: end to end on tiny local models (Llama, XGLM), and one-line errors."""

import dataclasses
import json

import pytest
import torch
from analysis_fixtures import sst2_words
from datasets import Dataset

from transformers_momentum.analysis import AnalysisConfig, AnalysisInputError, TaskData, TaskSpec, analyze
from transformers_momentum.cli import build_parser
from transformers_momentum.cli import main as cli_main


@pytest.fixture(scope="module")
def tokenizer(word_tokenizer):
    return word_tokenizer(sst2_words())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer, tiny_llama):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _run(*args) -> int:
    return cli_main(["analyze", *map(str, args), "--quiet", "--device", "cpu"])


def test_cli_defaults_are_the_api_defaults():
    parser = build_parser()
    args = parser.parse_args(["analyze", "--model", "m", "--out", "o"])
    for field in dataclasses.fields(AnalysisConfig):
        assert getattr(args, field.name) == getattr(AnalysisConfig(), field.name), field.name
    args = parser.parse_args(
        ["analyze", "--model", "m", "--out", "o", "--seeds", "1", "2", "--no-plots", "--n-eval", "5"]
    )
    assert args.seeds == [1, 2] and args.plots is False and args.n_eval == 5


def test_cli_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _run("--model", tiny_model_dir, "--task", "sst2", "--k", 2, "--n-eval", 4, "--lr", 0.05, "--seeds", 1, 2,
                "--controls", "untrained", "lcgd", "--batch-size", 3, "--save-records", "--out", out) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert (
        results["config"]["task"] == "sst2"
        and results["config"]["k"] == 2
        and results["config"]["batch_size"] == 3
    )
    assert set(results["models"]) == {"pretrained", "untrained"}
    assert results["models"]["pretrained"]["accuracy_zsl"]["interval"].startswith("Wilson")
    report = (out / "report.md").read_text()
    assert "paper 1.3B / 2.7B" in report and "92.7" in report  # the paper's ICL accuracy beside ours
    assert "over both demonstration seeds and evaluation examples" in report  # what the intervals are over
    assert "cannot capture demonstration variation" in report  # two seeds
    assert {p.name for p in out.iterdir()} == {
        "results.json", "report.md", "records.npz", "simaou_per_layer.png", "simam_per_layer.png", "kendall_per_layer.png",
    }  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    from transformers_momentum.analysis import AnalysisResult, render_task_table

    table = render_task_table({"sst2": AnalysisResult.load(out)})
    assert "| SimAOU (ICL vs FT updates) |" in table and "(0.110/0.195; D 0.111)" in table
    assert "| SimAOU (ICL vs FT updates), untrained model |" in table


def test_cli_on_a_local_xglm_folder(tmp_path):
    # XGLM is the architecture of the paper's GPT 1.3B/2.7B (fairseq dense LMs): no sdpa, attention computed in its
    # module, GPT-2 byte-level BPE, </s> between demonstrations.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, XGLMConfig, XGLMForCausalLM

    from transformers_momentum.analysis import load_task_data

    texts = list(load_task_data("sst2").train["text"]) + ["Sentence: Label: Negative Positive"] * 5
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = XGLMConfig(
        vocab_size=len(tokenizer), d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=512,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "xglm"
    XGLMForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    assert _run("--model", folder, "--task", "sst2", "--k", 2, "--n-eval", 3, "--lr", 0.05, "--controls", "flipped_label",
                "--start-token", "<s>", "--newline", "eos", "--out", out) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    run = results["run"]
    assert run["model_type"] == "xglm" and run["probe_fallback"] and run["exact_scores"]
    assert run["start_token_ids"] == [0] and run["separator_ids"] == [2]  # fairseq's <s> ... </s> layout
    assert run["seeds_analyzed"] == [1, 2, 3, 4, 5] and "note" not in results["statistics"]  # default seeds
    gd = results["models"]["pretrained"]["comparisons"]["gd"]
    assert gd["kendall"]["mean"] is not None and gd["simam_after"]["mean"] is not None
    assert results["warnings"] == []


# ------------------------------------------------------------------------------------------------ bad input


def _cli_error(args, tmp_path, capsys, *, out=None) -> str:
    out = out or tmp_path / "out"
    code = _run(*args, "--out", out)
    assert code == 2
    if out.name == "out":
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err  # one line
    return err


def test_error_unknown_task(tiny_model_dir, tmp_path, capsys):
    err = _cli_error(["--model", tiny_model_dir, "--task", "imdb"], tmp_path, capsys)
    assert "Unknown task 'imdb'" in err and "sst2" in err


def test_error_k_does_not_fit(tiny_model_dir, tmp_path, capsys):
    err = _cli_error(["--model", tiny_model_dir, "--task", "sst2", "--k", 64, "--n-eval", 2, "--lr", 0.1, "--max-length", 256], tmp_path, capsys)  # fmt: skip
    assert "do not fit the context" in err and "--allow-fewer-demos" in err


def test_error_empty_data_file(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"text": "good", "label": 1}\n')
    (data / "eval.jsonl").write_text("")
    err = _cli_error(["--model", tiny_model_dir, "--data-dir", tmp_path / "data"], tmp_path, capsys)
    assert "eval.jsonl is empty" in err


def test_error_n_eval_above_the_data(tiny_model_dir, tmp_path, capsys):
    err = _cli_error(["--model", tiny_model_dir, "--task", "cb", "--n-eval", 500], tmp_path, capsys)
    assert "--n-eval 500 exceeds the 56 evaluation examples" in err


def test_error_model_path_that_does_not_exist(tmp_path, capsys):
    err = _cli_error(["--model", tmp_path / "no" / "such" / "model"], tmp_path, capsys)
    assert "no such folder" in err


def test_error_offline_name_typo_lists_the_known_names_without_the_network(tmp_path, capsys):
    err = _cli_error(["--model", "smollm2-135n"], tmp_path, capsys)
    assert "did you mean 'smollm2-135m'" in err and "gemma3-270m" in err


def test_error_truncated_weights_name_the_file(tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_model_dir.iterdir():
        data = file.read_bytes()
        (broken / file.name).write_bytes(data[: len(data) // 2] if file.suffix == ".safetensors" else data)
    err = _cli_error(["--model", broken], tmp_path, capsys)
    assert f"{broken / 'model.safetensors'} is truncated or corrupt" in err


def test_error_out_folder_not_empty_or_a_file_is_refused_before_any_work(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _cli_error(["--model", tiny_model_dir], tmp_path, capsys, out=out)
    assert "not empty" in err and (out / "keep.txt").read_text() == "mine"
    file = tmp_path / "file.txt"
    file.write_text("mine")
    # --overwrite does not make a file a folder; the model path is bogus, so this also shows nothing was loaded.
    err = _cli_error(["--model", tmp_path / "no-model", "--overwrite"], tmp_path, capsys, out=file)
    assert "is a file" in err and file.read_text() == "mine"


def test_error_label_word_missing_from_vocabulary_and_labels_out_of_range(tokenizer, tiny_llama):
    model = tiny_llama(len(tokenizer))
    data = TaskData(
        train=Dataset.from_list([{"text": "good", "label": 1}] * 4),
        eval=Dataset.from_list([{"text": "bad", "label": 0}]),
    )
    task = TaskSpec("spam", "Sentence: {text} Label:", ("Negative", "Zyzzyvaqq"))
    with pytest.raises(
        AnalysisInputError, match="label word 'Zyzzyvaqq' is missing from the tokenizer's vocabulary"
    ):
        analyze(model, tokenizer, AnalysisConfig(k=1, n_eval=1, lr=0.1, progress=False), task=task, data=data)
    bad = TaskData(train=data.train, eval=Dataset.from_list([{"text": "bad", "label": 5}]))
    with pytest.raises(AnalysisInputError, match=r"label\(s\) \[5\] in the eval split"):
        analyze(
            model, tokenizer, AnalysisConfig(task="sst2", k=1, n_eval=1, lr=0.1, progress=False), data=bad
        )


def test_error_model_without_attention(tokenizer):
    from transformers import AutoModelForCausalLM, MambaConfig

    model = AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1)
    )
    with pytest.raises(AnalysisInputError, match="No attention"):
        analyze(model, tokenizer, AnalysisConfig(k=1, n_eval=1, lr=0.1, progress=False))
