"""The checkpoints shipped in model_cards/: publishable, loadable offline, and consistent with their cards.

model_cards/ lives in the repository, not in the sdist (12 MB of weights): from an unpacked sdist these tests skip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

import transformers_momentum  # registers MomentumGPT
from transformers_momentum.hub import list_checkpoint_files
from transformers_momentum.pretraining import perplexity_at_lengths, token_stream

CARDS = Path(__file__).resolve().parent.parent / "model_cards"
# The pretraining programme's pairs, named <arch>-<parameters>-<tokens> (other capabilities ship other checkpoints).
PAIR_NAME = re.compile(r"(momentum|vanilla)-gpt-\d+(\.\d)?[KMB]?-\d+(\.\d)?[KMB]?")
FOLDERS = sorted(p for p in CARDS.iterdir() if PAIR_NAME.fullmatch(p.name)) if CARDS.is_dir() else []
VALID = Path(__file__).parent / "data" / "corpus_valid_sample.txt"
RECORDED_RUNS = Path(__file__).parent / "data" / "shipped_checkpoint_runs.json"

pytestmark = pytest.mark.skipif(not CARDS.is_dir(), reason="model_cards/ is not part of the sdist")


def test_every_momentum_checkpoint_has_its_vanilla_twin():
    names = {folder.name for folder in FOLDERS}
    momentum = [name for name in names if name.startswith("momentum-gpt-")]
    assert momentum, "model_cards/ ships no momentum-gpt checkpoint"
    for name in momentum:
        assert name.replace("momentum-gpt-", "vanilla-gpt-", 1) in names


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_shipped_checkpoint_loads_offline_and_matches_its_card(folder):
    files = dict(list_checkpoint_files(folder))  # publishable: required files present, no pickles
    assert sum(files.values()) < 20e6, "keep shipped checkpoints small"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "momentum_gpt" and "AutoModelForCausalLM" in config["auto_map"]
    assert (config["momentum_eta"] > 0) == folder.name.startswith("momentum-gpt-")

    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert card.data.to_dict()["twin_model"].split("/")[-1] in {p.name for p in FOLDERS}
    results = json.loads((folder / "results.json").read_text())
    card_ppl = {r.metric_name: r.metric_value for r in card.data.eval_results}
    arm = "momentum" if folder.name.startswith("momentum-gpt-") else "vanilla"
    for length, value in results["validation_perplexity"][arm]["0"].items():
        if value is not None:
            assert card_ppl[f"Perplexity (input length {length})"] == pytest.approx(value, abs=1e-3)

    # The code a trust_remote_code user runs is the package's own (checkpoints carry a copy; keep it current).
    package_code = Path(transformers_momentum.__file__).parent / "models" / "momentum_gpt"
    for name in ("modeling_momentum_gpt.py", "configuration_momentum_gpt.py"):
        assert (folder / name).read_text() == (package_code / name).read_text(), (
            f"{folder.name}/{name} is stale"
        )

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "MomentumGPTForCausalLM"
    # A trained model: far better than uniform on held-out Gutenberg text it never saw.
    stream = token_stream([VALID.read_text()], tokenizer)[: 2 * config["max_position_embeddings"]]
    ppl = perplexity_at_lengths(model, stream, [config["max_position_embeddings"]])
    assert ppl[config["max_position_embeddings"]] < config["vocab_size"] / 4
    torch.manual_seed(0)
    generated = model.generate(
        **tokenizer("It was a dark and stormy night", return_tensors="pt"), max_new_tokens=8
    )
    assert generated.shape[1] > 8


def test_shipped_cards_are_the_template_rendered_from_their_runs():
    """The cards are regenerated, not hand-edited: the template over the recorded runs gives them byte for byte,
    and the recorded runs give the shipped results.json (computed by the earlier statistics code)."""
    from transformers_momentum.pretraining.card import render_card, results_record

    # The transformers range as pyproject.toml declares it now (the installed metadata may predate an edit).
    pyproject = (CARDS.parent / "pyproject.toml").read_text()
    requirement = re.search(r'"(transformers>=[^"]+)"', pyproject).group(1)
    record = json.loads(RECORDED_RUNS.read_text())
    sweep = {float(eta): run for eta, run in record["sweep"].items()}
    names = {"momentum": "momentum-gpt-1.4M-1.6M", "vanilla": "vanilla-gpt-1.4M-1.6M"}
    for arm, name in names.items():
        twin = names["vanilla" if arm == "momentum" else "momentum"]
        card = render_card(
            record["arms"], own_arm=arm, repo_id=f"{record['hub_namespace']}/{name}",
            twin_repo_id=f"{record['hub_namespace']}/{twin}", sweep=sweep, license=record["license"],
            command=record["command"], icl_results=record["icl"], transformers_requirement=requirement,
        )  # fmt: skip
        assert str(card) == (CARDS / name / "README.md").read_text(), (
            f"{name}/README.md differs from the template"
        )

        shipped = json.loads((CARDS / name / "results.json").read_text())
        recomputed = results_record(
            record["arms"], own_arm=arm, name=name, twin_name=twin, sweep=sweep, icl_results=record["icl"]
        )
        assert _close(recomputed, shipped)


def _close(actual, expected) -> bool:
    """Equal JSON trees, floats within 1e-12 relative (scipy and the earlier hand-written t-interval differ in ulps)."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        return all(_close(actual[key], expected[key]) for key in expected)
    if isinstance(expected, list):
        assert len(actual) == len(expected)
        return all(_close(a, e) for a, e in zip(actual, expected))
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-12)
        return True
    assert actual == expected
    return True
