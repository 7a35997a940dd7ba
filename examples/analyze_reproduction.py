"""Run the ICL-vs-FT analysis on SmolLM2-135M over the six tasks (the budget of docs/reproduction.md).

    python examples/analyze_reproduction.py --tasks sst2,sst5,mr --out docs/reproduction

Each task is one `transformers-momentum analyze` run with the same settings; results land in <out>/<task>/.
"""

import argparse
import sys
import time

import torch

from transformers_momentum.cli import main as cli_main


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,sst5,mr,subj,agnews,cb")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n-eval", type=int, default=48)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--lr-grid", default="0.0001,0.001,0.01")
    parser.add_argument("--n-tune", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/reproduction")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    failures = 0
    for task in args.tasks.split(","):
        started = time.time()
        code = cli_main([
            "analyze", "--model", args.model, "--task", task, "--k", str(args.k), "--n-eval", str(args.n_eval),
            "--seeds", args.seeds, "--lr-grid", args.lr_grid, "--n-tune", str(args.n_tune), "--kendall-n",
            str(args.n_eval), "--out", f"{args.out}/{task}", "--overwrite", "--quiet", "--device", "cpu",
            "--threads", str(args.threads),
        ])  # fmt: skip
        print(f"{task}: exit {code} in {time.time() - started:.0f} s", flush=True)
        failures += code != 0
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(run())
