"""Two-process CPU data-parallel training of MomentumGPT with HF Trainer (launched by torchrun in a test).

Writes, per rank, what the test checks: the distributed type Trainer saw, whether the model was wrapped in DDP,
and a checksum of the trained parameters (which must agree across ranks if gradients were all-reduced).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from transformers_momentum import MomentumGPTConfig, MomentumGPTForCausalLM


def main(out_dir: str) -> None:
    text = (Path(__file__).parent.parent / "data" / "gutenberg_sample.txt").read_bytes()[:8192]
    blocks = [list(text[i : i + 32]) for i in range(0, len(text) - 32, 32)]
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    torch.manual_seed(0)
    config = MomentumGPTConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        momentum_eta=0.5,
        learnable_eta=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = MomentumGPTForCausalLM(config)
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=8,
        max_steps=6,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        logging_steps=1,
        # Each rank takes different batches: only the all-reduce keeps the replicas identical.
        dataloader_drop_last=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    record = {
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "distributed_type": str(trainer.accelerator.state.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "checksum": checksum,
        "backend": dist.get_backend() if dist.is_initialized() else None,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
