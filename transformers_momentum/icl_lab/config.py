"""The lab's settings: one dataclass, usable from Python, `HfArgumentParser` and the ``icl-lab`` CLI.

Plain Python on purpose (no torch import), so that ``transformers-momentum --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("linear-regression", "mqar")


class LabInputError(ValueError):
    """A setting or an output folder the lab cannot use; the CLI prints it as one line and exits with code 2."""


LEARNABLE = "learnable"  # the arm whose per-head eta is a trained parameter


def parse_etas(text: str) -> tuple[str, ...]:
    """'0,0.5,learnable' -> ('0', '0.5', 'learnable'), each checked (eta in [0, 1) or 'learnable')."""
    etas = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item != LEARNABLE:
            try:
                value = float(item)
            except ValueError:
                raise LabInputError(f"--etas: {item!r} is neither a number nor {LEARNABLE!r}") from None
            if not 0.0 <= value < 1.0:
                raise LabInputError(f"--etas: eta must be in [0, 1); got {item}")
            item = f"{value:g}"
        if item in etas:
            raise LabInputError(f"--etas: {item} is listed twice")
        etas.append(item)
    if not etas:
        raise LabInputError("--etas: give at least one value, e.g. 0,0.5")
    return tuple(etas)


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LabInputError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise LabInputError(f"{name}: give at least one integer")
    return values


@dataclass
class ICLLabArguments:
    """Settings of one lab run. Defaults are the headline settings of docs/icl_lab.md."""

    task: str = field(default="linear-regression", metadata={"help": "linear-regression or mqar."})
    etas: str = field(
        default="0,0.25,0.5,0.9,learnable",
        metadata={
            "help": "Momentum arms, comma-separated: values in [0, 1) and/or 'learnable' (per-head eta)."
        },
    )
    seeds: str = field(
        default="1,2,3,4,5", metadata={"help": "Training seeds (>= 5 for intervals worth reading)."}
    )
    steps: int = field(default=2000, metadata={"help": "Training steps per model."})
    out: str = field(
        default="icl_lab_runs", metadata={"help": "Output folder (resumable: finished runs are kept)."}
    )

    # Linear regression (Garg et al. 2022 prompt format)
    n_dims: int = field(default=3, metadata={"help": "Dimension d of the regression inputs."})
    max_examples: int = field(default=8, metadata={"help": "Most in-context examples k in a prompt."})
    noise_std: float = field(default=0.0, metadata={"help": "Label noise standard deviation."})
    x_distribution: str = field(
        default="gaussian", metadata={"help": "gaussian (Garg) or uniform (von Oswald)."}
    )

    # MQAR (Arora et al. 2023)
    vocab_size: int = field(default=64, metadata={"help": "MQAR vocabulary (keys and values split it)."})
    max_kv_pairs: int = field(default=8, metadata={"help": "Most MQAR key-value pairs per prompt."})

    # Model and optimisation (the same for every eta arm)
    num_layers: int = field(default=3, metadata={"help": "MomentumGPT layers."})
    hidden_size: int = field(default=64, metadata={"help": "MomentumGPT width."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per training step."})
    learning_rate: float = field(
        default=3e-3, metadata={"help": "Peak AdamW learning rate (cosine schedule)."}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps spent warming up."})
    learnable_eta_init: float = field(default=0.5, metadata={"help": "Starting eta of the learnable arm."})

    # Positive-control ladder: von Oswald et al.'s single-layer LSA setting
    lsa_steps: int = field(
        default=1500, metadata={"help": "Training steps of the single-layer LSA (0: skip)."}
    )
    lsa_learning_rate: float = field(
        default=1e-2, metadata={"help": "Peak learning rate of the LSA training."}
    )
    lsa_n_dims: int = field(default=10, metadata={"help": "LSA rung: input dimension (von Oswald: 10)."})
    lsa_context: int = field(default=10, metadata={"help": "LSA rung: context points N (von Oswald: 10)."})

    # Evaluation
    n_eval: int = field(
        default=1000, metadata={"help": "Evaluation prompts (one fixed set for every model)."}
    )
    n_tune: int = field(default=2000, metadata={"help": "Held-out prompts to tune the learners on."})
    n_align: int = field(default=256, metadata={"help": "Prompts for the alignment measures."})
    n_probe: int = field(default=8, metadata={"help": "Probe queries per prompt for the update cosine."})
    learner_steps: int = field(
        default=0, metadata={"help": "Iterations of GD/Newton learners (0: num_layers)."}
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise LabInputError(f"--task must be one of {', '.join(TASKS)}; got {self.task!r}")
        self.eta_list = parse_etas(self.etas)
        self.seed_list = parse_ints(self.seeds, "--seeds")
        if len(set(self.seed_list)) != len(self.seed_list):
            raise LabInputError(f"--seeds: repeated seed in {self.seeds}")
        for name in (
            "steps",
            "n_dims",
            "max_examples",
            "num_layers",
            "hidden_size",
            "num_heads",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise LabInputError(
                    f"--{name.replace('_', '-')} must be a positive integer; got {getattr(self, name)}"
                )
        if self.hidden_size % self.num_heads:
            raise LabInputError(
                f"--hidden-size ({self.hidden_size}) must be divisible by --num-heads ({self.num_heads})"
            )
        if self.x_distribution not in ("gaussian", "uniform"):
            raise LabInputError(f"--x-distribution must be gaussian or uniform; got {self.x_distribution!r}")
        if not 0.0 < self.learnable_eta_init < 1.0:
            raise LabInputError(f"--learnable-eta-init must be in (0, 1); got {self.learnable_eta_init}")
        if self.task == "mqar" and (self.vocab_size - 1) // 2 < self.max_kv_pairs:
            raise LabInputError(
                f"--vocab-size {self.vocab_size} has too few keys for --max-kv-pairs {self.max_kv_pairs}; "
                f"use --vocab-size >= {2 * self.max_kv_pairs + 1}"
            )

    @property
    def iterations(self) -> int:
        """Iterations of the iterative reference learners: one per model layer unless set."""
        return self.learner_steps or self.num_layers

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "eta_list": list(self.eta_list), "seed_list": list(self.seed_list)}
