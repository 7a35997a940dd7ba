"""Publishing checkpoint folders to a Hub: dry run, clear errors, atomic retries, and a download round trip.

The Hub is `tests/fakehub.py` (in-memory, 127.0.0.1, random port). Loading through `HF_ENDPOINT` happens in
subprocesses because `huggingface_hub` reads that variable once, at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub

from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM
from transformers_momentum.hub import PublishError, list_checkpoint_files, publish
from transformers_momentum.pretraining import train_bpe_tokenizer

TOKEN = "hf_test_write_token"
SAMPLE = Path(__file__).parent / "data" / "corpus_sample.txt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny but complete checkpoint folder: card, config with auto_map, safetensors, tokenizer, generation config."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = tmp_path_factory.mktemp("ckpt") / "momentum-gpt-tiny"
    tokenizer = train_bpe_tokenizer([SAMPLE.read_text()[:20000]], vocab_size=300, model_max_length=32)
    torch.manual_seed(0)
    config = MomentumGPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        momentum_eta=0.5,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = MomentumGPTForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    card = ModelCard.from_template(
        ModelCardData(license="apache-2.0", library_name="transformers", pipeline_tag="text-generation"),
        model_id="momentum-gpt-tiny",
    )
    card.save(str(folder / "README.md"))
    return folder


@pytest.fixture
def hub(monkeypatch):
    # CI runs with HF_HUB_OFFLINE=1 (nothing may reach the real Hub); the local server is the one exception.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
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
    from transformers_momentum.cli import main

    # No token, no endpoint: a dry run must not touch the network.
    assert main(["publish", str(checkpoint), "--repo-id", "tester/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Would upload" in out
    for name, _ in list_checkpoint_files(checkpoint):
        assert name in out


def test_missing_files_and_pickles_are_clear_errors(checkpoint, tmp_path):
    with pytest.raises(PublishError, match="does not exist"):
        publish(tmp_path / "nope", "tester/x", dry_run=True)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(PublishError, match="lacks README.md, model.safetensors"):
        publish(partial, "tester/x", dry_run=True)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name, _ in list_checkpoint_files(checkpoint):
        (pickled / name).write_bytes((checkpoint / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(PublishError, match="pickle"):
        publish(pickled, "tester/x", dry_run=True)
    with pytest.raises(PublishError, match="org or user"):
        publish(checkpoint, "no-namespace", dry_run=True)


def test_bad_token_is_a_clear_error_that_hides_the_token(checkpoint, hub, capsys):
    secret = "hf_wrong_token_0123456789"
    with pytest.raises(PublishError, match="rejected the token") as info:
        publish(checkpoint, "tester/m", token=secret, endpoint=hub.endpoint)
    assert secret not in str(info.value)
    assert "tester/m" not in hub.repos
    # Writing into someone else's namespace is refused with a hint, too.
    with pytest.raises(PublishError, match="may not write"):
        publish(checkpoint, "tester/m", token="hf_other_user_token", endpoint=hub.endpoint)
    from transformers_momentum.cli import main

    code = main(
        ["publish", str(checkpoint), "--repo-id", "tester/m", "--token", secret, "--endpoint", hub.endpoint]
    )
    captured = capsys.readouterr()
    assert code == 1 and secret not in captured.out + captured.err


def test_publish_is_one_commit_holding_exactly_the_folder(checkpoint, hub):
    result = publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint, commit_message="first")
    files = _main_files(hub, "tester/m")
    expected = {name: (checkpoint / name).read_bytes() for name, _ in list_checkpoint_files(checkpoint)}
    assert {k: v for k, v in files.items() if k != ".gitattributes"} == expected
    assert result.attempts == 1 and _chain_length(hub, "tester/m") == 2  # initial commit + ours
    # Re-publishing after a file disappeared removes it remotely (delete_patterns), still in one commit.
    publish(checkpoint, "tester/m", token=TOKEN, endpoint=hub.endpoint, revision="v2")
    assert set(_main_files(hub, "tester/m", "v2")) == set(files)


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

_LOAD_WITHOUT_PLUGIN = textwrap.dedent(
    """
    import json, sys
    class _HidePlugin:  # the plugin is not installed in this process
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers_momentum":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None
    sys.meta_path.insert(0, _HidePlugin())
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
