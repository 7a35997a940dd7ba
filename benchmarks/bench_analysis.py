"""Analyzer costs, each measured against a baseline in the same run.

1. Throughput: analysed examples per second of the evaluation phase (ZSL + ICL with the cached demonstration
   context + vanilla-GD FT, every forward recorded by the probe) at several batch sizes, as a ratio to batch 1
   (goal: >= 3x at batch 8 on SmolLM2-135M on CPU).
2. Probe overhead: forward time with the probe installed (recording off, and recording one analysis row) divided by
   the bare model's forward time (target: <= 1.05 with recording off).
3. Memory at T = 2048, each in a fresh subprocess: peak resident memory of a forward that records only the score rows
   vs one that materialises every attention map (eager, ``output_attentions=True``); and of the batched ICL
   evaluation of 8 examples after a ~2048-token context at batch 1 vs batch 8.
4. Processes: ``transformers-momentum analyze`` end to end in one process (1 and 2 threads) vs two CPU processes of
   one thread each (``torchrun --standalone --nproc_per_node 2``, each evaluating half of the examples): analysed
   examples per second of the analysis (``run.wall_seconds`` of results.json: data, FT, evaluation, statistics;
   not the imports and model loading, which every process repeats) and of the whole command.

    python benchmarks/bench_analysis.py [--model smollm2-135m|tiny] [--threads 1] [--batch-sizes 1,2,4,8]
    python benchmarks/bench_analysis.py --skip throughput,overhead,memory --processes-n-eval 32

``--model tiny`` uses a random Llama with SmolLM2's shape (width 576, 9/3 heads) and ``--layers`` blocks.
No GPU benchmark is included here: the machine this was written on has none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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


def load(name: str, layers: int, attn: str | None = None):
    if name == "tiny":
        return smollm2_shaped(layers, attn or "sdpa"), None
    from transformers_momentum.analysis import load_model

    return load_model(name, attn_implementation=attn, device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------ throughput


def _engine(model, tokenizer, batch_size: int, k: int, max_length: int = 2048, allow_fewer: bool = False):
    from transformers_momentum.analysis import (
        AnalysisConfig,
        PromptLayout,
        choose_demos,
        get_task,
        load_task_data,
    )
    from transformers_momentum.analysis.engine import Engine

    config = AnalysisConfig(task="sst2", batch_size=batch_size, progress=False)
    layout = PromptLayout(tokenizer, get_task("sst2"))
    data = load_task_data("sst2")
    examples = list(data.eval.shuffle(seed=1))
    budget = max_length - layout.longest_query(examples[:64])
    demos = choose_demos(data.train, 1, layout, k, budget, allow_fewer=allow_fewer)
    return Engine(model, layout, config), layout, demos, examples


def bench_throughput(model, tokenizer, batch_sizes: list[int], n_eval: int, k: int) -> dict:
    results = {}
    for batch_size in batch_sizes:
        engine, layout, demos, examples = _engine(model, tokenizer, batch_size, k)
        try:
            state, _ = engine.finetune([layout.ft_sequence(d) for d in demos], 1e-3)
            prefix = engine.prefix(layout.context(demos))
            zero = engine.scorer.prefix(layout.zero_shot_context())
            chunk = examples[:n_eval]
            engine.evaluate(zero, chunk[:batch_size], engine.zero_state)  # warm-up
            start, cpu = time.perf_counter(), time.process_time()
            for offset in range(0, n_eval, 4 * batch_size):  # as the pipeline does: 4 batches per chunk
                part = chunk[offset : offset + 4 * batch_size]
                engine.evaluate(zero, part, engine.zero_state, moments=True)
                engine.evaluate(prefix, part, engine.zero_state)
                engine.evaluate(zero, part, state)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        finally:
            engine.close()
        results[batch_size] = {
            "seconds": elapsed,
            "examples_per_s": n_eval / elapsed,
            # CPU time is less sensitive than wall time to other jobs on a shared machine
            "examples_per_cpu_s": n_eval / cpu,
            "context": len(layout.context(demos)),
        }
    return results


# ------------------------------------------------------------------------------------------------ probe overhead


def time_forward(model, ids, repeats: int, context) -> float:
    times = []
    for _ in range(repeats):
        with torch.no_grad(), context():
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1, use_cache=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_overhead(model, length: int, repeats: int) -> dict:
    from transformers_momentum.analysis import AttentionProbe

    ids = torch.randint(10, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    bare = time_forward(model, ids, repeats, contextlib.nullcontext)
    probe = AttentionProbe(model)
    off = time_forward(model, ids, repeats, contextlib.nullcontext)
    on = time_forward(model, ids, repeats, lambda: probe.record_eval(-1))
    probe.remove()
    base = min(bare, time_forward(model, ids, repeats, contextlib.nullcontext))
    return {"T": length, "bare_s": base, "probe_off_ratio": off / base, "probe_recording_ratio": on / base}


# ------------------------------------------------------------------------------------------------ memory


def memory_child(mode: str, model_name: str, layers: int, length: int) -> None:
    """Run in a subprocess: one measured step at T=length, print peak RSS growth and the bytes recorded."""
    from transformers_momentum.analysis import AttentionProbe

    model, tokenizer = load(model_name, layers, attn="eager" if mode == "maps" else None)
    kept = 0
    if mode.startswith("icl-batch"):
        batch_size = int(mode.removeprefix("icl-batch"))
        engine, layout, demos, examples = _engine(
            model, tokenizer, batch_size, 10_000, max_length=length, allow_fewer=True
        )
        prefix = engine.prefix(layout.context(demos))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        observations = engine.evaluate(prefix, examples[:8], engine.zero_state)
        kept = sum(sum(s.numel() * 4 for s in o.record.scores) for o in observations)
        length = len(layout.context(demos))
    else:
        ids = torch.randint(10, 1000, (1, length), generator=torch.Generator().manual_seed(0))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            if mode == "maps":
                maps = model(
                    input_ids=ids, logits_to_keep=1, output_attentions=True, use_cache=False
                ).attentions
                kept = sum(m.numel() * m.element_size() for m in maps)
            else:
                probe = AttentionProbe(model)
                with probe.record_eval(-1):
                    model(input_ids=ids, logits_to_keep=1, use_cache=False)
                record = probe.eval_record()
                kept = sum(s.numel() * 4 for s in record.scores) + record.attention_output.numel() * 4
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "mode": mode,
                "T": length,
                "peak_rss_mb": peak / 1024,
                "growth_mb": (peak - before) / 1024,
                "kept_bytes": kept,
            }
        )
    )


def bench_memory(model_name: str, layers: int, length: int, modes) -> dict:
    out = {}
    for mode in modes:
        line = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--model", model_name, "--layers", str(layers), "--length", str(length)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        out[mode] = json.loads(line)
    return out


# ------------------------------------------------------------------------------------------------ processes


def bench_processes(model_name: str, n_eval: int, k: int, batch_size: int) -> dict:
    """The analyze command with 1 process x 1 thread, 1 process x 2 threads and 2 processes x 1 thread."""
    import shutil
    import tempfile
    from pathlib import Path

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    setups = {"1 process x 1 thread": ([sys.executable], 1), "1 process x 2 threads": ([sys.executable], 2)}
    setups["2 processes x 1 thread"] = ([torchrun, "--standalone", "--nproc_per_node", "2"], 1)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (launcher, threads) in setups.items():
            out = Path(folder) / name.replace(" ", "_")
            command = [
                *launcher, "-m", "transformers_momentum", "analyze", "--model", model_name, "--task", "sst2",
                "--k", str(k), "--n-eval", str(n_eval), "--seeds", "1", "--lr", "1e-3", "--controls", "none",
                "--batch-size", str(batch_size), "--n-resamples", "200", "--no-plots", "--quiet", "--device", "cpu",
                "--threads", str(threads), "--out", str(out),
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            total = time.perf_counter() - start
            run = json.loads((out / "results.json").read_text())["run"]
            results[name] = {
                "analysis_s": run["wall_seconds"],
                "command_s": total,
                "examples_per_s": n_eval / run["wall_seconds"],
                "examples_per_s_command": n_eval / total,
                "processes": run.get("processes", 1),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=4, help="blocks of the 'tiny' SmolLM2-shaped model")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--n-eval", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--overhead-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes-n-eval", type=int, default=32, help="examples of the processes part")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: throughput, overhead, memory, processes"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args.child, args.model, args.layers, args.length)
        return
    skip = set(args.skip.split(","))
    model, tokenizer = load(args.model, args.layers)
    if "throughput" not in skip and tokenizer is not None:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        results = bench_throughput(model, tokenizer, sizes, args.n_eval, args.k)
        base, base_cpu = results[sizes[0]]["examples_per_s"], results[sizes[0]]["examples_per_cpu_s"]
        print(f"throughput (sst2, k={args.k}, context {results[sizes[0]]['context']} tokens, {args.n_eval} examples, "
              f"ZSL+ICL+FT recorded, {args.threads} thread(s)):")  # fmt: skip
        for size, r in results.items():
            print(f"  batch {size}: {r['examples_per_s']:.2f} examples/s wall ({r['examples_per_s'] / base:.2f}x batch "
                  f"{sizes[0]}), {r['examples_per_cpu_s']:.2f} per CPU second ({r['examples_per_cpu_s'] / base_cpu:.2f}x)")  # fmt: skip
    if "overhead" not in skip:
        overhead = bench_overhead(model, args.overhead_length, args.repeats)
        print(f"probe overhead at T={overhead['T']}: bare {overhead['bare_s'] * 1e3:.1f} ms; recording off "
              f"{overhead['probe_off_ratio']:.3f}x, recording one row {overhead['probe_recording_ratio']:.3f}x")  # fmt: skip
    if "memory" not in skip:
        modes = ["rows", "maps"] + (["icl-batch1", "icl-batch8"] if tokenizer is not None else [])
        memory = bench_memory(args.model, args.layers, args.length, modes)
        rows, maps = memory["rows"], memory["maps"]
        print(f"memory at T={args.length}: peak-RSS growth of one forward: row capture {rows['growth_mb']:.0f} MB (kept "
              f"{rows['kept_bytes'] / 2**20:.2f} MiB) vs full maps {maps['growth_mb']:.0f} MB (kept "
              f"{maps['kept_bytes'] / 2**20:.0f} MiB); peak RSS {rows['peak_rss_mb']:.0f} vs {maps['peak_rss_mb']:.0f} MB")  # fmt: skip
        if "icl-batch1" in memory:
            one, eight = memory["icl-batch1"], memory["icl-batch8"]
            print(f"ICL evaluation of 8 examples after a {one['T']}-token context: peak-RSS growth batch 1 "
                  f"{one['growth_mb']:.0f} MB, batch 8 {eight['growth_mb']:.0f} MB; peak RSS {one['peak_rss_mb']:.0f} vs "
                  f"{eight['peak_rss_mb']:.0f} MB")  # fmt: skip
    if "processes" not in skip and tokenizer is not None:
        runs = bench_processes(args.model, args.processes_n_eval, args.k, 8)
        base = runs["1 process x 1 thread"]
        print(f"processes (analyze sst2, k={args.k}, {args.processes_n_eval} examples, 1 seed, lr given, no controls, "
              f"batch 8; CPU):")  # fmt: skip
        for name, r in runs.items():
            print(f"  {name}: {r['examples_per_s']:.2f} examples/s in the analysis ({r['analysis_s']:.1f} s, "
                  f"{r['examples_per_s'] / base['examples_per_s']:.2f}x), {r['examples_per_s_command']:.2f} end to end "
                  f"({r['command_s']:.1f} s with imports and model loading)")  # fmt: skip


if __name__ == "__main__":
    main()
