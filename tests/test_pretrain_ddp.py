"""The pretraining recipe under two synchronized CPU processes (torchrun + gloo DDP)."""

import json
from pathlib import Path

import pytest
from torchrun_helper import run_two_cpu_processes

SCRIPT = Path(__file__).parent / "scripts" / "ddp_pretrain.py"


@pytest.mark.slow
def test_pretrain_recipe_runs_data_parallel_on_two_cpu_processes(tmp_path):
    records = run_two_cpu_processes(SCRIPT, tmp_path)
    assert all(record["global_step"] == 6 for record in records)
    # Different batches per rank; only the gradient all-reduce keeps the replicas identical.
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-9, abs=1e-9)
    assert records[0]["first_values"] == pytest.approx(records[1]["first_values"], rel=1e-7, abs=1e-9)
    # Only the main process writes the checkpoint; tokens per step count both processes.
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["environment"]["processes"] == 2 and summary["tokens_per_step"] == 2 * 4 * 32
