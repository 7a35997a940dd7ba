"""Launch a test script as two synchronized CPU processes (torchrun + gloo DDP) and read back each rank's record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def run_two_cpu_processes(script: Path, out_dir: Path) -> list[dict]:
    """Run `script out_dir` on 2 ranks; each rank writes out_dir/rank{r}.json. Asserts a real 2-process DDP run."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun (part of torch) not found"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # `accelerate launch --cpu --num_processes 2` would start ONE process; torchrun + use_cpu=True gives MULTI_CPU.
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(out_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["world_size"] == 2
        assert record["distributed_type"].endswith("MULTI_CPU")
        assert record["wrapped"] == "DistributedDataParallel"
        assert record["backend"] == "gloo"
    return records
