"""The pretraining recipe end to end on a 100 KB Gutenberg sample: tokenizer, packing, Trainer, resume, perplexity,
model cards, CLI. Everything is tiny so the file runs in well under a minute on one CPU core."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scipy import stats
from transformers import AutoModelForCausalLM, AutoTokenizer

import transformers_momentum  # noqa: F401  (registers MomentumGPT)
from transformers_momentum.hub import list_checkpoint_files
from transformers_momentum.pretraining import (
    PretrainArguments,
    iter_documents,
    mean_and_t_interval,
    pack_documents,
    perplexity_at_lengths,
    pretrain,
    token_stream,
    train_bpe_tokenizer,
)
from transformers_momentum.pretraining.card import (
    build_checkpoint_folders,
    checkpoint_name,
    human_count,
    verdict,
)

DATA = Path(__file__).parent / "data"
TRAIN, VALID = DATA / "corpus_sample.txt", DATA / "corpus_valid_sample.txt"


def tiny_args(output_dir: Path, **overrides) -> PretrainArguments:
    values = dict(
        train_files=[str(TRAIN)],
        validation_files=[str(VALID)],
        output_dir=str(output_dir),
        vocab_size=300,
        tokenizer_train_chars=40_000,
        block_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        momentum_eta=0.5,
        per_device_train_batch_size=4,
        max_steps=16,
        learning_rate=3e-3,
        eval_steps=8,
        save_steps=8,
        logging_steps=2,
        eval_blocks=8,
        eval_lengths=[16, 32, 64],
        num_threads=1,
        disable_tqdm=True,
    )
    values.update(overrides)
    return PretrainArguments(**values)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(list(iter_documents([TRAIN], 40_000)), vocab_size=300, model_max_length=32)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "eta0.5-seed0"
    return out, pretrain(tiny_args(out))


def test_reading_corpora_respects_the_character_budget(tmp_path):
    import lzma

    jsonl = tmp_path / "corpus.jsonl.xz"
    with lzma.open(jsonl, "wt", encoding="utf-8") as handle:
        for text in ("first book " * 10, "second book " * 10, "third"):
            handle.write(json.dumps({"title": "t", "text": text}) + "\n")
    docs = list(iter_documents([jsonl], max_chars=150))
    assert sum(len(d) for d in docs) == 150 and docs[0] == "first book " * 10 and len(docs) == 2
    assert list(iter_documents([jsonl]))[-1] == "third"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_documents([tmp_path / "missing.txt"]))


def test_byte_level_tokenizer_round_trips_and_is_a_fast_tokenizer(tokenizer, tmp_path):
    text = "Ça alors — “quoted” text, naïve 12345 \n\n tabs\tand ünïcödé"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: nothing is unknown
    assert len(tokenizer) == 300 and tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 0
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.is_fast and reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_packing_equals_slicing_the_token_stream(tokenizer):
    docs = list(iter_documents([TRAIN], 30_000)) + list(iter_documents([VALID], 20_000))
    blocks = pack_documents(docs, tokenizer, block_size=32)
    stream = token_stream(docs, tokenizer)
    flat = [token for block in blocks["input_ids"] for token in block]
    assert len(flat) == len(stream) - len(stream) % 32
    assert flat == stream[: len(flat)]
    assert blocks["labels"] == blocks["input_ids"]
    assert stream.count(tokenizer.eos_token_id) == len(docs)  # exactly one separator per document
    with pytest.raises(ValueError, match="fewer than block_size"):
        pack_documents(["tiny"], tokenizer, block_size=64)


def test_perplexity_matches_the_models_own_loss(tokenizer):
    from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM

    torch.manual_seed(0)
    model = MomentumGPTForCausalLM(
        MomentumGPTConfig(
            vocab_size=300,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).eval()
    stream = token_stream(list(iter_documents([VALID], 8_000)), tokenizer)
    result = perplexity_at_lengths(model, stream, [16, 32, 64], batch_size=3)
    assert result[64] is None  # beyond the 32-position table: not evaluated on untrained positions
    for length in (16, 32):
        windows = torch.tensor(stream[: len(stream) - len(stream) % 32]).view(-1, length)
        with torch.no_grad():  # equal-length windows: the mean of per-window mean losses is the token mean
            losses = [model(input_ids=w[None], labels=w[None]).loss for w in windows]
        assert result[length] == pytest.approx(math.exp(torch.stack(losses).mean().item()), rel=1e-5)


def test_t_interval_matches_scipy():
    values = [10.0, 11.0, 12.5, 9.5]
    mean, half = mean_and_t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert mean == pytest.approx(10.75) and half == pytest.approx((high - low) / 2, rel=1e-9)
    assert mean_and_t_interval([3.0]) == (3.0, 0.0)


def test_end_to_end_run_produces_a_loadable_checkpoint(trained_run):
    out, summary = trained_run
    history = summary["log_history"]
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert train_losses[-1] < train_losses[0] - 0.3  # it learns
    assert len(eval_losses) == 2 and all("eval_perplexity" in h for h in history if "eval_loss" in h)
    assert summary["train_tokens_seen"] == 16 * 4 * 32 and summary["parameters"]["total"] > 0
    ppl = summary["validation_perplexity"]
    assert ppl["64"] is None and 1 < ppl["32"] < ppl["16"] < 300  # better than uniform over 300 tokens
    # What a Hub repo needs, safetensors only (no pickled training_args.bin next to the weights).
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "loss_curve.png",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_momentum_gpt")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    reference = perplexity_at_lengths(model, token_stream(list(iter_documents([VALID], 600_000)), tok), [32])
    assert reference[32] == pytest.approx(ppl["32"], rel=1e-5)  # the saved weights are the evaluated ones
    generated = model.generate(**tok("The", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > 1


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(trained_run, tmp_path):
    reference_dir, _ = trained_run
    out = tmp_path / "resumed"
    pretrain(tiny_args(out))
    # Simulate a crash after step 8: drop the final weights and the last checkpoint, then resume.
    import shutil

    shutil.rmtree(out / "checkpoints" / "checkpoint-16")
    (out / "model.safetensors").unlink()
    summary = pretrain(tiny_args(out, resume_from_checkpoint="latest"))
    steps = [h["step"] for h in summary["log_history"] if "loss" in h]
    assert min(steps) <= 8 and summary["global_step"] == 16
    resumed, reference = load_file(out / "model.safetensors"), load_file(reference_dir / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        pretrain(tiny_args(tmp_path / "x", resume_from_checkpoint=str(tmp_path / "nope")))


def test_cli_pretrain(tmp_path, capsys):
    from transformers_momentum.cli import main

    out = tmp_path / "cli"
    code = main(
        ["pretrain", "--train-files", str(TRAIN), "--validation-files", str(VALID), "--output-dir", str(out)]
        + [
            "--vocab-size",
            "280",
            "--tokenizer-train-chars",
            "20000",
            "--block-size",
            "16",
            "--hidden-size",
            "16",
        ]
        + ["--num-hidden-layers", "1", "--num-attention-heads", "2", "--max-steps", "4", "--eval-steps", "2"]
        + [
            "--save-steps",
            "4",
            "--eval-blocks",
            "4",
            "--eval-lengths",
            "16",
            "--momentum-eta",
            "0",
            "--disable-tqdm",
        ]
    )
    assert code == 0
    assert "validation perplexity by length: 16:" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["momentum_eta"] == 0 and config["vocab_size"] == 280


def test_names_and_verdicts():
    assert (
        human_count(1_383_168) == "1.4M"
        and human_count(1_638_400) == "1.6M"
        and human_count(350_000_000) == "350M"
    )
    assert checkpoint_name(
        "momentum-gpt", {"parameters": {"total": 1_383_168}, "train_tokens_seen": 1_638_400}
    ) == ("momentum-gpt-1.4M-1.6M")
    assert verdict({"512": (-2.0, 1.0, 3)}, "512").startswith("Momentum helped")
    assert verdict({"512": (2.0, 1.0, 3)}, "512").startswith("Momentum hurt")
    assert verdict({"512": (0.5, 1.0, 3)}, "512").startswith("No significant difference")


def test_model_card_folders_from_matched_runs(tmp_path):
    runs = tmp_path / "runs"
    tok = train_bpe_tokenizer(list(iter_documents([TRAIN], 20_000)), vocab_size=280, model_max_length=16)
    tok.save_pretrained(runs / "tokenizer")
    small = dict(
        tokenizer=str(runs / "tokenizer"), block_size=16, hidden_size=16, num_hidden_layers=1, max_steps=4,
        eval_steps=2, save_steps=4, eval_blocks=4, eval_lengths=[8, 16, 32], max_train_chars=20_000,
    )  # fmt: skip
    for eta, seed in [(0.5, 0), (0.9, 0), (0.0, 0), (0.5, 1), (0.0, 1)]:
        pretrain(tiny_args(runs / f"eta{eta:g}-seed{seed}", momentum_eta=eta, seed=seed, **small))
    folders = build_checkpoint_folders(
        runs_dir=runs, momentum_eta=0.5, sweep_etas=[0.5, 0.9], seeds=2, cards_dir=tmp_path / "cards",
        dataset_description="gutenberg-sample", command="pytest",
    )  # fmt: skip
    from huggingface_hub import ModelCard

    momentum_dir, vanilla_dir = folders
    assert momentum_dir.name.startswith("momentum-gpt-") and vanilla_dir.name.startswith("vanilla-gpt-")
    assert momentum_dir.name.split("-", 2)[2] == vanilla_dir.name.split("-", 2)[2]  # same size and tokens
    for folder in folders:
        list_checkpoint_files(folder)  # publishable (raises otherwise)
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
        metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
        assert set(metrics) == {"Perplexity (input length 8)", "Perplexity (input length 16)"}
        for heading in (
            "## Install and use",
            "### Seeds",
            "### eta sweep",
            "## Training details",
            "## Limitations",
        ):
            assert heading in card.text
        assert "n/a (beyond the position table)" in card.text  # length 32 > 16 positions
        assert (folder / "loss_curve.png").stat().st_size > 1000
        # The card's usage snippet, on the local folder.
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        out = model.generate(**tok("It was", return_tensors="pt"), max_new_tokens=4)
        assert out.shape[1] > 1
    assert card.data.to_dict()["twin_model"].endswith(momentum_dir.name)
    results = json.loads((momentum_dir / "results.json").read_text())
    assert set(results["validation_perplexity"]["momentum"]) == {"0", "1"}
    assert json.loads((momentum_dir / "config.json").read_text())["momentum_eta"] == 0.5
    assert json.loads((vanilla_dir / "config.json").read_text())["momentum_eta"] == 0


def test_icl_accuracy_follows_the_label_log_probabilities(tokenizer):
    from types import SimpleNamespace

    from transformers_momentum.analysis import PromptLayout, get_task, load_task_data
    from transformers_momentum.pretraining.icl_eval import icl_accuracy

    task = get_task("sst2")
    layout = PromptLayout(tokenizer, task)
    favoured = set(layout.label_ids[1]) - set(layout.label_ids[0])
    assert favoured, "the two label words must differ in at least one token"

    class PrefersLabelOne(torch.nn.Module):
        """Every position puts its mass on label 1's tokens: the prediction must always be class 1."""

        config = SimpleNamespace(max_position_embeddings=200)

        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            logits[..., sorted(set(layout.label_ids[1]))] = 20.0
            assert input_ids.shape[1] <= 200  # demos are dropped rather than overflowing the position table
            return SimpleNamespace(logits=logits)

    result = icl_accuracy(PrefersLabelOne(), tokenizer, "sst2", k=4, n_eval=12, seeds=(1, 2))
    labels = [int(r["label"]) for r in load_task_data(task).eval.shuffle(seed=1).select(range(12))]
    share_of_ones = labels.count(1) / 12
    assert result["zero_shot"] == pytest.approx(share_of_ones)
    assert result["icl_per_seed"] == {1: pytest.approx(share_of_ones), 2: pytest.approx(share_of_ones)}
    assert result["demos_dropped"] > 0 and result["chance"] == 0.5 and result["n_eval"] == 12
