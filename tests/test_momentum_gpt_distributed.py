"""MomentumGPT on two synchronized CPU processes: data parallel (gloo DDP with Trainer) and tensor parallel."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torchrun_helper import run_two_cpu_processes

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.mark.slow
def test_two_process_ddp_training_is_synchronized(tmp_path):
    records = run_two_cpu_processes(SCRIPTS / "ddp_train_momentum_gpt.py", tmp_path)
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-9, abs=1e-9)


@pytest.mark.slow
def test_tensor_parallel_on_two_cpu_processes_equals_one_process(tmp_path):
    """The model's tp_plan (q/k/v colwise, o_proj rowwise, learned etas sharded with their heads) through
    transformers' own tensor parallelism (`from_pretrained(..., distributed_config=DistributedConfig(tp_size=2))`,
    DTensor on a gloo mesh): logits, greedy generation, loss and gradients equal the unsharded model's."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPTS / "tp_momentum_gpt.py"),
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["world_size"] == 2 and record["backend"] == "gloo"
        for learnable_eta, run in record["runs"].items():
            assert run["q_proj_local_rows"] == 16, "each rank holds 2 of the 4 heads"
            assert run["eta_local_heads"] == (2 if learnable_eta == "True" else None)
            assert run["logits_error"] < 1e-5 and run["loss_error"] < 1e-5 and run["grad_error"] < 1e-5, run
            assert run["generated_equal"], run
