"""The pretraining recipe end to end on a 100 KB Gutenberg sample: tokenizer, packing, Trainer, resume, perplexity,
seed statistics, model cards, CLI. Everything is tiny so the file runs in well under a minute on one CPU core.

Cards render from a recorded run summary (``tests/data/shipped_checkpoint_runs.json``, the shipped checkpoints'
runs) rather than from runs trained here; one real tiny run checks that real summaries hold what cards read.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import CORPUS_SAMPLE as TRAIN
from conftest import CORPUS_VALID_SAMPLE as VALID
from conftest import DATA
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import transformers_momentum  # noqa: F401  (registers MomentumGPT)
from transformers_momentum.pretraining import (
    DataArguments,
    ModelArguments,
    iter_documents,
    pack_documents,
    perplexity_at_lengths,
    pretrain,
    recipe_training_arguments,
    render_card,
    seed_interval,
    token_stream,
)
from transformers_momentum.pretraining.card import (
    Interval,
    checkpoint_name,
    human_count,
    remote_code_requirement,
    verdict,
)

RECORDED_RUNS = DATA / "shipped_checkpoint_runs.json"


def tiny_run(output_dir: Path, *, momentum_eta: float = 0.5, data: dict | None = None, **training):
    """The three argument objects of a tiny run (2 layers of width 32, 32-token blocks, 16 steps)."""
    model_args = ModelArguments(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, momentum_eta=momentum_eta
    )
    data_args = DataArguments(
        train_files=[str(TRAIN)], validation_files=[str(VALID)], vocab_size=300, tokenizer_train_chars=40_000,
        block_size=32, eval_blocks=8, eval_lengths=[16, 32, 64], dataset_description="a Gutenberg sample",
        **(data or {}),
    )  # fmt: skip
    training_args = recipe_training_arguments(
        str(output_dir), per_device_train_batch_size=4, max_steps=16, learning_rate=3e-3, eval_steps=8,
        save_steps=8, logging_steps=2, disable_tqdm=True, **training,
    )  # fmt: skip
    return model_args, data_args, training_args


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "eta0.5-seed0"
    return out, pretrain(*tiny_run(out))


@pytest.fixture(scope="module")
def recorded_runs() -> dict:
    """The shipped checkpoints' run summaries, with the sweep keyed by eta."""
    record = json.loads(RECORDED_RUNS.read_text())
    record["sweep"] = {float(eta): run for eta, run in record["sweep"].items()}
    return record


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


def test_byte_level_tokenizer_round_trips_and_is_a_fast_tokenizer(corpus_tokenizer, tmp_path):
    text = "Ça alors — “quoted” text, naïve 12345 \n\n tabs\tand ünïcödé"
    assert (
        corpus_tokenizer.decode(corpus_tokenizer(text)["input_ids"]) == text
    )  # byte-level: nothing is unknown
    assert (
        len(corpus_tokenizer) == 300
        and corpus_tokenizer.eos_token_id == 0
        and corpus_tokenizer.pad_token_id == 0
    )
    corpus_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.is_fast and reloaded(text)["input_ids"] == corpus_tokenizer(text)["input_ids"]


def test_packing_equals_slicing_the_token_stream(corpus_tokenizer):
    docs = list(iter_documents([TRAIN], 30_000)) + list(iter_documents([VALID], 20_000))
    blocks = pack_documents(docs, corpus_tokenizer, block_size=32)
    stream = token_stream(docs, corpus_tokenizer)
    flat = [token for block in blocks["input_ids"] for token in block]
    assert len(flat) == len(stream) - len(stream) % 32
    assert flat == stream[: len(flat)]
    assert blocks["labels"] == blocks["input_ids"]
    assert stream.count(corpus_tokenizer.eos_token_id) == len(docs)  # exactly one separator per document
    with pytest.raises(ValueError, match="fewer than block_size"):
        pack_documents(["tiny"], corpus_tokenizer, block_size=64)


def test_perplexity_matches_the_models_own_loss(corpus_tokenizer, tiny_momentum_gpt):
    model = tiny_momentum_gpt(
        vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    stream = token_stream(list(iter_documents([VALID], 8_000)), corpus_tokenizer)
    result = perplexity_at_lengths(model, stream, [16, 32, 64], batch_size=3)
    assert result[64] is None  # beyond the 32-position table: not evaluated on untrained positions
    for length in (16, 32):
        windows = torch.tensor(stream[: len(stream) - len(stream) % 32]).view(-1, length)
        with torch.no_grad():  # equal-length windows: the mean of per-window mean losses is the token mean
            losses = [model(input_ids=w[None], labels=w[None]).loss for w in windows]
        assert result[length] == pytest.approx(math.exp(torch.stack(losses).mean().item()), rel=1e-5)


def test_seed_intervals_match_the_hand_computed_t_interval():
    # mean 10.75, sample sd sqrt(1.75), t(0.975, 3 df) = 3.182446305284263 (tables): half = t * sd / sqrt(4)
    interval = seed_interval([10.0, 11.0, 12.5, 9.5])
    assert interval.mean == pytest.approx(10.75) and interval.n == 4
    assert interval.half_width == pytest.approx(3.182446305284263 * math.sqrt(1.75) / 2, rel=1e-12)
    # Paired by seed: the interval of the per-seed differences (-6, -2, -17). With 2 df the t CDF is closed-form,
    # F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t(0.975) solves t / sqrt(2 + t^2) = 0.95.
    paired = seed_interval([170.0, 190.0, 156.0], paired_with=[176.0, 192.0, 173.0])
    differences = [-6.0, -2.0, -17.0]
    sd = math.sqrt(sum((d + 25 / 3) ** 2 for d in differences) / 2)
    t_2df = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))
    assert paired.mean == pytest.approx(-25 / 3)
    assert paired.half_width == pytest.approx(t_2df * sd / math.sqrt(3), rel=1e-12)
    single = seed_interval([3.0])
    assert (
        single.mean == 3.0
        and single.n == 1
        and math.isnan(single.half_width)
        and str(single) == "3.00 (1 seed)"
    )
    assert seed_interval([55.0, 55.0, 55.0]) == Interval(55.0, 55.0, 55.0, 3)  # no spread, no warning


def test_end_to_end_run_produces_a_loadable_checkpoint(trained_run):
    out, summary = trained_run
    history = summary["log_history"]
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert train_losses[-1] < train_losses[0] - 0.3  # it learns
    assert len(eval_losses) == 2 and all("eval_perplexity" in h for h in history if "eval_loss" in h)
    assert (
        summary["train_tokens_seen"] == 16 * 4 * 32 and summary["warmup_steps"] == 2
    )  # 10% of 16, rounded up
    # Parameters counted independently: tied lm_head once; Kaplan et al.'s non-embedding count excludes wte and wpe.
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    unique = {id(p): p.numel() for p in model.parameters()}
    embeddings = model.model.embed_tokens.weight.numel() + model.model.embed_positions.weight.numel()
    assert summary["parameters"] == {
        "total": sum(unique.values()),
        "non_embedding": sum(unique.values()) - embeddings,
    }
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
    assert {"checkpoint-8", "checkpoint-16"} <= names  # the Trainer's resume state, beside the final weights
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not a 0700 temporary one
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_momentum_gpt")
    # Token ids only: no sampling or length setting that would override what a caller asks generate() for.
    generation = json.loads((out / "generation_config.json").read_text())
    assert not {"do_sample", "top_k", "top_p", "temperature", "max_new_tokens", "max_length"} & set(
        generation
    )
    tok = AutoTokenizer.from_pretrained(out)
    reference = perplexity_at_lengths(model, token_stream(list(iter_documents([VALID], 600_000)), tok), [32])
    assert reference[32] == pytest.approx(ppl["32"], rel=1e-5)  # the saved weights are the evaluated ones
    generated = model.generate(**tok("The", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > 1


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(trained_run, tmp_path):
    reference_dir, _ = trained_run
    out = tmp_path / "resumed"
    pretrain(*tiny_run(out))
    # Simulate a crash after step 8: drop the final weights and the last checkpoint, then resume.
    shutil.rmtree(out / "checkpoint-16")
    (out / "model.safetensors").unlink()
    summary = pretrain(*tiny_run(out, resume_from_checkpoint="latest"))
    steps = [h["step"] for h in summary["log_history"] if "loss" in h]
    assert min(steps) <= 8 and summary["global_step"] == 16
    resumed, reference = load_file(out / "model.safetensors"), load_file(reference_dir / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        pretrain(*tiny_run(tmp_path / "x", resume_from_checkpoint=str(tmp_path / "nope")))


def test_cli_pretrain_takes_every_training_argument(tmp_path, capsys):
    from transformers_momentum.cli import main

    out = tmp_path / "cli"
    code = main(
        ["pretrain", "--train_files", str(TRAIN), "--validation-files", str(VALID), "--output_dir", str(out)]
        + [
            "--vocab_size",
            "280",
            "--tokenizer_train_chars",
            "20000",
            "--block_size",
            "16",
            "--hidden_size",
            "16",
        ]
        + ["--num_hidden_layers", "1", "--num_attention_heads", "2", "--max_steps", "4", "--eval_steps", "2"]
        + [
            "--save_steps",
            "4",
            "--eval_blocks",
            "4",
            "--per_device_eval_batch_size",
            "2",
            "--eval_lengths",
            "16",
        ]
        + ["--momentum_eta", "0", "--learning_rate", "1e-3", "--adam_beta2", "0.95", "--disable_tqdm", "true"]
    )
    assert code == 0
    assert "validation perplexity by length: 16:" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["momentum_eta"] == 0 and config["vocab_size"] == 280
    training = json.loads((out / "training_summary.json").read_text())["training_arguments"]
    # Flags given win; the recipe's defaults fill the rest (polynomial schedule, eps 1e-6, 10% warm-up).
    assert (training["learning_rate"], training["adam_beta2"], training["adam_epsilon"]) == (1e-3, 0.95, 1e-6)
    assert training["lr_scheduler_type"] == "polynomial" and training["warmup_steps"] == 0.1

    assert (
        main(
            [
                "pretrain",
                "--train_files",
                str(TRAIN),
                "--validation_files",
                str(VALID),
                "--momentum_eta",
                "1.5",
            ]
        )
        == 2
    )
    assert "momentum_eta must be in [0, 1)" in capsys.readouterr().err
    assert (
        main(
            ["pretrain", "--train_files", str(TRAIN), "--validation_files", str(VALID), "--no_such_flag", "1"]
        )
        == 2
    )
    assert "--no_such_flag" in capsys.readouterr().err


def test_names_and_verdicts():
    assert (human_count(1_383_168), human_count(1_638_400), human_count(350_000_000)) == (
        "1.4M",
        "1.6M",
        "350M",
    )
    assert checkpoint_name(
        "momentum-gpt", {"parameters": {"total": 1_383_168}, "train_tokens_seen": 1_638_400}
    ) == ("momentum-gpt-1.4M-1.6M")
    assert verdict(Interval(-2.0, -3.0, -1.0, 3), "512").startswith("Momentum helped")
    assert verdict(Interval(2.0, 1.0, 3.0, 3), "512").startswith("Momentum hurt")
    assert verdict(Interval(0.5, -0.5, 1.5, 3), "512").startswith("No significant difference")
    assert verdict(Interval(0.5, math.nan, math.nan, 1), "512").startswith("Only 1 paired seed")


def test_the_remote_code_requirement_follows_the_package_range():
    from transformers_momentum.compat import NEWEST_TESTED

    newest = ".".join(NEWEST_TESTED.split(".")[:2])
    assert remote_code_requirement("transformers>=5.23") == (
        f"transformers >= 5.23 (CI tests it on 5.23 and on {newest}, the newest tested release)"
    )
    assert remote_code_requirement("transformers>=5.23,<5.25") == (
        "transformers >= 5.23 (CI tests it on 5.23 and on 5.24, the newest tested release)"
    )
    assert remote_code_requirement("transformers") is None


def _render(record: dict, arm: str = "momentum", namespace: str = "transformers-momentum"):
    names = {"momentum": "momentum-gpt-1.4M-1.6M", "vanilla": "vanilla-gpt-1.4M-1.6M"}
    twin = names["vanilla" if arm == "momentum" else "momentum"]
    return render_card(
        record["arms"], own_arm=arm, repo_id=f"{namespace}/{names[arm]}", twin_repo_id=f"{namespace}/{twin}",
        sweep=record["sweep"], license=record["license"], command=record["command"], icl_results=record["icl"],
        transformers_requirement="transformers>=5.23,<5.25",
    )  # fmt: skip


def test_card_states_what_the_run_summaries_say(recorded_runs):
    from huggingface_hub import ModelCard

    card = ModelCard(str(_render(recorded_runs)))  # through the Hub's own parser
    published = recorded_runs["arms"]["momentum"][0]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.language == "en" and card.data.datasets == ["gutenberg_rcdm-uga"]
    metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert metrics == {
        f"Perplexity (input length {length})": round(value, 3)
        for length, value in published["validation_perplexity"].items()
        if value is not None
    }
    for heading in (
        "## Install and use",
        "### Seeds",
        "### eta sweep",
        "## Training details",
        "## Limitations",
    ):
        assert heading in card.text
    assert "n/a (beyond the position table)" in card.text  # length 1024 > 512 positions
    assert "| Parameters | 1,383,168 (793,344 non-embedding) |" in card.text
    assert "1 process x 1 torch thread on cpu (2-core machine)" in card.text
    assert "95% CI -27.61 to +10.18, 3 seeds" in card.text  # the paired interval of the shipped runs

    # Another run elsewhere: the hardware and corpus text follow its summary, the links follow the repo ids.
    elsewhere = copy.deepcopy(recorded_runs)
    for run in elsewhere["arms"]["momentum"] + elsewhere["arms"]["vanilla"]:
        run["environment"].update(
            device="cuda", device_name="NVIDIA H100", processes=8, torch_threads=4, cpu_count=64
        )
        run["data_arguments"].update(dataset_name="my-corpus", dataset_description="news articles from 2020")
        run["train_seconds"] = 100.0
    elsewhere["command"] = "python train.py"
    text = _render(elsewhere, arm="vanilla", namespace="someone-else").text
    assert "8 processes x 4 torch threads on NVIDIA H100 (64-core machine)" in text
    assert "news articles from 2020" in text and "`my-corpus`" in text
    assert "Gutenberg" not in text and "CPU thread" not in text and "shared" not in text
    assert "transformers-momentum/" not in text  # no link into the shipped checkpoints' organization
    assert (
        "[`someone-else/momentum-gpt-1.4M-1.6M`](https://huggingface.co/someone-else/momentum-gpt-1.4M-1.6M)"
        in text
    )
    assert 'from_pretrained("someone-else/vanilla-gpt-1.4M-1.6M")' in text


def test_a_real_run_summary_holds_everything_the_card_reads(trained_run, recorded_runs):
    _, summary = trained_run

    def assert_keys_within(recorded, real, where="summary"):
        for key, value in recorded.items():
            assert key in real, f"{where}.{key} is in the recorded summary but not in a real one"
            if (
                isinstance(value, dict) and value and key != "validation_perplexity"
            ):  # keyed by the run's lengths
                assert_keys_within(value, real[key], f"{where}.{key}")

    assert_keys_within(recorded_runs["arms"]["momentum"][0], summary)
    vanilla = copy.deepcopy(summary)
    vanilla["model_config"]["momentum_eta"] = 0.0
    card = render_card(
        {"momentum": [summary], "vanilla": [vanilla]}, own_arm="momentum", repo_id="me/m", twin_repo_id="me/v"
    )
    assert "Only 1 paired seed" in card.text and "a Gutenberg sample" in card.text
    assert f"({summary['environment']['cpu_count']}-core machine)" in card.text


@pytest.mark.slow
def test_matched_programme_writes_publishable_twin_folders(tmp_path, monkeypatch):
    """examples/pretrain_momentum_gpt.py end to end at toy size: tokenizer, sweep (eta 0.5 and 0), cards."""
    import importlib.util
    import lzma

    from transformers_momentum.hub import list_checkpoint_files

    corpus = tmp_path / "toy-corpus"
    corpus.mkdir()
    for split, source in (("train", TRAIN), ("valid", VALID)):
        paragraphs = [p for p in source.read_text().split("\n\n") if p.strip()]
        with lzma.open(corpus / f"{split}.jsonl.xz", "wt", encoding="utf-8") as handle:
            for start in range(0, len(paragraphs), 20):
                handle.write(json.dumps({"text": "\n\n".join(paragraphs[start : start + 20])}) + "\n")
    path = Path(__file__).resolve().parent.parent / "examples" / "pretrain_momentum_gpt.py"
    spec = importlib.util.spec_from_file_location("pretrain_momentum_gpt", path)
    programme = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, programme)  # dataclasses look their module up there
    spec.loader.exec_module(programme)
    assert (
        programme.main(
            [
                "--corpus",
                str(corpus),
                "--runs_dir",
                str(tmp_path / "runs"),
                "--cards_dir",
                str(tmp_path / "cards"),
            ]
            + [
                "--stages",
                "tokenizer",
                "sweep",
                "cards",
                "--sweep_etas",
                "0.5",
                "--seeds",
                "1",
                "--vocab_size",
                "300",
            ]
            + [
                "--tokenizer_train_chars",
                "30000",
                "--max_train_chars",
                "30000",
                "--max_validation_chars",
                "10000",
            ]
            + [
                "--block_size",
                "32",
                "--hidden_size",
                "16",
                "--num_layers",
                "1",
                "--num_heads",
                "2",
                "--max_steps",
                "4",
            ]
            + ["--dataset_description", "a toy corpus", "--hub_namespace", "someone"]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "eta0-seed0",
        "eta0.5-seed0",
        "tokenizer",
    ]
    momentum, vanilla = sorted((tmp_path / "cards").iterdir())
    assert momentum.name.startswith("momentum-gpt-") and vanilla.name == momentum.name.replace(
        "momentum", "vanilla"
    )
    for folder in (momentum, vanilla):
        list_checkpoint_files(folder)  # publishable: required files, whole safetensors, no pickles
    card = (momentum / "README.md").read_text()
    assert (
        f"[`someone/{vanilla.name}`](https://huggingface.co/someone/{vanilla.name})" in card
        and "a toy corpus" in card
    )
    assert json.loads((vanilla / "config.json").read_text())["momentum_eta"] == 0


def test_icl_accuracy_follows_the_label_log_probabilities(corpus_tokenizer):
    tokenizer = corpus_tokenizer
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

        def forward(self, input_ids, **kwargs):  # the ICL scorer also passes masks and cache arguments
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            logits[..., sorted(set(layout.label_ids[1]))] = 20.0
            assert input_ids.shape[1] <= 200  # demos are dropped rather than overflowing the position table
            return SimpleNamespace(
                logits=logits, cache=None, past_key_values=None
            )  # no cache: contexts re-run

    result = icl_accuracy(PrefersLabelOne(), tokenizer, "sst2", k=4, n_eval=12, seeds=(1, 2))
    labels = [int(r["label"]) for r in load_task_data(task).eval.shuffle(seed=1).select(range(12))]
    share_of_ones = labels.count(1) / 12
    assert result["zero_shot"] == pytest.approx(share_of_ones)
    assert result["icl_per_seed"] == {1: pytest.approx(share_of_ones), 2: pytest.approx(share_of_ones)}
    assert result["demos_dropped"] > 0 and result["chance"] == 0.5 and result["n_eval"] == 12
