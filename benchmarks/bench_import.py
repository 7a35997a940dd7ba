"""What `import transformers_momentum` and `transformers-momentum --help` cost over the libraries they must load.

The package registers MomentumGPT with transformers' Auto classes and K/V tuning with peft on import, so torch,
transformers (its modeling base) and peft are unavoidable; everything else (datasets, matplotlib, the Trainer, the
analyzer, the Hub client) should load only when a sub-command runs. Each measurement is a fresh interpreter; the
rounds interleave the three commands so that a shared machine's load hits them alike. CPU time (user + system of
the child) is reported next to wall time: on a loaded machine it moves much less than wall time.

    python benchmarks/bench_import.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import resource
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seconds(code: str) -> tuple[float, float]:
    """(wall, CPU) seconds of a fresh interpreter running ``code``."""
    started, cpu_started = time.perf_counter(), _children_cpu()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_started
    if result.returncode not in (0, 2):  # --help exits 0 via argparse; `main` returns 2 without a command
        raise RuntimeError(result.stderr[-2000:])
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    seconds(COMMANDS["import transformers_momentum"])  # warm the OS file cache once
    for _ in range(rounds):
        for name, code in COMMANDS.items():
            times[name].append(seconds(code))
    floor = [
        statistics.median(values) for values in zip(*times["floor: torch + transformers modeling + peft"])
    ]
    print(
        f"{'command':<46} {'wall s':>7} {'vs floor':>9} {'CPU s':>7} {'vs floor':>9}   (medians of {rounds})"
    )
    for name, values in times.items():
        wall, cpu = (statistics.median(column) for column in zip(*values))
        print(f"{name:<46} {wall:>7.2f} {wall / floor[0]:>8.2f}x {cpu:>7.2f} {cpu / floor[1]:>8.2f}x")


if __name__ == "__main__":
    main()
