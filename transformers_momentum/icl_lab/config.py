"""The lab's settings: one dataclass, usable from Python, `HfArgumentParser` and the ``icl-lab`` CLI.

Plain Python on purpose (no torch import), so that ``transformers-momentum --help`` stays fast. Every value is
checked in `__post_init__`, before anything trains; list settings take a list or a comma-separated string.
"""

from __future__ import annotations

import math
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


def as_text_list(value) -> list[str]:
    """A list setting as given from Python or the CLI -- '0,0.5', ['0', '0.5'], ['0,0.5'], [0, 0.5] -- as the
    list of its items in text, ['0', '0.5']."""
    items = value if isinstance(value, list | tuple) else [value]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_floats(value, name: str) -> tuple[float, ...]:
    """Positive finite numbers from a list setting (empty allowed)."""
    values = []
    for item in as_text_list(value):
        try:
            number = float(item)
        except ValueError:
            raise LabInputError(f"{name}: {item!r} is not a number") from None
        if not (math.isfinite(number) and number > 0):
            raise LabInputError(f"{name}: every value must be a finite number > 0; got {item}")
        values.append(number)
    return tuple(values)


#: Integer settings and the least value each takes (every count of prompts, steps, sizes; 0 where 0 means "skip" or
#: "the default").
_MINIMUM = {
    "steps": 1, "n_dims": 1, "max_examples": 1, "num_layers": 1, "hidden_size": 1, "num_heads": 1, "batch_size": 1,
    "max_kv_pairs": 1, "vocab_size": 3, "lsa_steps": 0, "lsa_n_dims": 1, "lsa_context": 1, "n_eval": 1, "n_tune": 1,
    "n_align": 1, "n_probe": 1, "learner_steps": 0, "threads": 1, "n_gate": 1, "n_ood": 1, "anchor_every": 0,
    "curriculum_start_dims": 1, "curriculum_start_examples": 1, "curriculum_interval": 0,
}  # fmt: skip
#: Integer settings that may be None (unset), with the least value they take when set.
_OPTIONAL_MINIMUM = {"ood_extra_examples": 0, "sweep_seed": 0}
#: Float settings: (name, least value, whether the least value itself is allowed, greatest value or None).
_RANGES = (
    ("noise_std", 0.0, True, None),
    ("learning_rate", 0.0, False, None),
    ("lsa_learning_rate", 0.0, False, None),
    ("warmup_ratio", 0.0, True, 1.0),
    ("drift_std", 0.0, True, None),
    ("margin_relative", 0.0, False, 1.0),
    ("divergence_factor", 1.0, False, None),
    ("margin_absolute", 0.0, False, None),  # when set
)
DEVICES = ("cpu", "cuda")
#: numpy and torch take seeds in [0, 2**32).
_MAX_SEED = 2**32 - 1


@dataclass
class ICLLabArguments:
    """Settings of one lab run. Defaults are the headline settings of docs/icl_lab.md."""

    task: str = field(default="linear-regression", metadata={"help": "linear-regression or mqar."})
    etas: list[str] = field(
        default_factory=lambda: ["0", "0.25", "0.5", "0.9", LEARNABLE],
        metadata={
            "help": "Momentum arms: values in [0, 1) and/or 'learnable' (per-head eta); 0, the baseline every "
            "verdict is against, is required."
        },
    )
    seeds: list[str] = field(
        default_factory=lambda: ["1", "2", "3", "4", "5"],
        metadata={
            "help": "Training seeds (>= 5 for intervals worth reading; more where one straddles the margin)."
        },
    )
    steps: int = field(default=9000, metadata={"help": "Training steps per model."})
    out: str = field(
        default="icl_lab_runs", metadata={"help": "Output folder (resumable: finished runs are kept)."}
    )

    # Linear regression (Garg et al. 2022 prompt format)
    n_dims: int = field(default=2, metadata={"help": "Dimension d of the regression inputs."})
    max_examples: int = field(
        default=5,
        metadata={"help": "Most in-context examples K in a prompt (the anchor is tested at k >= 2d)."},
    )
    noise_std: float = field(default=0.0, metadata={"help": "Label noise standard deviation."})
    x_distribution: str = field(
        default="gaussian", metadata={"help": "gaussian (Garg) or uniform (von Oswald)."}
    )

    # MQAR (Arora et al. 2024, Zoology)
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
        default=10000, metadata={"help": "Evaluation prompts (one fixed set for every model and learner)."}
    )
    n_tune: int = field(default=2000, metadata={"help": "Held-out prompts to tune the learners on."})
    n_align: int = field(default=256, metadata={"help": "Prompts for the alignment measures."})
    n_probe: int = field(default=8, metadata={"help": "Probe queries per prompt for the update cosine."})
    learner_steps: int = field(
        default=0, metadata={"help": "Iterations of GD/Newton learners (0: num_layers)."}
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    # ---- issue 16: the anchor gate, per-arm learning rates, tasks, statistics, devices
    learning_rates: list[float] = field(
        default_factory=lambda: [1e-3, 3e-3],
        metadata={
            "help": "Per-arm learning-rate sweep: every arm trains once per rate (on --sweep-seed) and keeps the "
            "one with the lowest error on held-out prompts. Empty or one value: --learning-rate for every arm."
        },
    )
    sweep_seed: int | None = field(
        default=None, metadata={"help": "Seed of the sweep runs (default: the first of --seeds, reused)."}
    )
    anchor_every: int = field(
        default=0,
        metadata={"help": "Measure the anchor gap on held-out prompts every N steps (0: steps / 20)."},
    )
    n_gate: int = field(
        default=1000,
        metadata={"help": "Held-out prompts for steps-to-threshold and the learning-rate sweep."},
    )
    drift_std: float = field(
        default=0.0,
        metadata={"help": "Regression recency task: w random-walks along the prompt with this step."},
    )
    mqar_reassign: bool = field(
        default=False,
        metadata={"help": "MQAR recency task: re-assign one key late; the latest value answers."},
    )
    ood: bool = field(
        default=True, metadata={"help": "Out-of-distribution evaluation (x2, x0.5, skew, longer)."}
    )
    ood_extra_examples: int | None = field(
        default=None,
        metadata={"help": "Examples beyond training in the longer-prompt test (default: K; 0: none)."},
    )
    n_ood: int = field(default=2000, metadata={"help": "Prompts per out-of-distribution variant."})
    curriculum: bool = field(
        default=False, metadata={"help": "Garg et al.'s curriculum: grow the active dimensions and examples."}
    )
    curriculum_start_dims: int = field(
        default=1, metadata={"help": "Curriculum: active dimensions at first."}
    )
    curriculum_start_examples: int = field(default=2, metadata={"help": "Curriculum: examples at first."})
    curriculum_interval: int = field(
        default=0,
        metadata={"help": "Curriculum: steps per stage (+1 dimension, +2 examples; 0: steps / 10)."},
    )
    margin_relative: float = field(
        default=0.05,
        metadata={
            "help": "Equivalence margin (TOST) as a fraction of the eta = 0 arm's mean error (0.05: the size of "
            "Dai et al.'s effect)."
        },
    )
    margin_absolute: float | None = field(
        default=None,
        metadata={"help": "Equivalence margin in the headline's own unit (overrides the relative one)."},
    )
    divergence_factor: float = field(
        default=2.0,
        metadata={"help": "A seed diverged when its final training loss > this x its arm's median."},
    )
    device: str = field(
        default="cpu", metadata={"help": "cpu, cuda or cuda:N (the same command, larger settings)."}
    )
    cards_dir: str | None = field(
        default=None,
        metadata={
            "help": "After the run, write the eta = 0 model and the best momentum arm (first seed) as model-card "
            "folders here (e.g. model_cards)."
        },
    )

    def __post_init__(self):
        if self.task not in TASKS:
            raise LabInputError(f"--task must be one of {', '.join(TASKS)}; got {self.task!r}")
        self.etas, self.seeds = as_text_list(self.etas), as_text_list(self.seeds)
        self.eta_list = parse_etas(",".join(self.etas))
        if "0" not in self.eta_list:
            raise LabInputError(
                f"--etas must include 0, the baseline every verdict is against; got {','.join(self.etas)}"
            )
        self.seed_list = parse_ints(",".join(self.seeds), "--seeds")
        if len(set(self.seed_list)) != len(self.seed_list):
            raise LabInputError(f"--seeds: repeated seed in {','.join(self.seeds)}")
        if not all(0 <= seed <= _MAX_SEED for seed in self.seed_list):
            raise LabInputError(f"--seeds must be in [0, {_MAX_SEED}]; got {','.join(self.seeds)}")
        self.learning_rates = list(parse_floats(self.learning_rates, "--learning-rates"))
        self.learning_rate_list = tuple(self.learning_rates) or (self.learning_rate,)
        if len(set(self.learning_rate_list)) != len(self.learning_rate_list):
            raise LabInputError(f"--learning-rates: a rate is listed twice in {self.learning_rates}")
        # Every count is checked here, before anything trains: a zero --n-eval used to fail after all the training.
        for name, least in _MINIMUM.items():
            if getattr(self, name) < least:
                what = "a positive integer" if least == 1 else f"an integer >= {least}"
                raise LabInputError(f"--{name.replace('_', '-')} must be {what}; got {getattr(self, name)}")
        for name, least in _OPTIONAL_MINIMUM.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise LabInputError(f"--{name.replace('_', '-')} must be an integer >= {least}; got {value}")
        if self.sweep_seed is not None and self.sweep_seed > _MAX_SEED:
            raise LabInputError(f"--sweep-seed must be in [0, {_MAX_SEED}]; got {self.sweep_seed}")
        for name, least, closed, greatest in _RANGES:
            value = getattr(self, name)
            if value is None:  # an optional setting left unset
                continue
            if not (math.isfinite(value) and (value >= least if closed else value > least)) or (
                greatest is not None and value > greatest
            ):
                interval = (
                    f"{'[' if closed else '('}{least:g}, {'inf)' if greatest is None else f'{greatest:g}]'}"
                )
                raise LabInputError(f"--{name.replace('_', '-')} must be in {interval}; got {value}")
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
        if self.mqar_reassign and self.task != "mqar":
            raise LabInputError("--mqar-reassign applies to --task mqar")
        if self.mqar_reassign and self.vocab_size - 1 - (self.vocab_size - 1) // 2 < 2:
            raise LabInputError(
                f"--mqar-reassign needs two value tokens or more; --vocab-size {self.vocab_size} has one"
            )
        for name in ("drift_std", "curriculum"):
            if getattr(self, name) and self.task != "linear-regression":
                raise LabInputError(f"--{name.replace('_', '-')} applies to --task linear-regression")
        device, _, index = self.device.partition(":")
        if device not in DEVICES or (index and (device != "cuda" or not index.isdigit())):
            raise LabInputError(f"--device must be cpu, cuda or cuda:N; got {self.device!r}")
        if self.cards_dir is not None and ("0" not in self.eta_list or len(self.eta_list) < 2):
            raise LabInputError(
                f"--cards-dir exports the best momentum arm and its eta = 0 twin, so --etas needs 0 and at least one "
                f"momentum arm (e.g. 0,0.5 or 0,learnable); got {','.join(self.etas)}"
            )

    @property
    def extra_examples(self) -> int:
        """Examples beyond training in the longer-prompt test (regression): --ood-extra-examples, default K."""
        if not self.ood or self.task != "linear-regression":
            return 0
        return self.max_examples if self.ood_extra_examples is None else self.ood_extra_examples

    @property
    def iterations(self) -> int:
        """Iterations of the iterative reference learners: one per model layer unless set."""
        return self.learner_steps or self.num_layers

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {
            **asdict(self),
            "eta_list": list(self.eta_list),
            "seed_list": list(self.seed_list),
            "learning_rate_list": list(self.learning_rate_list),
            "extra_examples": self.extra_examples,
        }
