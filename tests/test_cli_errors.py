"""Every failure is one line: every flag of every sub-command, given invalid values, ends in exit code 2, at most two
lines on stderr, no traceback, and nothing written -- before any model loads or trains.

The table is walked from the parsers themselves: each sub-command's value-taking flags (and positionals) must have
at least one invalid case below, so a flag added without one fails `test_every_flag_has_an_invalid_case`. Flags
that take a number, a choice or a boolean also get a wrong-type case generated from the parser. `TrainingArguments`'
own free-text flags (names, ids, JSON strings) are the one exemption: transformers owns them and there is no value
the plugin could call invalid.

Cases run in-process through `transformers_momentum.cli.main`, with the entry points that load a model, train or
export replaced by a function that fails the test: a case that reaches one was validated too late.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest

from transformers_momentum.cli import CommaSeparatedList, build_parser, main

# ------------------------------------------------------------------------------------------------ the table

# Placeholders, filled in by `places`: {file} a regular file, {under_file} a path below it (no folder can be made
# there: the "unwritable" case that works for root too), {missing} a path that does not exist, {empty_dir} an empty
# folder, {out} a fresh output path whose parent does not exist either, {model} / {gpt2} folders holding only a
# Llama / GPT-2 config.json (never loaded), {corpus} a text file, {checkpoint} a publishable folder.
BASE = {
    "analyze": ["analyze", "--model", "{model}", "--out", "{out}", "--device", "cpu", "--quiet"],
    "icl-lab": ["icl-lab", "--out", "{out}", "--no-progress"],
    "pretrain": [
        "pretrain",
        "--train_files",
        "{corpus}",
        "--validation_files",
        "{corpus}",
        "--output_dir",
        "{out}",
    ],
    "publish": ["publish", "--repo-id", "tester/model", "--dry-run"],  # + the folder, given by every case
    "convert-gpt2": ["convert-gpt2", "--model", "{gpt2}", "--out", "{out}"],
}


def _values(flag: str, *values: str) -> list[list[str]]:
    return [[flag, value] for value in values]


CASES: dict[str, dict[str, list[list[str]]]] = {
    "analyze": {
        "model": _values("--model", "{missing}", "{file}", "{empty_dir}", "smollm2-135n"),
        "dtype": _values("--dtype", "float64", "int8"),
        "device": _values("--device", "gpu", "cuda:99", "meta"),
        "device_map": _values("--device-map", "everywhere", "cuda:99"),
        "max_memory": _values("--max-memory", "0=lots", "cpu", "gpu=1GiB"),
        "offload_folder": _values("--offload-folder", "{file}", "{under_file}"),
        "autocast": _values("--autocast", "perhaps"),
        "attn_implementation": _values("--attn-implementation", "fastest"),
        "threads": _values("--threads", "-1", "0"),
        "task": _values("--task", "imdb"),
        "k": _values("--k", "0", "-3"),
        "n_eval": _values("--n-eval", "0", "100000"),
        "seeds": _values("--seeds", "1,x", "-1", ","),
        "lr": _values("--lr", "-1", "nan", "inf"),
        "lr_grid": _values("--lr-grid", "-1", "0.1,-1", "nan"),
        "n_tune": _values("--n-tune", "-1"),
        "paper_protocol": _values("--paper-protocol", "perhaps"),
        "select_seed": _values("--select-seed", "perhaps"),
        "analysis_position": _values("--analysis-position", "middle"),
        "separator": _values("--separator", "tab"),
        "start_token": _values("--start-token", "", " "),
        "newline": _values("--newline", "drop"),
        "max_length": _values("--max-length", "0"),
        "allow_fewer_demos": _values("--allow-fewer-demos", "perhaps"),
        "kendall_n": _values("--kendall-n", "-1"),
        "topk": _values("--topk", "0"),
        "controls": _values("--controls", "untrained,nonsense", "everything"),
        "other_task": [["--other-task", "imdb"], ["--task", "sst2", "--other-task", "sst2"]],
        "order_permutations": _values("--order-permutations", "0"),
        "output_topk": _values("--output-topk", "0"),
        "batch_size": _values("--batch-size", "0"),
        "save_records": _values("--save-records", "perhaps"),
        "data_dir": _values("--data-dir", "{missing}", "{file}", "{empty_dir}"),
        "hub": _values("--hub", "perhaps"),  # an unreachable Hub: test_analyze_unreachable_hub_is_one_line
        "n_resamples": _values("--n-resamples", "0"),
        "bootstrap_seed": _values("--bootstrap-seed", "-1"),
        "progress": _values("--progress", "perhaps"),
        "out": _values("--out", "{file}", "{under_file}", "{busy}", ""),
        "overwrite": _values("--overwrite", "perhaps"),
        "plots": _values("--plots", "perhaps"),
        "quiet": _values("--quiet", "perhaps"),
    },
    "icl-lab": {
        "task": _values("--task", "sorting"),
        "etas": _values("--etas", "0,1.5", "0,fast", "0,0", "-0.5", ","),
        "seeds": _values("--seeds", "1,x", "1,1", "-1", "4294967296"),
        "steps": _values("--steps", "0", "-1"),
        "out": _values("--out", "{file}", "{under_file}", ""),
        "n_dims": _values("--n-dims", "0"),
        "max_examples": _values("--max-examples", "0"),
        "noise_std": _values("--noise-std", "-1", "nan"),
        "x_distribution": _values("--x-distribution", "cauchy"),
        "vocab_size": [["--vocab-size", "2"], ["--task", "mqar", "--vocab-size", "8", "--max-kv-pairs", "8"]],
        "max_kv_pairs": [["--task", "mqar", "--max-kv-pairs", "0"], ["--max-kv-pairs", "-2"]],
        "num_layers": _values("--num-layers", "0"),
        "hidden_size": _values("--hidden-size", "0", "30"),  # 30 is not divisible by the 4 heads
        "num_heads": _values("--num-heads", "0", "-4"),
        "batch_size": _values("--batch-size", "0"),
        "learning_rate": _values("--learning-rate", "-1", "0", "inf"),
        "warmup_ratio": _values("--warmup-ratio", "5", "-0.1"),
        "learnable_eta_init": _values("--learnable-eta-init", "0", "1", "1.5"),
        "lsa_steps": _values("--lsa-steps", "-1"),
        "lsa_learning_rate": _values("--lsa-learning-rate", "0", "-0.01"),
        "lsa_n_dims": _values("--lsa-n-dims", "0"),
        "lsa_context": _values("--lsa-context", "0"),
        "n_eval": _values("--n-eval", "0"),
        "n_tune": _values("--n-tune", "0"),
        "n_align": _values("--n-align", "0"),
        "n_probe": _values("--n-probe", "0"),
        "learner_steps": _values("--learner-steps", "-1"),
        "threads": _values("--threads", "0", "-2"),
        "cards_dir": [
            ["--cards-dir", "{file}"],
            ["--cards-dir", "{under_file}"],
            ["--cards-dir", "{cards}", "--etas", "0"],  # no momentum arm to export
            ["--cards-dir", "{cards}", "--etas", "0.5,learnable"],  # no eta = 0 twin
        ],
        "progress": _values("--progress", "perhaps"),
        "learning_rates": _values("--learning-rates", "-1", "1e-3,0", "nan", "1e-3,1e-3"),
        "sweep_seed": _values("--sweep-seed", "-1", "4294967296"),
        "anchor_every": _values("--anchor-every", "-1"),
        "n_gate": _values("--n-gate", "0"),
        "drift_std": [
            ["--drift-std", "-0.1"],
            ["--drift-std", "nan"],
            ["--task", "mqar", "--drift-std", "0.1"],
        ],
        "mqar_reassign": [["--mqar-reassign", "perhaps"], ["--mqar-reassign"]],  # the latter: not --task mqar
        "ood": _values("--ood", "perhaps"),
        "ood_extra_examples": _values("--ood-extra-examples", "-1"),
        "n_ood": _values("--n-ood", "0"),
        "curriculum": [["--curriculum", "perhaps"], ["--task", "mqar", "--curriculum"]],
        "curriculum_start_dims": _values("--curriculum-start-dims", "0"),
        "curriculum_start_examples": _values("--curriculum-start-examples", "0"),
        "curriculum_interval": _values("--curriculum-interval", "-1"),
        "margin_relative": _values("--margin-relative", "0", "-0.05", "1.5", "nan"),
        "margin_absolute": _values("--margin-absolute", "0", "-1", "inf"),
        "divergence_factor": _values("--divergence-factor", "1", "0.5", "nan"),
        "device": _values("--device", "gpu", "cuda:99", "cuda:x", "meta"),
    },
    "pretrain": {
        # the recipe's ModelArguments
        "hidden_size": _values("--hidden_size", "0"),
        "num_hidden_layers": _values("--num_hidden_layers", "0"),
        "num_attention_heads": [
            ["--num_attention_heads", "0"],
            ["--hidden_size", "10", "--num_attention_heads", "3"],
        ],
        "intermediate_size": _values("--intermediate_size", "0"),
        "momentum_eta": _values("--momentum_eta", "1.5", "-0.1", "1"),
        "learnable_eta": [["--learnable_eta", "perhaps"], ["--learnable_eta", "--momentum_eta", "0"]],
        "dropout": _values("--dropout", "1", "-0.1"),
        # DataArguments
        "train_files": _values("--train_files", "{missing}", "{empty_dir}"),
        "validation_files": _values("--validation_files", "{missing}", "{empty_dir}"),
        "dataset_name": _values("--dataset_name", "", "  "),
        "dataset_description": _values("--dataset_description", ""),
        "language": _values("--language", "English", "e"),
        "tokenizer": _values("--tokenizer", "{missing}", "{file}"),
        "vocab_size": _values("--vocab_size", "100", "0"),
        "tokenizer_train_chars": _values("--tokenizer_train_chars", "0"),
        "max_train_chars": _values("--max_train_chars", "0"),
        "max_validation_chars": _values("--max_validation_chars", "-1"),
        "block_size": _values("--block_size", "1"),
        "eval_blocks": _values("--eval_blocks", "0"),
        "eval_lengths": _values("--eval_lengths", "0", "16,x", "-16"),
        # TrainingArguments the recipe relies on, which transformers accepts without a word
        "output_dir": _values("--output_dir", "{file}", "{under_file}"),
        "resume_from_checkpoint": _values("--resume_from_checkpoint", "{missing}", "{file}"),
        "learning_rate": _values("--learning_rate", "-1", "nan"),
        "per_device_train_batch_size": _values("--per_device_train_batch_size", "0"),
        "per_device_eval_batch_size": _values("--per_device_eval_batch_size", "0"),
        "gradient_accumulation_steps": _values("--gradient_accumulation_steps", "0"),
        "max_steps": _values("--max_steps", "0", "-5"),
        "num_train_epochs": [["--max_steps", "-1", "--num_train_epochs", "0"]],
        "warmup_steps": _values("--warmup_steps", "-1"),
        "weight_decay": _values("--weight_decay", "-1"),
        "adam_beta1": _values("--adam_beta1", "1.5"),
        "adam_beta2": _values("--adam_beta2", "-0.1", "1"),
        "adam_epsilon": _values("--adam_epsilon", "-1"),
        "label_smoothing_factor": _values("--label_smoothing_factor", "1.5"),
        "eval_steps": _values("--eval_steps", "-1"),  # 0 means "as logging_steps" to transformers
        "save_steps": _values("--save_steps", "0"),
        "logging_steps": _values("--logging_steps", "0"),
        "eval_accumulation_steps": _values("--eval_accumulation_steps", "0"),
        "save_total_limit": _values("--save_total_limit", "0"),
        "seed": _values("--seed", "-1"),
        "data_seed": _values("--data_seed", "-1"),
        "dataloader_num_workers": _values("--dataloader_num_workers", "-1"),
        "report_to": _values("--report_to", "nowhere"),
        "lr_scheduler_kwargs": _values("--lr_scheduler_kwargs", "{{not json"),
        "fsdp": _values("--fsdp", "sideways"),
    },
    "publish": {
        "folder": [["{missing}"], ["{file}"], ["{empty_dir}"]],
        "repo_id": [["{checkpoint}", "--repo-id", "no-owner"], ["{checkpoint}", "--repo-id", "a/b/c"]],
        "revision": [["{checkpoint}", "--revision", "a..b"], ["{checkpoint}", "--revision", ""]],
        "commit_message": [["{checkpoint}", "--commit-message", ""]],
        "token": [["{checkpoint}", "--token", " "]],
        "endpoint": [
            ["{checkpoint}", "--endpoint", "huggingface.co"],
            ["{checkpoint}", "--endpoint", "ftp://x"],
        ],
        "max_attempts": [["{checkpoint}", "--max-attempts", value] for value in ("0", "-5", "two")],
    },
    "convert-gpt2": {
        "model": _values("--model", "{missing}", "{file}", "{empty_dir}", "{model}", "not..a-hub-id"),
        "eta": _values("--eta", "1.5", "-0.1", "1", "nan", "fast"),
        "out": _values("--out", "{file}", "{under_file}", ""),
    },
}


# ------------------------------------------------------------------------------------------------ the parsers


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    """Each sub-command's parser; ``pretrain`` builds its own `HfArgumentParser` when it runs."""
    from transformers_momentum.pretraining.cli import build_parser as build_pretrain_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {**commands, "pretrain": build_pretrain_parser()}


def _value_taking(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action of every flag or positional that takes a value (not --help, not store_true switches)."""
    return {
        action.dest: action
        for action in parser._actions
        if action.nargs != 0 and not isinstance(action, argparse._SubParsersAction)
    }


def _wrong_type_value(action: argparse.Action) -> str | None:
    """A value of the wrong type for a flag that takes a number, a choice or a boolean (else None)."""
    if action.choices:
        return "not-a-choice"
    item_type = action.item_type if isinstance(action, CommaSeparatedList) else action.type
    if item_type in (int, float):
        return "not-a-number"
    if getattr(item_type, "__name__", "") == "string_to_bool":
        return "perhaps"
    return None


def _training_argument_names() -> set[str]:
    from transformers import TrainingArguments

    return {field.name for field in dataclasses.fields(TrainingArguments)}


def _all_cases() -> list[tuple[str, str, list[str]]]:
    cases = [
        (command, dest, argv)
        for command, table in CASES.items()
        for dest, lists in table.items()
        for argv in lists
    ]
    for command, parser in _subparsers().items():
        for dest, action in _value_taking(parser).items():
            value = _wrong_type_value(action)
            if value is not None and action.option_strings:
                prefix = ["{checkpoint}"] if command == "publish" else []
                cases.append((command, f"{dest}(type)", [*prefix, action.option_strings[0], value]))
    return cases


ALL_CASES = _all_cases()


def test_every_flag_has_an_invalid_case():
    """A value-taking flag without a case here fails: add its invalid values to CASES when adding the flag."""
    training_arguments = _training_argument_names()
    for command, parser in _subparsers().items():
        flags = _value_taking(parser)
        table = CASES.get(command, {})
        assert set(table) <= set(flags), (
            f"{command}: cases for flags it does not have: {set(table) - set(flags)}"
        )
        for dest, action in flags.items():
            if dest in table:
                continue
            # transformers' own options: a generated wrong-type case, or free text transformers alone interprets
            assert command == "pretrain" and dest in training_arguments, (
                f"`{command} {action.option_strings or dest}` has no invalid-value case in tests/test_cli_errors.py"
            )


# ------------------------------------------------------------------------------------------------ running them


class ReachedWork(BaseException):
    """Raised where a model would load, training start or an export begin (a BaseException: no `except Exception`
    in a command can swallow it)."""


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    import numpy as np
    from safetensors.numpy import save_file

    root = tmp_path / "places"
    root.mkdir()
    (root / "a-file.txt").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "busy").mkdir()
    (root / "busy" / "keep.txt").write_text("mine")
    (root / "corpus.txt").write_text("Some text to train on. " * 20)
    for name, config in (
        ("model", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}),
        ("gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
    ):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        (checkpoint / name).write_text("{}")
    (checkpoint / "README.md").write_text("# card\n")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(checkpoint / "model.safetensors"))
    return {
        "file": str(root / "a-file.txt"),
        "under_file": str(root / "a-file.txt" / "out"),
        "missing": str(root / "missing" / "thing"),
        "empty_dir": str(root / "empty"),
        "busy": str(root / "busy"),
        "model": str(root / "model"),
        "gpt2": str(root / "gpt2"),
        "corpus": str(root / "corpus.txt"),
        "checkpoint": str(checkpoint),
        "out": str(tmp_path / "work" / "out"),
        "cards": str(tmp_path / "work" / "cards"),
    }


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Every entry point that loads a model, trains or exports fails the test; the working directory is inside
    tmp_path, so a default output folder (icl_lab_runs, trainer_output) would be seen as written."""
    import transformers_momentum.analysis.loading as analysis_loading
    import transformers_momentum.icl_lab.lab as lab
    import transformers_momentum.models.momentum_gpt.cli as convert_cli
    import transformers_momentum.pretraining.recipe as recipe

    def reached(what):
        def fail(*args, **kwargs):
            raise ReachedWork(f"the case reached {what}: it was validated too late")

        return fail

    monkeypatch.setattr(analysis_loading, "load_model", reached("analysis.loading.load_model"))
    monkeypatch.setattr(lab, "run_icl_lab", reached("icl_lab.lab.run_icl_lab"))
    monkeypatch.setattr(recipe, "pretrain", reached("pretraining.recipe.pretrain"))
    monkeypatch.setattr(convert_cli, "_load_gpt2", reached("loading the GPT-2"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    return [arg.format(**places) for arg in argv]


def _run_refused(argv: list[str], capsys) -> str:
    """Run ``main(argv)``, assert exit code 2 and a short stderr without a traceback; return stderr."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors (a wrong type, a missing value)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code} for {argv}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, f"{len(lines)} lines on stderr for {argv}:\n{err}"
    return err


@pytest.mark.parametrize(
    "command, dest, extra", ALL_CASES, ids=[f"{c}-{d}-{'_'.join(a)[:40]}" for c, d, a in ALL_CASES]
)
def test_invalid_value_is_one_line_exit_2_and_writes_nothing(
    command, dest, extra, places, no_work, tmp_path, capsys
):
    before = _tree(tmp_path)
    argv = _fill([*BASE[command], *extra], places)
    err = _run_refused(argv, capsys)
    assert "error" in err.lower(), err
    written = _tree(tmp_path) - before
    assert not written, f"{argv} left {sorted(written)} behind"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command, flag", [("analyze", "--out"), ("icl-lab", "--out"), ("convert-gpt2", "--out"),
                                           ("pretrain", "--output_dir"), ("icl-lab", "--cards-dir")])  # fmt: skip
def test_read_only_output_folder_is_refused(command, flag, places, no_work, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _run_refused(_fill([*BASE[command], flag, str(locked / "out")], places), capsys)
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o700)


def test_analyze_unreachable_hub_is_one_line(places, no_work, tmp_path, monkeypatch, capsys):
    """--hub with no network: one line and exit 2 (not huggingface_hub's retry log, not exit 1)."""
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    before = _tree(tmp_path)
    err = _run_refused(_fill([*BASE["analyze"], "--hub"], places), capsys)
    assert "--hub: could not load" in err and "Couldn't reach" in err
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------------------------ what the issue named


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "{file}"], "is a file"),
        (["--out", "{under_file}"], "is a file, so no folder can be created"),
        (["--n-eval", "0"], "--n-eval must be a positive integer"),
        (["--n-probe", "0"], "--n-probe must be a positive integer"),
        (["--noise-std=-1"], "--noise-std must be in [0, inf)"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--learning-rate=-1"], "--learning-rate must be in (0, inf)"),
        (["--task", "mqar", "--max-kv-pairs", "0"], "--max-kv-pairs must be a positive integer"),
        (["--warmup-ratio", "5"], "--warmup-ratio must be in [0, 1]"),
        (["--cards-dir", "{file}"], "--cards-dir"),
        (["--cards-dir", "{cards}", "--etas", "0"], "needs 0 and at least one momentum arm"),
    ],
)
def test_icl_lab_cases_of_the_issue(extra, message, places, no_work, tmp_path, capsys):
    err = _run_refused(_fill([*BASE["icl-lab"], *extra], places), capsys)
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threads", "-1"], "threads must be >= 1"),
        (["--lr-grid", "-1"], "lr_grid values must be finite numbers >= 0"),
        (["--out", "{under_file}"], "is a file, so no folder can be created"),
        (["--seeds", "1,-2"], "must be >= 0"),
    ],
)
def test_analyze_cases_of_the_issue(extra, message, places, no_work, tmp_path, capsys):
    err = _run_refused(_fill([*BASE["analyze"], *extra], places), capsys)
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists()


def test_analyze_device_cuda_without_cuda(places, no_work, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = _run_refused(_fill([*BASE["analyze"], "--device", "cuda"], places), capsys)
    assert "cuda is not available on this machine; use --device cpu" in err


def test_analyze_accepts_torch_dtype_names_and_comma_lists():
    parser = build_parser()
    args = parser.parse_args(
        ["analyze", "--model", "m", "--out", "o", "--dtype", "bfloat16", "--seeds", "1,2", "3"]
    )
    assert args.seeds == [1, 2, 3]
    from transformers_momentum.analysis.cli import _dataclass
    from transformers_momentum.analysis.config import AnalysisConfig, ModelArguments

    assert _dataclass(ModelArguments, args).dtype == "bf16"
    for torch_name, short in (("float16", "fp16"), ("float32", "fp32")):
        assert ModelArguments(model="m", dtype=torch_name).dtype == short
    args = parser.parse_args(
        ["analyze", "--model", "m", "--out", "o", "--lr-grid", "0.1,0.01", "--controls", "order,lcgd"]
    )
    config = _dataclass(AnalysisConfig, args)
    assert config.lr_grid == [0.1, 0.01] and config.controls == ["order", "lcgd"]
    lab = parser.parse_args(["icl-lab", "--seeds", "1", "2", "--etas", "0,0.5", "learnable"])
    assert (lab.seeds, lab.etas) == (["1", "2"], ["0", "0.5", "learnable"])


def test_analyze_out_whose_mkdir_fails_is_refused_before_the_analysis(
    places, no_work, tmp_path, monkeypatch, capsys
):
    """The pre-check passes (the parent exists and os.access says writable) but creating the folder fails: refused
    up front, and the folders the check created are removed again."""
    real_mkdir = Path.mkdir

    def failing_mkdir(self, *args, **kwargs):
        if self.name == "out":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", failing_mkdir)
    err = _run_refused(_fill(BASE["analyze"], places), capsys)
    assert "cannot be written (Permission denied)" in err
    assert not (tmp_path / "work").exists()


def test_publish_max_attempts_below_one_is_refused(places, capsys):
    for value in ("0", "-5"):
        err = _run_refused(
            ["publish", places["checkpoint"], "--repo-id", "tester/x", "--max-attempts", value], capsys
        )
        assert "--max-attempts: must be a positive integer" in err


def test_failed_icl_lab_run_leaves_no_empty_out_folder(places, tmp_path, monkeypatch, capsys):
    """A run that fails after the checks removes the folders it created and left empty."""
    import transformers_momentum.icl_lab.lab as lab

    def fails_midway(args):
        Path(args.out, "runs", "linear-regression").mkdir(parents=True)
        raise RuntimeError("killed")

    monkeypatch.setattr(lab, "run_icl_lab", fails_midway)
    with pytest.raises(RuntimeError, match="killed"):  # not bad input: the traceback stays
        main(_fill(BASE["icl-lab"], places))
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------------------------------------ convert-gpt2


def test_convert_gpt2_refuses_a_checkpoint_that_is_not_gpt2(tmp_path, tiny_llama, capsys):
    """A Llama is named as such and nothing is written (it used to become a randomly initialised MomentumGPT)."""
    source = tmp_path / "llama"
    tiny_llama().save_pretrained(source)
    out = tmp_path / "converted"
    err = _run_refused(["convert-gpt2", "--model", str(source), "--out", str(out)], capsys)
    assert "not a GPT-2 checkpoint" in err and "model_type='llama'" in err and "LlamaForCausalLM" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_convert_gpt2_refuses_gpt2_config_without_gpt2_weights(tmp_path, tiny_llama, capsys):
    """A config that claims GPT-2 over another model's weights: every GPT-2 weight would be random."""
    from transformers import GPT2Config

    source = tmp_path / "impostor"
    tiny_llama().save_pretrained(source)
    GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64).save_pretrained(source)
    out = tmp_path / "converted"
    err = _run_refused(["convert-gpt2", "--model", str(source), "--out", str(out)], capsys)
    assert "GPT-2 weights missing" in err and not out.exists()


def test_convert_gpt2_still_converts_a_gpt2(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    source = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    ).save_pretrained(source)
    out = tmp_path / "converted"
    assert main(["convert-gpt2", "--model", str(source), "--eta", "0.5", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "momentum_gpt" and config["momentum_eta"] == 0.5


def test_convert_gpt2_missing_folder_and_eta_are_one_line(tmp_path, capsys):
    err = _run_refused(
        ["convert-gpt2", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys
    )
    assert "no such folder" in err and "Repo id" not in err
    err = _run_refused(
        ["convert-gpt2", "--model", str(tmp_path), "--eta", "1.5", "--out", str(tmp_path / "o")], capsys
    )
    assert "--eta: must be in [0, 1)" in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ K/V tuning


def test_kv_tuning_refuses_an_encoder_only_bert_in_one_line():
    """peft's AttributeError (prepare_inputs_for_generation) is replaced by the plugin's reason."""
    from peft import get_peft_model
    from transformers import BertConfig, BertModel

    from transformers_momentum.kv_tuning import KVTuningConfig

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    with pytest.raises(ValueError, match=r"BertModel \(model_type='bert'\) is built as an encoder") as error:
        get_peft_model(BertModel(config), KVTuningConfig())
    assert "\n" not in str(error.value) and "is_decoder=True" in str(error.value)


def test_main_turns_a_project_input_error_that_escaped_a_command_into_one_line(places, monkeypatch, capsys):
    """The safety net in `main`: the project's input errors are one line and exit 2 whichever command raised them."""
    import importlib

    from transformers_momentum.analysis import AnalysisInputError

    # the module, not the function the hub package exports under the same name
    publish_module = importlib.import_module("transformers_momentum.hub.publish")

    def refuses(*args, **kwargs):
        raise AnalysisInputError("something to change\nsaid on two lines")

    monkeypatch.setattr(publish_module, "publish", refuses)
    err = _run_refused(["publish", places["checkpoint"], "--repo-id", "tester/x", "--dry-run"], capsys)
    assert err.strip() == "transformers-momentum publish: error: something to change said on two lines"
