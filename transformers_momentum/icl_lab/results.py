"""The lab's one results schema: typed records that `results.json`, `report.md`, the plots and the model cards all
read. Stages fill them (evaluation -> `RunRecord`; statistics -> `ArmSummary`, `GateRecord`, `MomentumRecord`), and
`LabResults.save` / `LabResults.load` round-trip them through JSON (NaN is written as null).

Conventions: every headline number is an *error* (lower is better): regression, squared error / d; MQAR,
1 − accuracy. Seeds and k are string keys in mappings (JSON object keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .statistics import Comparison, t_interval

SCHEMA_VERSION = 2
#: Bump when the per-run evaluation changes, so cached evaluations are recomputed (trained models are kept).
EVAL_VERSION = 2


@dataclass
class Interval:
    """Mean of `n` values with its 95% Student-t interval (low/high NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values) -> Interval:
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        low, high = t_interval(values)
        return cls(sum(values) / len(values), low, high, len(values))


@dataclass
class Curve:
    """A quantity against k (examples, or MQAR key-value pairs): mean and 95% interval over `over`."""

    k: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: int
    over: str = "training seeds"

    @classmethod
    def of(cls, ks, rows, over: str = "training seeds") -> Curve:
        """`rows`: one list of values per unit (seed or prompt), each as long as `ks`."""
        columns = [Interval.of(column) for column in zip(*rows)] if rows else []
        return cls(
            k=list(ks),
            mean=[c.mean for c in columns],
            low=[c.low for c in columns],
            high=[c.high for c in columns],
            n=len(rows),
            over=over,
        )

    def at(self, k: int) -> Interval:
        index = self.k.index(k)
        return Interval(self.mean[index], self.low[index], self.high[index], self.n)


@dataclass
class RunRecord:
    """One trained model (arm eta, seed) and everything measured on it."""

    eta: str
    seed: int
    learning_rate: float
    steps: int
    headline: float  # regression: mean error over k = 1..K; MQAR: mean error rate over 1..max pairs
    anchor_gap: (
        float  # the gate's quantity on the evaluation prompts (lower is better; <= threshold: reached)
    )
    curve: list[float]  # error per k (regression) or per number of pairs (MQAR)
    final_loss: float | None = None
    train_seconds: float | None = None
    steps_to_threshold: int | None = None
    anchor_trace: list[list[float]] = field(default_factory=list)  # [step, gap] on held-out prompts
    ood: dict[str, list[float]] = field(default_factory=dict)  # variant -> error per k
    extra: dict[str, float] = field(default_factory=dict)  # e.g. accuracy on re-assigned MQAR keys
    learned_etas: list[list[float]] | None = None
    # learner -> k -> per layer {"preds_diff", "sensitivity_cosine"}
    alignment: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    update_cosine: dict[str, dict[str, float]] = field(default_factory=dict)  # FT variant -> k -> cosine
    untrained_update_cosine: dict[str, dict[str, float]] = field(default_factory=dict)
    learner_hyperparameters: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    eval_version: int = EVAL_VERSION


@dataclass
class SweepRecord:
    """The per-arm learning-rate sweep: each candidate trained on `seed`, scored on held-out prompts."""

    eta: str
    seed: int
    held_out: dict[str, float]  # learning rate (as text) -> held-out error
    chosen: float


@dataclass
class ArmSummary:
    eta: str
    learning_rate: float
    curve: Curve
    headline: Interval
    steps_to_threshold: dict[str, int | None]
    final_loss: dict[str, float | None]
    diverged: dict[str, float]  # seed -> final loss, by the divergence rule
    ood: dict[str, Curve] = field(default_factory=dict)
    extra: dict[str, Interval] = field(default_factory=dict)
    learned_eta: dict[str, float] | None = None  # mean / min / max over seeds, layers and heads
    train_seconds: Interval | None = None


@dataclass
class LearnerSummary:
    name: str
    description: str
    curve: Curve  # over evaluation prompts
    hyperparameters: dict[str, dict[str, float]]  # k -> tuned values
    ood: dict[str, Curve] = field(default_factory=dict)
    non_monotone_k: list[int] = field(default_factory=list)  # k whose mean exceeds the interval at k - 1


@dataclass
class GateRecord:
    """The anchor gate: no verdict unless the eta = 0 baseline reaches the anchor."""

    anchor: str
    criterion: str
    threshold: float
    testable: bool
    reached: bool
    value: float  # the baseline's gap (mean over its non-diverged seeds)
    per_seed: dict[str, float]
    steps_to_threshold: dict[str, int | None]
    message: str


@dataclass
class MomentumRecord:
    measure: str
    margin: float
    margin_rule: str
    baseline_mean: float
    verdicts_given: bool
    withheld_reason: str | None
    excluded_seeds: dict[str, float]  # baseline seeds left out of the pairs (seed -> final loss)
    divergence_rule: str
    comparisons: dict[str, Comparison]  # arm -> comparison with eta = 0
    # Position-axis alignment: cos(model, online momentum SGD) - cos(model, online SGD), arm minus eta = 0 (on
    # 1 - cosine, so lower is "more momentum-like")
    alignment_gain: dict[str, Comparison] = field(default_factory=dict)


@dataclass
class AlignmentEntry:
    preds_diff: Interval  # last layer, mean over the alignment ks
    sensitivity_cosine: Interval
    per_k_cosine: dict[str, Interval]
    per_layer_preds_diff: list[Interval]
    per_layer_cosine: list[Interval]


@dataclass
class ControlRung:
    name: str
    ft_definition: str
    preds_diff: Interval
    sensitivity_cosine: Interval
    update_cosine: dict[str, Interval]  # FT variant -> cosine
    error: Interval | None = None
    learner_error: dict[str, float] = field(default_factory=dict)


@dataclass
class PositiveControl:
    setting: dict[str, Any]
    rungs: list[ControlRung]


@dataclass
class LabResults:
    task: str
    config: dict[str, Any]
    environment: dict[str, Any]
    arms: dict[str, ArmSummary]
    runs: dict[str, dict[str, RunRecord]]
    gate: GateRecord
    momentum: MomentumRecord
    sweeps: dict[str, SweepRecord] = field(default_factory=dict)
    learners: dict[str, LearnerSummary] = field(default_factory=dict)
    baselines: dict[str, list[float]] = field(default_factory=dict)  # MQAR chance levels per number of pairs
    alignment: dict[str, dict[str, AlignmentEntry]] = field(default_factory=dict)
    alignment_ks: list[int] = field(default_factory=list)
    update_cosine: dict[str, dict[str, dict[str, Interval]]] = field(default_factory=dict)
    untrained_update_cosine: dict[str, dict[str, dict[str, Interval]]] = field(default_factory=dict)
    ood_variants: dict[str, str] = field(default_factory=dict)  # name -> what it changes
    headline_ks: list[int] = field(default_factory=list)  # k = d and 2d (regression)
    positive_control: PositiveControl | None = None
    schema_version: int = SCHEMA_VERSION

    def save(self, path: str | Path) -> Path:
        return write_json(path, to_jsonable(self))

    @classmethod
    def load(cls, path: str | Path) -> LabResults:
        return from_jsonable(cls, json.loads(Path(path).read_text()))


# ------------------------------------------------------------------------------------------------ JSON round trip


def to_jsonable(value):
    """Dataclasses -> dicts, tuples -> lists, non-finite floats -> None, keys -> str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):  # tensors and numpy scalars
        return to_jsonable(value.tolist())
    return value


def from_jsonable(kind, data):
    """Rebuild a value of type `kind` (a dataclass, container or scalar annotation) from its JSON form."""
    origin = typing.get_origin(kind)
    if kind is Any or kind is None:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        return from_jsonable(options[0], data)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        known = {f.name for f in dataclasses.fields(kind)}
        return kind(
            **{name: from_jsonable(hints[name], value) for name, value in data.items() if name in known}
        )
    if origin is list:
        (item,) = typing.get_args(kind) or (Any,)
        return [from_jsonable(item, value) for value in data]
    if origin is dict:
        _, item = typing.get_args(kind) or (str, Any)
        return {key: from_jsonable(item, value) for key, value in data.items()}
    if kind is float:
        return math.nan if data is None else float(data)
    return data


def write_json(path: str | Path, data) -> Path:
    """Write atomically: an interruption never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(to_jsonable(data), indent=1))
    os.replace(tmp, path)
    return path


__all__ = [
    "EVAL_VERSION",
    "SCHEMA_VERSION",
    "AlignmentEntry",
    "ArmSummary",
    "Comparison",
    "ControlRung",
    "Curve",
    "GateRecord",
    "Interval",
    "LabResults",
    "LearnerSummary",
    "MomentumRecord",
    "PositiveControl",
    "RunRecord",
    "SweepRecord",
    "from_jsonable",
    "to_jsonable",
    "write_json",
]
