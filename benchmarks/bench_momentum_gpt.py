"""MomentumGPT speed: train step, cached generation, static-cache decoding and torch.compile, as ratios against
baselines measured in the same run.

    python benchmarks/bench_momentum_gpt.py [--hidden 256 --layers 4 --heads 4 --vocab 8192 --batch 4]
                                            [--sections train generate static compile]

Compares MomentumGPT (eta=0.5) with the same model at eta=0 and with Hugging Face GPT2LMHeadModel of equal
dimensions (all sdpa, fp32):

* train: one forward+backward step, momentum vs eta=0 vs GPT-2, at each --lengths.
* generate: greedy decoding tokens/s with the default dynamic cache, vs GPT-2.
* static: greedy decoding tokens/s with `cache_implementation="static"` vs the dynamic cache, for MomentumGPT and
  GPT-2 (eager decoding: generate() compiles static-cache steps on accelerators only).
* compile: the train step of `torch.compile(model)` (inductor) vs eager, for MomentumGPT and GPT-2.

Variants are interleaved round by round, so load that comes and goes on a shared machine hits each alike. "best" is
the fastest round; "paired" is the median over rounds of the ratio measured within one round, the figure to quote.
Targets: momentum <= 1.05x the eta=0 step; MomentumGPT <= 1.0x GPT-2's step; generation >= 0.95x GPT-2's tokens/s.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import transformers_momentum as tm

MOMENTUM, VANILLA, GPT2 = "momentum_gpt(eta=0.5)", "momentum_gpt(eta=0)", "gpt2"


def build_models(args) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=args.vocab,
            n_positions=2048,
            n_embd=args.hidden,
            n_layer=args.layers,
            n_head=args.heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
        )
    )
    momentum = tm.gpt2_to_momentum_gpt(gpt2, momentum_eta=0.5)
    vanilla = tm.gpt2_to_momentum_gpt(gpt2, momentum_eta=0.0)
    return {MOMENTUM: momentum, VANILLA: vanilla, GPT2: gpt2}


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """One measurement of every variant per round, after one warm-up call each."""
    for run in runs.values():
        run()
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def paired(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of the within-round ratio name/base: robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[base], strict=True))


def train_step(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        model.train()
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        return time.perf_counter() - start

    return run


def generation(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, **settings) -> Callable[[], float]:
    """Seconds per generated token (lower is better; reported as tokens/s)."""

    @torch.no_grad()
    def run() -> float:
        model.eval()
        start = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **settings,
        )
        elapsed = time.perf_counter() - start
        assert out.shape[1] == ids.shape[1] + new_tokens
        return elapsed / (ids.shape[0] * new_tokens)

    return run


def bench_train(models, args) -> None:
    print(
        "\n| train step (fwd+bwd) | T | best s | paired vs eta=0 | paired vs GPT-2 |\n|---|---|---|---|---|"
    )
    for length in args.lengths:
        ids = torch.randint(0, args.vocab, (args.batch, length))
        samples = interleaved({name: train_step(model, ids) for name, model in models.items()}, args.rounds)
        for name in models:
            print(
                f"| {name} | {length} | {min(samples[name]):.4f} | {paired(samples, name, VANILLA):.3f}x "
                f"| {paired(samples, name, GPT2):.3f}x |"
            )


def bench_generation(models, args) -> None:
    ids = torch.randint(1, args.vocab, (args.batch, args.prompt_length))
    runs = {name: generation(model, ids, args.new_tokens) for name, model in models.items()}
    samples = interleaved(runs, max(3, args.rounds // 2))
    print(
        "\n| cached generation (dynamic) | prompt | new tokens | tokens/s (best) | paired vs GPT-2 |"
        "\n|---|---|---|---|---|"
    )
    for name in models:
        # tokens/s ratio = inverse of the seconds-per-token ratio
        print(
            f"| {name} | {args.prompt_length} | {args.new_tokens} | {1 / min(samples[name]):.1f} "
            f"| {1 / paired(samples, name, GPT2):.3f}x |"
        )


def bench_static(models, args) -> None:
    ids = torch.randint(1, args.vocab, (args.batch, args.prompt_length))
    runs = {}
    for name in (MOMENTUM, GPT2):
        runs[f"{name} dynamic"] = generation(models[name], ids, args.new_tokens)
        runs[f"{name} static"] = generation(models[name], ids, args.new_tokens, cache_implementation="static")
    samples = interleaved(runs, max(3, args.rounds // 2))
    print(
        "\n| decoding cache | prompt | new tokens | tokens/s (best) | paired static vs dynamic |"
        "\n|---|---|---|---|---|"
    )
    for name in (MOMENTUM, GPT2):
        for kind in ("dynamic", "static"):
            ratio = 1 / paired(samples, f"{name} static", f"{name} dynamic")
            print(
                f"| {name} {kind} | {args.prompt_length} | {args.new_tokens} "
                f"| {1 / min(samples[f'{name} {kind}']):.1f} | {ratio if kind == 'static' else 1.0:.3f}x |"
            )


def bench_compile(models, args) -> None:
    ids = torch.randint(0, args.vocab, (args.batch, args.compile_length))
    runs = {}
    for name in (MOMENTUM, GPT2):
        model = models[name]
        compiled = torch.compile(
            model, fullgraph=name == MOMENTUM
        )  # MomentumGPT compiles without graph breaks
        start = time.perf_counter()
        train_step(compiled, ids)()  # the compilation itself (reported, not timed in the rounds)
        print(f"compiling {name}'s train step took {time.perf_counter() - start:.0f} s")
        runs[f"{name} eager"] = train_step(model, ids)
        runs[f"{name} compiled"] = train_step(compiled, ids)
    samples = interleaved(runs, args.rounds)
    print("\n| train step (fwd+bwd) | T | best s | paired compiled vs eager (time) |\n|---|---|---|---|")
    for name in (MOMENTUM, GPT2):
        for kind in ("eager", "compiled"):
            ratio = paired(samples, f"{name} compiled", f"{name} eager") if kind == "compiled" else 1.0
            print(
                f"| {name} {kind} | {args.compile_length} | {min(samples[f'{name} {kind}']):.4f} | {ratio:.3f}x |"
            )


SECTIONS = {
    "train": bench_train,
    "generate": bench_generation,
    "static": bench_static,
    "compile": bench_compile,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--compile-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    models = build_models(args)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, hidden={args.hidden}, "
        f"layers={args.layers}, heads={args.heads}, vocab={args.vocab}, batch={args.batch}, rounds={args.rounds}"
    )
    for section in args.sections:
        SECTIONS[section](models, args)


if __name__ == "__main__":
    main()
