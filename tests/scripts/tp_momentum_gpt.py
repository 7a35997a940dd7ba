"""Two-process CPU tensor parallelism of MomentumGPT (launched by torchrun in a test).

Rank 0 first saves a tiny checkpoint and its reference outputs from one unsharded process; then both ranks load the
checkpoint with the model's `tp_plan` (heads split across the 2 ranks, gloo), and each writes what the test compares:
its logits, its greedy continuation, the loss and the gradients of one training step (gathered to full tensors),
and the shape of its local shards.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig

from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM


def reference(checkpoint: Path, learnable_eta: bool) -> None:
    torch.manual_seed(0)
    config = MomentumGPTConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        momentum_eta=0.6,
        learnable_eta=learnable_eta,
        momentum_chunk_size=8,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MomentumGPTForCausalLM(config).eval()
    if learnable_eta:
        with torch.no_grad():
            for layer in model.model.layers:  # distinct etas per head, so a misaligned shard would show
                layer.attn.eta_logit.copy_(torch.linspace(-1.5, 1.5, 4))
    model.save_pretrained(checkpoint)
    ids = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    logits = model(ids).logits.detach()
    prompt = ids[:, :10]
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False
    )
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = {f"grad.{name}": p.grad for name, p in model.named_parameters()}
    save_file({"ids": ids, "logits": logits, "generated": generated, "loss": loss.detach()[None], **grads},
              checkpoint / "reference.safetensors")  # fmt: skip


def _local_rows(parameter: torch.Tensor) -> int:
    """Rows this rank holds (a DTensor's local shard; a plain tensor if the plan left it whole)."""
    return int((parameter.to_local() if hasattr(parameter, "to_local") else parameter).shape[0])


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    records = {}
    for learnable_eta in (False, True):
        checkpoint = Path(out_dir) / f"checkpoint-learnable{int(learnable_eta)}"
        if rank == 0:
            reference(checkpoint, learnable_eta)
        dist.barrier()
        expected = load_file(checkpoint / "reference.safetensors")
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, distributed_config=DistributedConfig(tp_size=2)
        )
        model.eval()
        ids = expected["ids"]
        with torch.no_grad():
            logits = model(ids).logits
        prompt = ids[:, :10]
        generated = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False
        )
        model.train()
        loss = model(ids, labels=ids).loss
        loss.backward()
        grad_error = 0.0
        for name, parameter in model.named_parameters():
            grad = parameter.grad
            grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
            grad_error = max(grad_error, float((grad - expected[f"grad.{name}"]).abs().max()))
        attention = model.model.layers[0].attn
        records[str(learnable_eta)] = {
            "logits_error": float((logits - expected["logits"]).abs().max()),
            "generated_equal": bool(torch.equal(generated, expected["generated"])),
            "loss_error": float((loss.detach() - expected["loss"][0]).abs()),
            "grad_error": grad_error,
            "q_proj_local_rows": _local_rows(attention.q_proj.weight),
            "eta_local_heads": _local_rows(attention.eta_logit) if learnable_eta else None,
        }
    record = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "runs": records,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
