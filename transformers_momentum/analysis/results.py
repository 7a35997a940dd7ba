"""The typed results of an analysis run: one schema that results.json, the report and the plots all read.

    AnalysisResult
    ├── config                      AnalysisConfig as a dict (everything that decides the numbers)
    ├── run                         model, data, token layout, versions, wall time
    ├── statistics                  what every interval is over (statistics.describe_intervals)
    ├── models["pretrained"]        ModelResult; models["untrained"] with the untrained-model control
    │   ├── accuracy_zsl, accuracy_icl, simam_before, simaou_uniform_null, ...   Estimate (settings without FT)
    │   ├── comparisons["gd" | "lcgd" | "random_label" | "flipped_label" | "other_task"]
    │   │                                                                          ComparisonResult (ICL vs one FT)
    │   └── order                                                                  OrderResult (Shen et al.)
    ├── seeds                       SeedInfo per demonstration seed (k, lr, lr search, demos)
    └── warnings                    things the reader must know (FT collapsed to one class, ...)

Every metric is an `Estimate`: the mean; `ci95`, the 95% interval that resamples demonstration seeds and evaluation
examples together (Owen's pigeonhole bootstrap), with `interval` saying what it is over; `ci95_examples_only`, the
interval over examples with the seeds' demonstrations held fixed; `n` examples and `n_seeds` seeds; per-layer means;
and each seed's own value (`per_seed`, `seed_sd`).

Schema 3 (crossed intervals, the `flipped_label` control, `random_label` drawn uniformly) replaced schema 2, whose
`ci95` was over examples only and whose `random_label` was a derangement; files of schema 2 are refused, not misread.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .statistics import Estimate

SCHEMA = "transformers-momentum/analysis/3"


@dataclass
class WeightSpace:
    """cos(ΔW_ICL, ΔW_FT) in the relaxed linear-attention form, per layer and key/value head (mean over seeds)."""

    mean: float
    per_layer: list[float]
    per_layer_head: list[list[float]]
    per_seed: list[float]


@dataclass
class ComparisonResult:
    """ICL against one FT variant on one model: every metric that involves FT."""

    variant: str
    label: str
    accuracy_ft: Estimate
    rec2ftp: float | None
    rec2ftp_counts: list[int]  # [examples FT fixes (FT right, ZSL wrong), of which ICL also gets right]
    simaou: Estimate
    simaou_shuffled_null: Estimate
    simam_after: Estimate
    delta_simam: Estimate
    kendall: Estimate
    kendall_random: Estimate
    kendall_pre_rotary: Estimate
    topk_recall: Estimate
    topk_random: Estimate
    output_kl: Estimate  # KL(p_ICL || p_FT) of the next-token distributions, nats
    output_topk: Estimate
    weight_space: WeightSpace | None
    ft_losses: list[list[float]]  # per seed, per SGD step
    info: list[dict] = field(default_factory=list)  # per seed: labels used and kept, flip mapping, other task


@dataclass
class OrderResult:
    """Shen et al.'s order test: the same demonstrations in `orders` orders, for ICL (prompt) and FT (SGD order)."""

    orders: int
    icl_flip_rate: Estimate  # % of examples whose prediction changes with the order
    ft_flip_rate: Estimate
    icl_gold_prob_std: Estimate  # std over orders of P(gold) (softmax over the candidates' scores)
    ft_gold_prob_std: Estimate


@dataclass
class ModelResult:
    """Everything measured on one model (the pretrained model, or the untrained control)."""

    accuracy_zsl: Estimate
    accuracy_icl: Estimate
    simam_before: Estimate
    simaou_uniform_null: Estimate  # the paper's Uniform[0,1) baseline (not zero-mean)
    simaou_gaussian_null: Estimate
    output_kl_zsl: Estimate  # KL(p_ICL || p_ZSL): the reference FT should shrink
    output_topk_zsl: Estimate
    comparisons: dict[str, ComparisonResult]
    order: OrderResult | None = None


@dataclass
class SeedInfo:
    seed: int
    k_effective: int
    context_tokens: int
    lr: float
    lr_search: dict[str, float] | None = None
    demo_indices: list[int] = field(default_factory=list)


def _clean(value):
    # JSON has no NaN or infinity: write null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return value


def _from_dict(cls, data):
    """Rebuild a dataclass tree from its `dataclasses.asdict` form."""
    if data is None:
        return None
    kwargs = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in data.items():
        hint = str(hints.get(name, ""))
        if hint.startswith("Estimate"):
            value = Estimate(**value)
        elif hint.startswith("WeightSpace"):
            value = _from_dict(WeightSpace, value)
        elif hint.startswith("OrderResult"):
            value = _from_dict(OrderResult, value)
        elif hint.startswith("dict[str, ComparisonResult]"):
            value = {k: _from_dict(ComparisonResult, v) for k, v in value.items()}
        kwargs[name] = value
    return cls(**kwargs)


@dataclass
class AnalysisResult:
    """The outcome of `analyze`: typed, serialised to results.json by :meth:`save`."""

    config: dict[str, Any]
    run: dict[str, Any]
    statistics: dict[str, Any]
    models: dict[str, ModelResult]
    seeds: list[SeedInfo]
    warnings: list[str] = field(default_factory=list)
    records: Any = None  # `records.Records` with --save-records (written to records.npz, not results.json)

    # ------------------------------------------------------------------------------------------ access

    def estimate(self, metric: str, variant: str = "gd", model: str = "pretrained") -> Estimate | None:
        """A metric by name: a `ModelResult` field (``"accuracy_icl"``, ``"simam_before"``, ...) or a
        `ComparisonResult` field of `variant` (``"simaou"``, ``"kendall"``, ...)."""
        result = self.models[model]
        if metric in ModelResult.__dataclass_fields__:
            return getattr(result, metric)
        comparison = result.comparisons.get(variant)
        return None if comparison is None else getattr(comparison, metric)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema": SCHEMA,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "records"},
        }
        data["models"] = {name: dataclasses.asdict(m) for name, m in self.models.items()}
        data["seeds"] = [dataclasses.asdict(s) for s in self.seeds]
        return _clean(data)

    def __getitem__(self, path: str) -> Any:
        """Dotted access into :meth:`to_dict`, e.g. ``result["models.pretrained.comparisons.gd.simaou.mean"]``."""
        node: Any = self.to_dict()
        for part in path.split("."):
            node = node[part]
        return node

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisResult:
        schema = data.get("schema")
        if schema != SCHEMA:
            earlier = isinstance(schema, str) and schema.startswith(SCHEMA.rsplit("/", 1)[0] + "/")
            hint = (
                "; it was written by an earlier version of the analyzer: rerun the analysis"
                if earlier
                else ""
            )
            raise ValueError(f"not an analysis results file of schema {SCHEMA!r} (got {schema!r}){hint}")
        return cls(
            config=data["config"],
            run=data["run"],
            statistics=data["statistics"],
            models={name: _from_dict(ModelResult, m) for name, m in data["models"].items()},
            seeds=[SeedInfo(**s) for s in data["seeds"]],
            warnings=data.get("warnings", []),
        )

    @classmethod
    def load(cls, path: str | Path) -> AnalysisResult:
        """Read a results.json (or the folder holding it)."""
        path = Path(path)
        return cls.from_dict(
            json.loads((path / "results.json" if path.is_dir() else path).read_text("utf-8"))
        )

    def save(self, out_dir: str | Path, *, plots: bool = True, overwrite: bool = True) -> Path:
        """results.json, report.md, the plots and (with records) records.npz, written atomically."""
        from .report import write_outputs

        return write_outputs(self, out_dir, plots=plots, overwrite=overwrite)


__all__ = [
    "SCHEMA",
    "AnalysisResult",
    "ComparisonResult",
    "ModelResult",
    "OrderResult",
    "SeedInfo",
    "WeightSpace",
]
