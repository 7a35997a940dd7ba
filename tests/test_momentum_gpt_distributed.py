"""Two synchronized CPU processes (gloo DDP) train MomentumGPT with Trainer."""

from pathlib import Path

import pytest
from torchrun_helper import run_two_cpu_processes

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train_momentum_gpt.py"


@pytest.mark.slow
def test_two_process_ddp_training_is_synchronized(tmp_path):
    records = run_two_cpu_processes(SCRIPT, tmp_path)
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-9, abs=1e-9)
