"""What `import transformers_momentum` and `transformers-momentum --help` cost over the libraries they must load.

The package registers MomentumGPT with transformers' Auto classes and K/V tuning with peft on import, so torch,
transformers (its modeling base) and peft are unavoidable; everything else (datasets, matplotlib, the Trainer, the
analyzer, the Hub client) should load only when a sub-command runs. Each measurement is a fresh interpreter; the
rounds interleave the three commands so that a shared machine's load hits them alike.

    python benchmarks/bench_import.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "floor: torch + transformers modeling + peft": (
        "import torch, transformers, peft; from transformers import PreTrainedModel, AutoConfig"
    ),
    "import transformers_momentum": "import transformers_momentum",
    "transformers-momentum --help": (
        "import sys; from transformers_momentum.cli import main; sys.argv[0] = 'transformers-momentum'; "
        "sys.stdout = open('/dev/null', 'w'); main(['--help'])"
    ),
}


def wall_seconds(code: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 2):  # --help exits 0 via argparse; `main` returns 2 without a command
        raise RuntimeError(result.stderr[-2000:])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    wall_seconds(COMMANDS["import transformers_momentum"])  # warm the OS file cache once
    for _ in range(rounds):
        for name, code in COMMANDS.items():
            times[name].append(wall_seconds(code))
    floor = statistics.median(times["floor: torch + transformers modeling + peft"])
    print(f"{'command':<46} {'median s':>9} {'best s':>8} {'vs floor':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<46} {median:>9.2f} {min(values):>8.2f} {median / floor:>8.2f}x")


if __name__ == "__main__":
    main()
