"""`transformers-momentum convert-gpt2`: turn a GPT-2 checkpoint into a MomentumGPT checkpoint."""

import argparse
from pathlib import Path


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-gpt2",
        help="Convert a GPT-2 checkpoint (path or Hub id) into MomentumGPT, optionally with momentum.",
        description="At --eta 0 the converted model reproduces GPT-2's logits exactly; a positive eta starts "
        "continued pretraining with momentum attention from GPT-2's weights.",
    )
    parser.add_argument("--model", required=True, help="GPT-2 checkpoint: local folder or Hub id")
    parser.add_argument("--eta", type=float, default=0.0, help="momentum coefficient in [0, 1) (default 0)")
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for the MomentumGPT checkpoint"
    )
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from .convert import gpt2_to_momentum_gpt

    gpt2 = GPT2LMHeadModel.from_pretrained(args.model)
    model = gpt2_to_momentum_gpt(gpt2, momentum_eta=args.eta)
    model.save_pretrained(args.out)
    try:
        AutoTokenizer.from_pretrained(args.model).save_pretrained(args.out)
    except (OSError, ValueError):
        print(f"note: no tokenizer found at {args.model}; copy one into {args.out} yourself")
    print(f"wrote MomentumGPT (momentum_eta={args.eta}) to {args.out}")
    return 0
