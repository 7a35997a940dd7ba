"""``transformers-momentum analyze``: the ICL-vs-finetuning analysis from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def add_cli(subparsers) -> None:
    """Register the ``analyze`` sub-command."""
    parser = subparsers.add_parser(
        "analyze",
        help="Compare in-context learning with K/V-only finetuning on a classification task (Dai et al. 2023).",
        description="Compare ICL with K/V-only finetuning on the same demonstrations; writes results.json, "
        "report.md and per-layer plots to --out.",
    )
    parser.add_argument(
        "--model", required=True, help="Local path, Hub id, or an offline name (e.g. smollm2-135m)."
    )
    parser.add_argument("--task", required=True, help="sst2, sst5, mr, subj, agnews or cb.")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Folder in the shared-data layout (or <dir>/<task>/{train,eval}.jsonl); default: bundled subsets.",
    )
    parser.add_argument(
        "--hub", action="store_true", help="Load the paper's Hugging Face dataset (needs network)."
    )
    parser.add_argument("--k", type=int, default=16, help="Number of demonstrations (default 16).")
    parser.add_argument("--n-eval", type=int, default=100, help="Evaluation examples analysed (default 100).")
    parser.add_argument(
        "--lr", type=float, default=None, help="FT learning rate; omit to tune it over --lr-grid."
    )
    parser.add_argument(
        "--lr-grid",
        type=_floats,
        default=(1e-4, 1e-3, 1e-2, 1e-1),
        help="Comma-separated rates to tune over.",
    )
    parser.add_argument(
        "--n-tune", type=int, default=32, help="Size of the tuning split held out of the demo pool."
    )
    parser.add_argument("--seed", type=int, default=None, help="One demonstration seed (default 1).")
    parser.add_argument(
        "--seeds", type=_ints, default=None, help="Several demonstration seeds, comma-separated."
    )
    parser.add_argument(
        "--select-seed",
        action="store_true",
        help="Analyse only the seed with the best tuning-split ICL accuracy.",
    )
    parser.add_argument(
        "--paper-protocol",
        action="store_true",
        help="Tune lr/seed on the evaluation examples, as the paper did (labelled in the report).",
    )
    parser.add_argument(
        "--analysis-position",
        choices=("label", "prompt"),
        default="label",
        help="'label' = appended candidate-0 token (paper code); 'prompt' = last prompt token.",
    )
    parser.add_argument(
        "--separator", choices=("eos", "newline"), default="eos", help="Token between demonstrations."
    )
    parser.add_argument(
        "--max-length", type=int, default=2048, help="Context budget in tokens (default 2048, the paper's)."
    )
    parser.add_argument(
        "--allow-fewer-demos",
        action="store_true",
        help="Use as many demos as fit instead of failing (the paper's 'true K').",
    )
    parser.add_argument(
        "--controls",
        default="untrained,lcgd,random_label,other_task,order",
        help="Comma-separated controls (untrained, lcgd, random_label, other_task, order), or 'none'.",
    )
    parser.add_argument(
        "--other-task", default=None, help="Task of the different-task FT control (default agnews, or sst2)."
    )
    parser.add_argument(
        "--order-permutations", type=int, default=2, help="Extra demonstration orders for the order control."
    )
    parser.add_argument(
        "--kendall-n", type=int, default=100, help="Examples used for Kendall τ (paper: 100)."
    )
    parser.add_argument(
        "--per-example", action="store_true", help="Also store per-example records in results.json."
    )
    parser.add_argument(
        "--attn-implementation", default="sdpa", help="Backend the probe wraps (sdpa or eager)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available).")
    parser.add_argument("--out", required=True, help="Output folder (written atomically).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --out.")
    parser.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run_analyze)


def load_model(name: str, *, attn_implementation: str = "sdpa", device: str | None = None):
    """Model and tokenizer from an offline name (transformers_momentum.assets), a local path or a Hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..assets import OFFLINE_MODELS, offline_model_path

    path = str(offline_model_path(name)) if name in OFFLINE_MODELS else name
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def run_analyze(args: argparse.Namespace) -> int:
    from .runner import CONTROLS, AnalysisConfig, analyze
    from .tasks import AnalysisInputError, get_task

    out = Path(args.out)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise AnalysisInputError(
                f"--out {out} exists and is not empty; pass --overwrite or choose another folder."
            )
        get_task(args.task)  # fail fast, before loading the model
        controls = (
            ()
            if args.controls.strip().lower() == "none"
            else tuple(c.strip() for c in args.controls.split(",") if c.strip())
        )
        seeds = args.seeds or ((args.seed,) if args.seed is not None else (1,))
        config = AnalysisConfig(
            task=args.task,
            k=args.k,
            n_eval=args.n_eval,
            seeds=seeds,
            lr=args.lr,
            lr_grid=args.lr_grid,
            n_tune=args.n_tune,
            paper_protocol=args.paper_protocol,
            select_seed=args.select_seed,
            analysis_position=args.analysis_position,
            separator=args.separator,
            max_length=args.max_length,
            allow_fewer_demos=args.allow_fewer_demos,
            kendall_n=args.kendall_n,
            controls=controls or (),
            other_task=args.other_task,
            order_permutations=args.order_permutations,
            per_example=args.per_example,
            data_dir=args.data_dir,
            hub=args.hub,
            progress=not args.quiet,
        )
        assert set(config.controls) <= set(CONTROLS)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model, tokenizer = load_model(
            args.model, attn_implementation=args.attn_implementation, device=args.device
        )
        result = analyze(model, tokenizer, config, model_name=args.model)
        result.save(out, plots=not args.no_plots)
    except (AnalysisInputError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    r = result.results
    print(
        f"{args.task}: ZSL {r['accuracy']['zsl']:.1f}  ICL {r['accuracy']['icl']:.1f}  FT {r['accuracy']['ft']:.1f}  "
        f"SimAOU {r['simaou']['mean']:.3f} (random {r['simaou']['random_mean']:.3f})  "
        f"SimAM {r['simam']['before_ft']:.3f} -> {r['simam']['after_ft']:.3f}  Kendall {r['kendall']['mean'] or float('nan'):.3f}"
    )
    print(f"wrote {out}/results.json, report.md and plots")
    return 0


__all__ = ["add_cli", "load_model", "run_analyze"]
