"""Two synchronized CPU processes (gloo DDP) train MomentumGPT with Trainer."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train_momentum_gpt.py"


@pytest.mark.slow
def test_two_process_ddp_training_is_synchronized(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun (part of torch) not found"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # `accelerate launch --cpu --num_processes 2` would start ONE process; torchrun + use_cpu=True gives MULTI_CPU.
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["world_size"] == 2
        assert record["distributed_type"].endswith("MULTI_CPU")
        assert record["wrapped"] == "DistributedDataParallel"
        assert record["backend"] == "gloo"
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-9, abs=1e-9)
