"""The package as installed: what `import transformers_momentum` and `--help` load, and the files it ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

_LOADED_MODULES = """
import json, sys
import transformers_momentum
from transformers import AutoConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
registered = {"auto": AutoConfig.for_model("momentum_gpt").model_type, "peft": "KV_TUNING" in PEFT_TYPE_TO_CONFIG_MAPPING}
from transformers_momentum.cli import build_parser
help_text = build_parser().format_help()
print(json.dumps({"modules": sorted(sys.modules), "registered": registered, "help": help_text}))
"""

#: Libraries a sub-command needs only when it runs: neither the import nor the sub-command list may load them.
HEAVY = ("datasets", "matplotlib", "pandas", "pyarrow", "transformers.trainer", "lm_eval")


def test_import_and_help_register_the_classes_but_load_no_capability_stack():
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_MODULES], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["registered"] == {"auto": "momentum_gpt", "peft": True}
    for command in ("pretrain", "publish", "convert-gpt2"):
        assert command in loaded["help"]
    modules = set(loaded["modules"])
    assert not [m for m in modules if m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY))]
    # Of the capabilities, only their `cli` modules (and what those import to declare flags) are loaded.
    for stack in (
        "pretraining.recipe",
        "pretraining.data",
        "pretraining.card",
        "analysis.pipeline",
        "analysis.probe",
    ):
        assert f"transformers_momentum.{stack}" not in modules


def test_ships_py_typed_the_card_template_and_a_license():
    package = resources.files("transformers_momentum")
    assert (package / "py.typed").is_file()
    assert "{{ card_data }}" in (package / "pretraining" / "templates" / "model_card.md").read_text()
    license_text = (Path(__file__).resolve().parent.parent / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_version_policy_notice_names_an_untested_newer_release():
    """No cap in pyproject (a cap silently downgrades a user's transformers): a newer minor than CI tested gets one
    line naming both versions and the pin to fall back on; the tested releases get none."""
    from transformers_momentum import compat

    newest = compat.NEWEST_TESTED.rsplit(".", 1)[0]
    major, minor = (int(part) for part in newest.split("."))
    assert compat.untested_release_notice(f"{major}.{minor}.9") is None
    assert compat.untested_release_notice(f"{major}.{minor - 2}.0") is None
    notice = compat.untested_release_notice(f"{major}.{minor + 1}.0")
    assert "\n" not in notice and newest in notice and f"transformers<{major}.{minor + 1}" in notice
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"transformers>=5.23",' in pyproject  # the floor make test-min reads, and no cap


def test_hub_kernels_are_switched_off_only_where_they_cannot_load(monkeypatch):
    """transformers >= 5.25 turns hub kernels on by default and then needs `kernels`: without it the plugin sets
    USE_HUB_KERNELS=0; a user's own choice, an older release, or an installed `kernels` are left alone."""
    import importlib.util

    from transformers_momentum import compat

    real_find_spec = importlib.util.find_spec

    def without_kernels(name, *args):
        return None if name == "kernels" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_kernels)
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    assert compat.switch_off_unavailable_hub_kernels("5.25.0") and os.environ["USE_HUB_KERNELS"] == "0"
    monkeypatch.setenv("USE_HUB_KERNELS", "1")  # the user's choice stands
    assert not compat.switch_off_unavailable_hub_kernels("5.25.0") and os.environ["USE_HUB_KERNELS"] == "1"
    monkeypatch.delenv("USE_HUB_KERNELS")
    assert not compat.switch_off_unavailable_hub_kernels("5.24.0")  # kernels are off by default there
    assert "USE_HUB_KERNELS" not in os.environ
