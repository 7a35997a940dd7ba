"""Two-process CPU data-parallel run of the pretraining recipe (launched by torchrun in tests/test_pretrain_ddp.py).

Each rank writes what the test checks: the distributed type Trainer saw, whether the model was wrapped in DDP, and
a checksum of the trained parameters (equal across ranks only if gradients were really all-reduced).
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from transformers_momentum.pretraining import (
    DataArguments,
    ModelArguments,
    pretrain,
    recipe_training_arguments,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def record(out_dir: Path):
    def hook(trainer) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        model = trainer.accelerator.unwrap_model(trainer.model)
        state = {
            "rank": rank,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "distributed_type": str(trainer.accelerator.state.distributed_type),
            "wrapped": type(trainer.model_wrapped).__name__,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
            "first_values": model.lm_head.weight.detach().flatten()[:16].tolist(),
            "global_step": trainer.state.global_step,
        }
        (out_dir / f"rank{rank}.json").write_text(json.dumps(state))

    return hook


def main(out_dir: str) -> None:
    out = Path(out_dir)
    model_args = ModelArguments(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, momentum_eta=0.5)
    data_args = DataArguments(
        train_files=[str(DATA / "corpus_sample.txt")],
        validation_files=[str(DATA / "corpus_valid_sample.txt")],
        vocab_size=300,
        tokenizer_train_chars=30_000,
        block_size=32,
        eval_blocks=8,
        eval_lengths=[16, 32],
    )
    training_args = recipe_training_arguments(
        str(out / "run"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,  # 8 validation blocks = one evaluation step of 2 processes x 4
        max_steps=6,
        eval_steps=3,
        save_steps=6,
        logging_steps=1,
        use_cpu=True,  # without it, torchrun on CPU silently gives two unsynchronised trainings
        disable_tqdm=True,
    )
    pretrain(model_args, data_args, training_args, after_training=record(out))


if __name__ == "__main__":
    main(sys.argv[1])
