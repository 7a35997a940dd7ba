"""Run the ICL-vs-FT analysis on SmolLM2-135M over the six tasks (the budget of docs/reproduction.md).

    python examples/analyze_reproduction.py --tasks sst2 sst5 mr --out docs/reproduction
    python examples/analyze_reproduction.py --table --out docs/reproduction   # the cross-task table, from the files

Each task is one `transformers-momentum analyze` run with the same settings; results land in <out>/<task>/.
"""

import argparse
import sys
import time
from pathlib import Path

from transformers_momentum.cli import main as cli_main

TASKS = ("sst2", "sst5", "mr", "subj", "agnews", "cb")


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n-eval", type=int, default=48)
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3", "4", "5"])
    parser.add_argument("--lr-grid", nargs="+", default=["0.0001", "0.001", "0.01"])
    parser.add_argument("--n-tune", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/reproduction")
    parser.add_argument(
        "--table", action="store_true", help="only print the cross-task table of <out>/<task>/"
    )
    args = parser.parse_args(argv)
    if args.table:
        from transformers_momentum.analysis import AnalysisResult, render_task_table

        found = {}
        for task in args.tasks:
            try:
                found[task] = AnalysisResult.load(Path(args.out) / task)
            except (OSError, ValueError) as error:  # missing, or written by an earlier schema
                print(f"{task}: skipped ({str(error).splitlines()[0]})", file=sys.stderr)
        print(render_task_table(found))
        return 0
    failures = 0
    for task in args.tasks:
        started = time.time()
        code = cli_main([
            "analyze", "--model", args.model, "--task", task, "--k", str(args.k), "--n-eval", str(args.n_eval),
            "--seeds", *args.seeds, "--lr-grid", *args.lr_grid, "--n-tune", str(args.n_tune), "--kendall-n",
            str(args.n_eval), "--batch-size", str(args.batch_size), "--out", f"{args.out}/{task}", "--overwrite",
            "--quiet", "--device", "cpu", "--threads", str(args.threads),
        ])  # fmt: skip
        print(f"{task}: exit {code} in {time.time() - started:.0f} s", flush=True)
        failures += code != 0
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(run())
