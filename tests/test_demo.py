"""`make demo` (examples/demo.py): the shipped checkpoints part runs and writes what it promises.

The analyzer part of the demo is the same code path as tests/test_analysis_pipeline.py::test_smollm2_end_to_end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_loads_the_shipped_checkpoints_by_path_and_generates(tmp_path):
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--out", str(out), "--skip-analysis",
         "--max-new-tokens", "6"],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    momentum, vanilla = (
        summary["checkpoints"][name] for name in ("momentum-gpt-1.4M-1.6M", "vanilla-gpt-1.4M-1.6M")
    )
    assert momentum["class"] == vanilla["class"] == "MomentumGPTForCausalLM"
    assert momentum["momentum_eta"] > 0 and vanilla["momentum_eta"] == 0
    assert momentum["parameters"] == vanilla["parameters"]  # matched twins
    for info in (momentum, vanilla):
        assert 1 < info["validation_perplexity@512"] < 4096 / 4  # trained: far better than uniform
        assert info["greedy_continuation"].strip()
    table = (out / "checkpoints.md").read_text().splitlines()
    assert len(table) == 4 and sum(row.startswith("| momentum-gpt-") for row in table) == 1
    # A valid Markdown table: every row has the header's 5 cells (pipes inside a cell are escaped).
    assert all(len(re.split(r"(?<!\\)\|", row)) == 7 for row in table), table
