"""K/V-only finetuning cost: trainable-parameter fraction and train-step time vs full finetuning and vs peft LoRA.

    python benchmarks/bench_kv_tuning.py [--model smollm2-135m | gpt2-tiny] [--batch 2 --seq 64 --repeats 3]

One run builds the same model four times: full finetuning (every parameter), `KVTuningConfig()` (the paper's K/V
setting), peft `LoraConfig(r=8)` on the same K/V projections, and peft `LNTuningConfig` on k_proj/v_proj (the
built-in route for separate projections; skipped for fused models). A train step is forward + backward + AdamW step
on random token ids (fp32, sdpa). Timings are the best of interleaved repeats after one warm-up step (the minimum is
the least disturbed by other processes on a shared machine; interleaving makes slow drifts hit every variant alike).
Everything is printed as a ratio to full finetuning measured in the same run.
"""

import argparse
import time

import torch
from peft import LNTuningConfig, LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from transformers_momentum.architectures import get_architecture
from transformers_momentum.kv_tuning import KVTuningConfig


def load_base(name: str) -> torch.nn.Module:
    if name == "gpt2-tiny":
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=4, n_embd=256, n_head=4, vocab_size=8192, n_positions=512, bos_token_id=0, eos_token_id=0
        )
        config._attn_implementation = "sdpa"
        return GPT2LMHeadModel(config)
    from transformers_momentum.assets import load_offline_model

    model, _ = load_offline_model(name, attn_implementation="sdpa")
    return model


def build_variants(name: str) -> dict[str, torch.nn.Module]:
    variants: dict[str, torch.nn.Module] = {"full finetuning": load_base(name)}
    variants["KVTuningConfig"] = get_peft_model(load_base(name), KVTuningConfig())
    spec = get_architecture(variants["full finetuning"])
    kv_names = list(spec.kv.module_names)  # LoRA on the same projections (the fused one for GPT-2)
    variants["LoRA r=8 (same K/V modules)"] = get_peft_model(
        load_base(name), LoraConfig(r=8, lora_alpha=16, target_modules=kv_names, task_type="CAUSAL_LM")
    )
    if spec.kv.fused is None:
        variants["LNTuningConfig(k,v)"] = get_peft_model(
            load_base(name), LNTuningConfig(target_modules=kv_names, task_type="CAUSAL_LM")
        )
    return variants


def trainable_fraction(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter_markers = ("kv_tuning_", "lora_", "ln_tuning_layers")  # the base model's own parameters only
    total = sum(p.numel() for n, p in model.named_parameters() if not any(m in n for m in adapter_markers))
    return trainable, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="an offline model name, or gpt2-tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    try:
        variants = build_variants(args.model)
    except (FileNotFoundError, OSError, KeyError, ValueError) as error:
        print(f"{args.model} unavailable ({error}); falling back to gpt2-tiny")
        args.model = "gpt2-tiny"
        variants = build_variants(args.model)
    vocab = variants["full finetuning"].config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.1)
        for name, model in variants.items()
    }

    def step(name: str) -> float:
        model, optimizer = variants[name], optimizers[name]
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for model in variants.values():
        model.train()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name in variants:  # warm-up (allocations, optimizer state)
        step(name)
    for _ in range(args.repeats):
        for name in variants:
            times[name].append(step(name))

    baseline_time = min(times["full finetuning"])
    full_trainable, _ = trainable_fraction(variants["full finetuning"])
    print(
        f"model={args.model} batch={args.batch} seq={args.seq} repeats={args.repeats} threads={args.threads}"
    )
    print(
        f"{'variant':30s} {'trainable':>12s} {'fraction':>9s} {'vs full':>8s} {'step s':>8s} {'vs full':>8s}"
    )
    for name, model in variants.items():
        trainable, total = trainable_fraction(model)
        best = min(times[name])
        print(
            f"{name:30s} {trainable:12,d} {trainable / total:9.4%} {trainable / full_trainable:8.4f} "
            f"{best:8.3f} {best / baseline_time:8.3f}"
        )
    kv_time, lora_time = min(times["KVTuningConfig"]), min(times["LoRA r=8 (same K/V modules)"])
    print(f"KVTuning step / LoRA step: {kv_time / lora_time:.3f}")


if __name__ == "__main__":
    main()
