"""Analyzer costs, each measured against a baseline in the same run.

1. Probe overhead: forward time with the probe installed (recording off, and recording one analysis row) divided by
   the bare model's forward time (target: <= 1.05 with recording off).
2. Memory at T = 2048: peak resident memory of a forward that records only the score rows vs one that materialises
   every attention map (eager, ``output_attentions=True``), each in a fresh subprocess; plus the bytes kept.
3. Wall time per analysed example for ZSL + ICL + FT (no controls) on the real model when it is available.

    python benchmarks/bench_analysis.py [--model smollm2-135m|tiny] [--layers N] [--threads 1]

``--model tiny`` uses a random Llama with SmolLM2's shape (width 576, 9/3 heads) and ``--layers`` blocks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig


def smollm2_shaped(layers: int, attn: str = "sdpa"):
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def load(name: str, layers: int, attn: str = "sdpa"):
    if name == "tiny":
        return smollm2_shaped(layers, attn), None
    from transformers_momentum.analysis.cli import load_model

    return load_model(name, attn_implementation=attn, device="cpu")


def time_forward(model, ids, repeats: int, context) -> float:
    times = []
    for _ in range(repeats):
        with torch.no_grad(), context():
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1, use_cache=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_overhead(model, length: int, repeats: int) -> dict:
    import contextlib

    from transformers_momentum.analysis import AttentionProbe

    ids = torch.randint(10, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    bare = time_forward(model, ids, repeats, contextlib.nullcontext)
    probe = AttentionProbe(model)
    off = time_forward(model, ids, repeats, contextlib.nullcontext)
    on = time_forward(model, ids, repeats, lambda: probe.record_eval(-1))
    probe.remove()
    bare_again = time_forward(model, ids, repeats, contextlib.nullcontext)
    base = min(bare, bare_again)
    return {"T": length, "bare_s": base, "probe_off_ratio": off / base, "probe_recording_ratio": on / base}


def memory_child(mode: str, model_name: str, layers: int, length: int) -> None:
    """Run in a subprocess: one forward at T=length, print peak RSS and the bytes recorded."""
    from transformers_momentum.analysis import AttentionProbe

    model, _ = load(model_name, layers, attn="eager" if mode == "maps" else "sdpa")
    ids = torch.randint(10, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        if mode == "maps":
            maps = model(input_ids=ids, logits_to_keep=1, output_attentions=True, use_cache=False).attentions
            kept = sum(m.numel() * m.element_size() for m in maps)
        elif mode == "rows":
            probe = AttentionProbe(model)
            with probe.record_eval(-1):
                model(input_ids=ids, logits_to_keep=1, use_cache=False)
            record = probe.eval_record()
            kept = (
                sum(s.numel() * 4 for s in record.scores)
                + record.attention_output.numel() * 4
                + record.query.numel() * 4
            )
        else:
            model(input_ids=ids, logits_to_keep=1, use_cache=False)
            kept = 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "mode": mode,
                "peak_rss_mb": peak / 1024,
                "growth_mb": (peak - before) / 1024,
                "kept_bytes": kept,
            }
        )
    )


def bench_memory(model_name: str, layers: int, length: int) -> dict:
    out = {}
    for mode in ("bare", "rows", "maps"):
        line = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--model", model_name, "--layers", str(layers), "--length", str(length)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        out[mode] = json.loads(line)
    return out


def bench_per_example(model, tokenizer, n_eval: int, k: int) -> dict:
    from transformers_momentum.analysis import AnalysisConfig, analyze

    start = time.perf_counter()
    result = analyze(
        model,
        tokenizer,
        AnalysisConfig(task="sst2", k=k, n_eval=n_eval, lr=1e-3, controls=(), progress=False),
    )
    total = time.perf_counter() - start
    return {"n_eval": n_eval, "k": k, "total_s": total, "per_example_s": total / n_eval,
            "context_tokens": result.results["seeds"][0]["context_tokens"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=4, help="blocks of the 'tiny' SmolLM2-shaped model")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--overhead-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-eval", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args.child, args.model, args.layers, args.length)
        return
    model, tokenizer = load(args.model, args.layers)
    overhead = bench_overhead(model, args.overhead_length, args.repeats)
    print(f"probe overhead at T={overhead['T']}: bare {overhead['bare_s'] * 1e3:.1f} ms; recording off "
          f"{overhead['probe_off_ratio']:.3f}x, recording one row {overhead['probe_recording_ratio']:.3f}x")  # fmt: skip
    memory = bench_memory(args.model, args.layers, args.length)
    # Peak RSS growth during the forward (beyond the peak reached while loading the model), per mode.
    print(f"memory at T={args.length} ({args.model}): peak-RSS growth during the forward: bare "
          f"{memory['bare']['growth_mb']:.0f} MB, row capture {memory['rows']['growth_mb']:.0f} MB (kept "
          f"{memory['rows']['kept_bytes'] / 2**20:.2f} MiB), full maps {memory['maps']['growth_mb']:.0f} MB (kept "
          f"{memory['maps']['kept_bytes'] / 2**20:.0f} MiB); peak RSS rows {memory['rows']['peak_rss_mb']:.0f} MB vs "
          f"maps {memory['maps']['peak_rss_mb']:.0f} MB ({memory['maps']['peak_rss_mb'] / memory['rows']['peak_rss_mb']:.2f}x); "
          f"kept bytes maps/rows {memory['maps']['kept_bytes'] / memory['rows']['kept_bytes']:.0f}x")  # fmt: skip
    if tokenizer is not None:
        timing = bench_per_example(model, tokenizer, args.n_eval, args.k)
        print(f"ZSL+ICL+FT per analysed example (sst2, k={timing['k']}, context {timing['context_tokens']} tokens): "
              f"{timing['per_example_s']:.2f} s ({timing['total_s']:.1f} s for {timing['n_eval']}, FT included)")  # fmt: skip


if __name__ == "__main__":
    main()
