"""ICL vs K/V finetuning on SST-2 with the Python API (SmolLM2-135M, small budget: about a minute on 2 CPU cores).

python examples/analyze_sst2.py [--out runs/sst2]
"""

import argparse

import torch

from transformers_momentum.analysis import AnalysisConfig, analyze
from transformers_momentum.analysis.cli import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/sst2")
    parser.add_argument("--n-eval", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    config = AnalysisConfig(
        task="sst2", k=4, n_eval=args.n_eval, lr=1e-3, seeds=(1,), controls=("untrained",)
    )
    result = analyze(model, tokenizer, config, model_name="smollm2-135m")
    print(
        f"accuracy ZSL/ICL/FT: {result['accuracy.zsl']:.1f} / {result['accuracy.icl']:.1f} / {result['accuracy.ft']:.1f}"
    )
    print(f"SimAOU {result['simaou.mean']:.3f} (Uniform null {result['simaou.random_mean']:.3f}, shuffled null "
          f"{result['simaou.shuffled_mean']:.3f}, untrained model {result['controls']['untrained']['simaou']['mean']:.3f})")  # fmt: skip
    print(f"SimAM before/after FT: {result['simam.before_ft']:.3f} / {result['simam.after_ft']:.3f}")
    result.save(args.out)
    print(f"wrote {args.out}/results.json and report.md")


if __name__ == "__main__":
    main()
