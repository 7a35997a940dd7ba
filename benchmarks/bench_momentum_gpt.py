"""MomentumGPT speed: train step and cached generation, as ratios against baselines measured in the same run.

    python benchmarks/bench_momentum_gpt.py [--hidden 256 --layers 4 --heads 4 --vocab 8192 --batch 4]

Compares MomentumGPT (eta=0.5) with the same model at eta=0 and with Hugging Face GPT2LMHeadModel of equal
dimensions (all sdpa, fp32). Timings are the best of interleaved repeats (the minimum is the least disturbed by
other processes on a shared machine, and interleaving makes slow drifts hit every variant alike); the paired
columns are the median over rounds of the ratio measured within one round. Targets (issue #2): momentum <= 1.05x the eta=0 step; MomentumGPT <= 1.0x GPT-2's step;
generation >= 0.95x GPT-2's tokens/s.
"""

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import transformers_momentum as tm


def build_models(args) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=args.vocab,
            n_positions=1024,
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
    return {"momentum_gpt(eta=0.5)": momentum, "momentum_gpt(eta=0)": vanilla, "gpt2": gpt2}


def time_train_step(model, ids, repeats) -> list[float]:
    model.train()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def time_generation(model, ids, new_tokens) -> float:
    model.eval()
    start = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return ids.shape[0] * new_tokens / elapsed


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
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=512)
    args = parser.parse_args()
    models = build_models(args)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, hidden={args.hidden}, "
        f"layers={args.layers}, heads={args.heads}, vocab={args.vocab}, batch={args.batch}"
    )

    print(
        "\n| train step (fwd+bwd) | T | best s | vs eta=0 | vs GPT-2 | paired median vs eta=0 | vs GPT-2 |"
        "\n|---|---|---|---|---|---|---|"
    )
    for length in args.lengths:
        ids = torch.randint(0, args.vocab, (args.batch, length))
        samples = {name: [] for name in models}
        for model in models.values():  # warm-up
            time_train_step(model, ids, 1)
        for _ in range(args.rounds):  # interleaved so drift hits every variant alike
            for name, model in models.items():
                samples[name] += time_train_step(model, ids, 1)
        best = {name: min(times) for name, times in samples.items()}
        for name, value in best.items():
            # Median over rounds of the ratio within a round: robust to load that changes between rounds.
            paired = {
                base: statistics.median(t / b for t, b in zip(samples[name], samples[base], strict=True))
                for base in ("momentum_gpt(eta=0)", "gpt2")
            }
            print(
                f"| {name} | {length} | {value:.4f} | {value / best['momentum_gpt(eta=0)']:.3f}x "
                f"| {value / best['gpt2']:.3f}x | {paired['momentum_gpt(eta=0)']:.3f}x | {paired['gpt2']:.3f}x |"
            )

    print("\n| cached generation | prompt | new tokens | tokens/s | vs GPT-2 |\n|---|---|---|---|---|")
    ids = torch.randint(1, args.vocab, (args.batch, args.prompt_length))
    rates = {name: [] for name in models}
    for model in models.values():
        time_generation(model, ids[:, :32], 4)  # warm-up
    for _ in range(max(3, args.rounds // 2)):
        for name, model in models.items():
            rates[name].append(time_generation(model, ids, args.new_tokens))
    best = {name: max(r) for name, r in rates.items()}
    for name, value in best.items():
        print(
            f"| {name} | {args.prompt_length} | {args.new_tokens} | {value:.1f} | {value / best['gpt2']:.3f}x |"
        )


if __name__ == "__main__":
    main()
