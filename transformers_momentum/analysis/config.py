"""What decides an analysis run, as dataclasses: the Python API takes them and the CLI is built from them.

`AnalysisConfig` holds everything that changes the numbers (it is saved as ``config`` in results.json);
`ModelArguments` and `OutputArguments` say where the model comes from and where the results go (CLI only). The
``analyze`` sub-command adds every field as an option with transformers' `HfArgumentParser` rules
(``n_eval`` -> ``--n-eval``; lists take several values: ``--seeds 1 2 3``; ``bool`` fields are flags, and those
that default to True get a ``--no-...`` complement), so the API and the CLI cannot disagree on a default.

This module imports nothing heavy: it is read when ``transformers-momentum --help`` builds the parser.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from .errors import AnalysisInputError

# Deutch et al. 2024: the untrained model and layer-causal GD; different-task FT; random-label FT (labels drawn
# uniformly, Min et al. 2022) and flipped-label FT (a consistent inverted mapping, Wei et al. 2023); Shen et al. 2024:
# the demonstration-order test.
CONTROLS = ("untrained", "lcgd", "random_label", "flipped_label", "other_task", "order")
#: torch's names of the precisions, accepted for ``dtype`` beside the short ones.
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Dai et al. 2023, Appendix B: {1..9} x {0.1, 0.01, 0.001, 0.0001}.
PAPER_LR_GRID = tuple(m * s for s in (0.1, 0.01, 0.001, 0.0001) for m in range(1, 10))


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class AnalysisConfig:
    """Everything that decides an analysis run's numbers (saved as ``config`` in results.json)."""

    task: str = field(
        default="sst2", metadata=_help("sst2, sst5, mr, subj, agnews, cb, or a registered TaskSpec.")
    )
    k: int = field(default=16, metadata=_help("Number of demonstrations."))
    n_eval: int = field(
        default=100, metadata=_help("Evaluation examples analysed (eval split shuffled with seed 1).")
    )
    seeds: list[int] = field(
        # Five draws: intervals resample seeds as well as examples, and with fewer than 3 the seed variance is
        # barely estimable (statistics.FEW_SEEDS).
        default_factory=lambda: [1, 2, 3, 4, 5],
        metadata=_help("Demonstration seeds (intervals resample them; use at least 3).", aliases=["--seed"]),
    )
    lr: float | None = field(
        default=None,
        metadata=_help("FT learning rate; None (the default) tunes it over lr_grid on a tuning split."),
    )
    lr_grid: list[float] = field(
        default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1], metadata=_help("Learning rates to tune over.")
    )
    n_tune: int = field(default=32, metadata=_help("Size of the tuning split held out of the demo pool."))
    paper_protocol: bool = field(
        default=False,
        metadata=_help(
            "Tune lr/seed on the evaluation examples themselves, as the paper did (labelled in the report)."
        ),
    )
    select_seed: bool = field(
        default=False, metadata=_help("Analyse only the seed with the best tuning-split ICL accuracy.")
    )
    analysis_position: Literal["label", "prompt"] = field(
        default="label",
        metadata=_help(
            "'label': the appended candidate-0 token (the paper's code); 'prompt': the last prompt token."
        ),
    )
    separator: Literal["eos", "newline"] = field(
        default="eos",
        metadata=_help("Token(s) between demonstrations: the EOS token (fairseq's </s>) or '\\n'."),
    )
    start_token: str | None = field(
        default=None,
        metadata=_help(
            "Token string that starts every sequence (default: the tokenizer's BOS, else its EOS)."
        ),
    )
    newline: Literal["keep", "eos"] = field(
        default="keep",
        metadata=_help("'eos' encodes every '\\n' in the text as the EOS token (fairseq's line convention)."),
    )
    max_length: int = field(default=2048, metadata=_help("Context budget in tokens (the paper's 2048)."))
    allow_fewer_demos: bool = field(
        default=False, metadata=_help("Use as many demos as fit instead of failing (the paper's 'true K').")
    )
    kendall_n: int = field(
        default=100, metadata=_help("Examples used for Kendall tau (the paper's code: 100).")
    )
    topk: int = field(default=100, metadata=_help("k of the top-k token recall beside Kendall tau."))
    controls: list[str] = field(
        default_factory=lambda: list(CONTROLS),
        metadata=_help(f"Controls to run, any of {', '.join(CONTROLS)}; 'none' for none."),
    )
    other_task: str | None = field(
        default=None,
        metadata=_help("Task of the different-task FT control (default agnews; sst2 for agnews)."),
    )
    order_permutations: int = field(
        default=2, metadata=_help("Extra demonstration orders for the order control.")
    )
    output_topk: int = field(default=10, metadata=_help("k of the next-token top-k overlap of ICL and FT."))
    batch_size: int = field(
        default=8,
        metadata=_help("Sequences per ZSL/ICL/FT evaluation forward (the ICL context cache is shared)."),
    )
    save_records: bool = field(
        default=False,
        metadata=_help(
            "Also write records.npz: per example and layer the attention outputs, score rows and query similarities "
            "every headline metric is computed from."
        ),
    )
    data_dir: str | None = field(
        default=None, metadata=_help("Folder with <task>/train.jsonl and <task>/eval.jsonl (or .csv, .tsv).")
    )
    hub: bool = field(
        default=False, metadata=_help("Load the paper's Hugging Face datasets (needs network).")
    )
    n_resamples: int = field(default=9999, metadata=_help("Bootstrap resamples per interval."))
    bootstrap_seed: int = field(
        default=0, metadata=_help("Seed of the bootstrap and of the random baselines.")
    )
    progress: bool = field(default=True, metadata=_help("Progress bars with ETA."))

    def __post_init__(self):
        self.seeds = [int(s) for s in self.seeds]
        self.lr_grid = [float(x) for x in self.lr_grid]
        controls = [c.strip() for c in self.controls if c.strip()]
        self.controls = [] if [c.lower() for c in controls] == ["none"] else controls
        unknown = sorted(set(self.controls) - set(CONTROLS))
        if unknown:
            raise AnalysisInputError(f"Unknown control(s) {unknown}; known: {list(CONTROLS)} or 'none'.")
        for name in ("k", "n_eval", "batch_size", "order_permutations", "output_topk", "topk", "n_resamples"):
            if getattr(self, name) < 1:
                raise AnalysisInputError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.kendall_n < 0 or self.n_tune < 0:
            raise AnalysisInputError("kendall_n and n_tune must be >= 0.")
        if not self.seeds:
            raise AnalysisInputError("At least one demonstration seed is needed.")
        if self.lr is None and not self.lr_grid:
            raise AnalysisInputError("Give a learning rate or a non-empty lr_grid to tune it on.")
        if self.lr is not None and self.lr < 0:
            raise AnalysisInputError(f"lr must be >= 0, got {self.lr}.")
        # Checked here, not when tuning starts after the model loaded. `not 0 <= x < inf` also catches nan.
        if self.lr is not None and not 0 <= self.lr < float("inf"):
            raise AnalysisInputError(f"lr must be a finite number >= 0, got {self.lr}.")
        bad_lrs = [x for x in self.lr_grid if not 0 <= x < float("inf")]
        if bad_lrs:
            raise AnalysisInputError(f"lr_grid values must be finite numbers >= 0, got {bad_lrs}.")
        if self.max_length < 1:
            raise AnalysisInputError(f"max_length must be >= 1, got {self.max_length}.")
        if min(self.seeds) < 0 or self.bootstrap_seed < 0:  # numpy's generators take no negative seed
            raise AnalysisInputError(
                f"seeds and bootstrap_seed must be >= 0, got seeds={self.seeds}, "
                f"bootstrap_seed={self.bootstrap_seed}."
            )
        if self.start_token is not None and not self.start_token.strip():
            raise AnalysisInputError(
                "start_token is empty; name a token of the tokenizer, or leave it unset."
            )
        for name, allowed in (
            ("analysis_position", ("label", "prompt")),
            ("separator", ("eos", "newline")),
            ("newline", ("keep", "eos")),
        ):
            if getattr(self, name) not in allowed:
                raise AnalysisInputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")

    def replace(self, **changes) -> "AnalysisConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class ModelArguments:
    """Which model to analyse and how to load it (the ``analyze`` sub-command; `load_model` in Python)."""

    model: str = field(metadata=_help("Local folder, Hub id, or an offline name (e.g. smollm2-135m)."))
    dtype: Literal["fp32", "bf16", "fp16"] = field(
        default="fp32",
        metadata=_help("Weights and forwards in this precision; metrics are computed in fp32/fp64."),
    )
    device: str | None = field(
        default=None, metadata=_help("cpu, cuda, cuda:1, ...; None picks cuda when available.")
    )
    device_map: str | None = field(
        default=None, metadata=_help("'auto' spreads the model over the available devices with accelerate.")
    )
    max_memory: str | None = field(
        default=None,
        metadata=_help(
            "Memory per device for the device map, accelerate's format: '0=20GiB,1=20GiB,cpu=60GiB' (GPU index, "
            "cpu, mps or disk = size). What does not fit is offloaded to CPU memory, then disk. Implies "
            "--device-map auto."
        ),
    )
    offload_folder: str | None = field(
        default=None,
        metadata=_help("Folder for the weights a device map offloads to disk. Implies --device-map auto."),
    )
    autocast: bool = field(
        default=True,
        metadata=_help(
            "With --dtype bf16/fp16 (the default mixed precision, as Trainer(bf16=True) and accelerate do it): keep "
            "the weights, the K/V deltas, their gradients and the SGD step in fp32 and run the forwards under "
            "torch.autocast in that dtype. --no-autocast casts the weights instead: half the memory, but bf16 "
            "weights are a slightly different model and their K/V gradients are ~40%% off fp32 (docs/analysis.md)."
        ),
    )
    attn_implementation: str | None = field(
        default=None, metadata=_help("Attention backend the probe wraps (default: the model's own default).")
    )
    threads: int | None = field(default=None, metadata=_help("torch.set_num_threads (CPU)."))

    def __post_init__(self):
        # torch's names for the precisions are accepted too (the CLI lists them as choices).
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise AnalysisInputError(
                f"dtype must be fp32, bf16 or fp16 (or float32, bfloat16, float16), got {self.dtype!r}."
            )
        if self.threads is not None and self.threads < 1:
            raise AnalysisInputError(f"threads must be >= 1, got {self.threads}.")
        if self.max_memory is not None:  # a malformed --max-memory fails before data or model are loaded
            from .loading import parse_max_memory

            parse_max_memory(self.max_memory)


@dataclass
class OutputArguments:
    """Where the results go (the ``analyze`` sub-command)."""

    out: str = field(metadata=_help("Output folder (written atomically)."))
    overwrite: bool = field(default=False, metadata=_help("Replace a non-empty --out folder."))
    plots: bool = field(default=True, metadata=_help("Per-layer PNG plots."))
    quiet: bool = field(default=False, metadata=_help("No progress bars and no library warnings."))


__all__ = ["CONTROLS", "PAPER_LR_GRID", "AnalysisConfig", "ModelArguments", "OutputArguments"]
