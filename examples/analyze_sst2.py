"""ICL vs K/V finetuning on SST-2 with the Python API (SmolLM2-135M, small budget: about a minute on 2 CPU cores).

python examples/analyze_sst2.py [--out runs/sst2]
"""

import argparse

import torch

from transformers_momentum.analysis import AnalysisConfig, analyze, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/sst2")
    parser.add_argument("--n-eval", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    config = AnalysisConfig(task="sst2", k=4, n_eval=args.n_eval, lr=1e-3, seeds=[1], controls=["untrained"])
    result = analyze(model, tokenizer, config, model_name="smollm2-135m")
    pretrained, gd = result.models["pretrained"], result.models["pretrained"].comparisons["gd"]
    print(
        f"accuracy ZSL/ICL/FT: {pretrained.accuracy_zsl.mean:.1f} / {pretrained.accuracy_icl.mean:.1f} / "
        f"{gd.accuracy_ft.mean:.1f} (95% intervals over examples: {pretrained.accuracy_icl.ci95} for ICL)"
    )
    untrained = result.models["untrained"].comparisons["gd"].simaou.mean
    print(f"SimAOU {gd.simaou.mean:.3f} {gd.simaou.ci95} (Uniform null {pretrained.simaou_uniform_null.mean:.3f}, "
          f"shuffled null {gd.simaou_shuffled_null.mean:.3f}, untrained model {untrained:.3f})")  # fmt: skip
    print(f"SimAM before/after FT: {pretrained.simam_before.mean:.3f} / {gd.simam_after.mean:.3f}")
    result.save(args.out)
    print(f"wrote {args.out}/results.json and report.md")


if __name__ == "__main__":
    main()
