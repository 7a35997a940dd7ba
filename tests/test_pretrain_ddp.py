"""The pretraining recipe under two synchronized CPU processes (torchrun + gloo DDP)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_pretrain.py"


@pytest.mark.slow
def test_pretrain_recipe_runs_data_parallel_on_two_cpu_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun (part of torch) not found"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["world_size"] == 2
        assert record["distributed_type"].endswith("MULTI_CPU")
        assert record["wrapped"] == "DistributedDataParallel"
        assert record["backend"] == "gloo"
        assert record["global_step"] == 6
    # Different batches per rank; only the gradient all-reduce keeps the replicas identical.
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-9, abs=1e-9)
    assert records[0]["first_values"] == pytest.approx(records[1]["first_values"], rel=1e-7, abs=1e-9)
    # Only the main process writes the checkpoint; tokens per step count both processes.
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens_per_step"] == 2 * 4 * 32
