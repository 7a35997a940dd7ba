"""Publishing checkpoint folders to a Hub: dry run, clear errors, LFS uploads, atomic retries, a download round trip.

The Hub is `tests/fakehub.py` (in-memory, 127.0.0.1, random port), which takes the same two upload paths as the real
Hub without Xet: LFS (preupload -> LFS batch -> PUT -> verify -> ``lfsFile`` in the commit) for
``*.safetensors``, inline base64 for the rest. Loading through `HF_ENDPOINT` happens in subprocesses because
`huggingface_hub` reads that variable once, at import.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub
from remote_code import HIDE_PLUGIN

from transformers_momentum import MomentumGPTForCausalLM
from transformers_momentum.cli import main
from transformers_momentum.hub import CheckpointFolderError, PublishError, list_checkpoint_files, publish

TOKEN = "hf_test_write_token"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_momentum_gpt, corpus_tokenizer) -> Path:
    """A tiny but complete checkpoint folder: card, config with auto_map, safetensors, tokenizer, generation config."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = tmp_path_factory.mktemp("ckpt") / "momentum-gpt-tiny"
    model = _tiny_model(tiny_momentum_gpt, corpus_tokenizer)
    model.save_pretrained(folder)
    corpus_tokenizer.save_pretrained(folder)
    card = ModelCard.from_template(
        ModelCardData(license="apache-2.0", library_name="transformers", pipeline_tag="text-generation"),
        model_id="momentum-gpt-tiny",
    )
    card.save(str(folder / "README.md"))
    return folder


def _tiny_model(tiny_momentum_gpt, tokenizer, seed: int = 0) -> MomentumGPTForCausalLM:
    return tiny_momentum_gpt(
        seed=seed, vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, momentum_eta=0.5, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip


@pytest.fixture
def hub(monkeypatch):
    # CI runs with HF_HUB_OFFLINE=1 (nothing may reach the real Hub); the local server is the one exception.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # With hf_xet installed, LFS-mode files go to a Xet CAS server, whose protocol the fake Hub does not speak; the
    # Hub's LFS upload path (what huggingface_hub does without hf_xet, or with HF_HUB_DISABLE_XET=1) runs instead.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with FakeHub({TOKEN: "tester", "hf_other_user_token": "other"}) as server:
        yield server


def _main_files(hub: FakeHub, repo_id: str, branch: str = "main") -> dict[str, bytes]:
    repo = hub.repos[repo_id]
    return repo.commits[repo.branches[branch]].files


def _chain_length(hub: FakeHub, repo_id: str, branch: str = "main") -> int:
    repo, oid, count = hub.repos[repo_id], hub.repos[repo_id].branches[branch], 0
    while oid is not None:
        count, oid = count + 1, repo.commits[oid].parent
    return count


def _closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_checkpoint_folder_holds_what_the_hub_needs(checkpoint):
    names = {name for name, _ in list_checkpoint_files(checkpoint)}
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    } <= names
    assert {"modeling_momentum_gpt.py", "configuration_momentum_gpt.py"} <= names  # for trust_remote_code
    assert "auto_map" in json.loads((checkpoint / "config.json").read_text())


def test_dry_run_lists_files_without_network(checkpoint, capsys):
    # No token, no endpoint: a dry run must not touch the network.
    assert main(["publish", str(checkpoint), "--repo-id", "tester/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Would upload" in out
    for name, _ in list_checkpoint_files(checkpoint):
        assert name in out


def test_dry_run_refuses_truncated_weights_and_broken_json(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = (checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) - 100])  # an interrupted copy
    assert main(["publish", str(broken), "--repo-id", "tester/x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" in err and "not a whole safetensors file" in err

    (broken / "model.safetensors").write_bytes(weights)
    (broken / "config.json").write_text((checkpoint / "config.json").read_text()[:-20])
    with pytest.raises(CheckpointFolderError, match="config.json.*not valid JSON"):
        publish(broken, "tester/x", dry_run=True)


def test_missing_files_and_pickles_are_clear_errors(checkpoint, tmp_path, capsys):
    with pytest.raises(CheckpointFolderError, match="does not exist"):
        publish(tmp_path / "nope", "tester/x", dry_run=True)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(CheckpointFolderError, match="lacks README.md, model.safetensors"):
        publish(partial, "tester/x", dry_run=True)
    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointFolderError, match="pickle"):
        publish(pickled, "tester/x", dry_run=True)
    with pytest.raises(CheckpointFolderError, match="org or user"):
        publish(checkpoint, "no-namespace", dry_run=True)
    assert main(["publish", str(partial), "--repo-id", "tester/x", "--dry-run"]) == 2  # bad input: exit 2
    assert capsys.readouterr().err.startswith("error: Checkpoint folder")


def test_bad_token_is_a_clear_error_that_hides_the_token(checkpoint, hub, capsys):
    secret = "hf_wrong_token_0123456789"
    with pytest.raises(PublishError, match="rejected the token") as info:
        publish(checkpoint, "tester/m", token=secret, endpoint=hub.endpoint)
    assert secret not in str(info.value)
    assert "tester/m" not in hub.repos
    # Writing into someone else's namespace is refused with a hint, too.
    with pytest.raises(PublishError, match="may not write.*own namespace \\(other/"):
        publish(checkpoint, "tester/m", token="hf_other_user_token", endpoint=hub.endpoint)

    code = main(
        ["publish", str(checkpoint), "--repo-id", "tester/m", "--token", secret, "--endpoint", hub.endpoint]
    )
    captured = capsys.readouterr()
    assert code == 1 and secret not in captured.out + captured.err


def test_weights_take_the_lfs_path_and_the_commit_holds_exactly_the_folder(checkpoint, hub):
    result = publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint, commit_message="first")
    files = _main_files(hub, "tester/m")
    expected = {name: (checkpoint / name).read_bytes() for name, _ in list_checkpoint_files(checkpoint)}
    assert {k: v for k, v in files.items() if k != ".gitattributes"} == expected
    assert result.attempts == 1 and _chain_length(hub, "tester/m") == 2  # initial commit + ours

    # model.safetensors went through LFS: batch request, PUT of its bytes, verify; the commit names it by sha256.
    weights_sha256 = hashlib.sha256(expected["model.safetensors"]).hexdigest()
    assert hub.lfs_objects == {weights_sha256: expected["model.safetensors"]}
    lfs_calls = [
        r for r in hub.requests if "/info/lfs/objects/batch" in r or r.split()[1].startswith("/_lfs/")
    ]
    assert lfs_calls == [
        "POST /tester/m.git/info/lfs/objects/batch",
        f"PUT /_lfs/{weights_sha256}",
        f"POST /_lfs/{weights_sha256}/verify",
    ]
    assert sorted(hub.commits_received[-1]) == sorted(["lfsFile"] + ["file"] * (len(expected) - 1))
    repo = hub.repos["tester/m"]
    assert repo.commits[repo.branches["main"]].lfs == {"model.safetensors"}


def test_republish_uploads_new_weights_and_deletes_a_stale_file_in_one_commit(
    checkpoint, hub, tmp_path, tiny_momentum_gpt, corpus_tokenizer
):
    folder = tmp_path / "momentum-gpt-tiny"
    shutil.copytree(checkpoint, folder)
    (folder / "notes.txt").write_text("first version only\n")
    publish(folder, "tester/m", token=TOKEN, endpoint=hub.endpoint)
    assert "notes.txt" in _main_files(hub, "tester/m")
    head_before = hub.repos["tester/m"].branches["main"]

    (folder / "notes.txt").unlink()
    _tiny_model(tiny_momentum_gpt, corpus_tokenizer, seed=1).save_pretrained(folder)  # retrained weights
    new_weights = (folder / "model.safetensors").read_bytes()
    assert new_weights != (checkpoint / "model.safetensors").read_bytes()
    result = publish(folder, "tester/m", token=TOKEN, endpoint=hub.endpoint)

    repo = hub.repos["tester/m"]
    head = repo.commits[repo.branches["main"]]
    assert head.parent == head_before and result.commit_oid == head.oid  # exactly one new commit
    assert "notes.txt" not in head.files and head.files["model.safetensors"] == new_weights
    assert "notes.txt" in repo.commits[head_before].files  # the old revision still has it
    # One commit carries both: the new weights through LFS and the deletion; unchanged files are skipped.
    assert sorted(hub.commits_received[-1]) == ["deletedFile", "lfsFile"]
    assert f"PUT /_lfs/{hashlib.sha256(new_weights).hexdigest()}" in hub.requests


def test_interrupted_upload_is_retried_without_half_published_revision(checkpoint, hub):
    publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint)
    head_before = hub.repos["tester/m"].branches["main"]
    (checkpoint / "extra_notes.txt").write_text("second version\n")
    try:
        # Every attempt dies halfway through the upload: main must stay exactly where it was.
        hub.faults.extend(["drop_request"] * 2)
        with pytest.raises(PublishError, match="nothing was half-published"):
            publish(
                checkpoint,
                "tester/m",
                token=TOKEN,
                endpoint=hub.endpoint,
                max_attempts=2,
                backoff_seconds=0.01,
            )
        assert hub.repos["tester/m"].branches["main"] == head_before
        assert "extra_notes.txt" not in _main_files(hub, "tester/m")

        # One dropped request, then success: exactly one new commit.
        hub.faults.append("drop_request")
        result = publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint, backoff_seconds=0.01)
        assert result.attempts == 2
        assert _chain_length(hub, "tester/m") == 3
        assert _main_files(hub, "tester/m")["extra_notes.txt"] == b"second version\n"

        # The commit lands but its answer is lost: the retry must not stack a duplicate commit.
        (checkpoint / "extra_notes.txt").write_text("third version\n")
        hub.faults.append("drop_response")
        result = publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint, backoff_seconds=0.01)
        assert _chain_length(hub, "tester/m") == 4
        assert any("commit had landed" in note for note in result.notes)
        assert result.commit_oid == hub.repos["tester/m"].branches["main"]
    finally:
        (checkpoint / "extra_notes.txt").unlink()


def test_a_dropped_connection_on_the_first_call_is_retried(checkpoint, hub):
    hub.drop_connections = 1  # the very first request (whoami) gets no answer
    result = publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint, backoff_seconds=0.01)
    assert [r for r in hub.requests if r.endswith("whoami-v2")] == ["GET /api/whoami-v2"] * 2
    assert result.notes[0].startswith("checking the token: attempt 1 failed")
    assert _main_files(hub, "tester/m")["config.json"] == (checkpoint / "config.json").read_bytes()


def test_an_unreachable_hub_is_one_line_after_retries(checkpoint, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # CI sets it; this test wants the network path
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(PublishError, match=r"Could not reach the Hub at .* after 3 attempt\(s\)") as info:
        publish(checkpoint, "tester/m", token=TOKEN, endpoint=endpoint, max_attempts=3, backoff_seconds=0.01)
    assert "\n" not in str(info.value) and TOKEN not in str(info.value)
    code = main(
        ["publish", str(checkpoint), "--repo-id", "tester/m", "--token", TOKEN, "--endpoint", endpoint]
        + ["--max-attempts", "1"]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: Could not reach the Hub")


def test_offline_mode_is_named_rather_than_retried(checkpoint, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set") as info:
        publish(
            checkpoint,
            "tester/m",
            token=TOKEN,
            endpoint=f"http://127.0.0.1:{_closed_port()}",
            backoff_seconds=5,
        )
    assert "\n" not in str(info.value)  # and no 5 s backoff: an offline switch is not a transient error


def test_quiet_silences_library_warnings(checkpoint, monkeypatch, recwarn, capsys):
    # importlib: the package's `publish` attribute is the function, which shadows the module of the same name.
    publish_module = importlib.import_module("transformers_momentum.hub.publish")
    real = publish_module.list_checkpoint_files

    def noisy(folder):
        warnings.warn("`old_argument` is deprecated", FutureWarning, stacklevel=1)
        return real(folder)

    monkeypatch.setattr(publish_module, "list_checkpoint_files", noisy)
    command = ["publish", str(checkpoint), "--repo-id", "tester/x", "--dry-run"]
    assert main(command) == 0 and [w.category for w in recwarn] == [FutureWarning]
    recwarn.clear()
    assert main(["--quiet", *command]) == 0 and len(recwarn) == 0
    assert main(command) == 0 and len(recwarn) == 1  # the silencing ends with the command
    assert "Would upload" in capsys.readouterr().out


_LOAD_THROUGH_HUB = textwrap.dedent(
    """
    import json, sys, torch
    import transformers_momentum  # registers MomentumGPT
    from huggingface_hub import hf_hub_download
    from transformers import AutoModelForCausalLM, AutoTokenizer
    repo = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(repo)
    tokenizer = AutoTokenizer.from_pretrained(repo)
    card = open(hf_hub_download(repo, "README.md")).read()
    ids = tokenizer("It was a dark and stormy night", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    print(json.dumps({"cls": type(model).__name__, "logits": logits[0, -1, :8].tolist(), "card": card[:3],
                      "ids": ids[0].tolist()}))
    """
)

_LOAD_WITHOUT_PLUGIN = HIDE_PLUGIN + textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    try:
        import transformers_momentum  # noqa: F401
        hidden = False
    except ModuleNotFoundError:
        hidden = True
    with torch.no_grad():
        logits = model(torch.tensor([json.loads(sys.argv[2])])).logits
    print(json.dumps({"module": type(model).__module__, "hidden": hidden, "logits": logits[0, -1, :8].tolist()}))
    """
)


def _run_python(code: str, args: list[str], env: dict[str, str], cwd: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_round_trip_through_hf_endpoint_and_without_plugin(checkpoint, hub, tmp_path):
    publish(checkpoint, "tester/momentum-gpt-tiny", token=TOKEN, endpoint=hub.endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # the plugin, for the first process
    loaded = _run_python(_LOAD_THROUGH_HUB, ["tester/momentum-gpt-tiny"], env, tmp_path)
    assert loaded["cls"] == "MomentumGPTForCausalLM" and loaded["card"] == "---"

    local = MomentumGPTForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        expected = local(torch.tensor([loaded["ids"]])).logits[0, -1, :8]
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-5, atol=1e-5)

    # Fresh process, plugin hidden, code from the repo (trust_remote_code): same logits.
    env.pop("PYTHONPATH")
    bare = _run_python(
        _LOAD_WITHOUT_PLUGIN, ["tester/momentum-gpt-tiny", json.dumps(loaded["ids"])], env, tmp_path
    )
    assert bare["hidden"] and bare["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(bare["logits"]), expected, rtol=1e-5, atol=1e-5)
