"""Metric collection: per evaluation example, from what the engine observed, the values every metric averages.

`SeedCollector` turns the observations of one seed (ZSL, ICL and every FT variant of each example) into per-example
arrays (examples x layers). Nothing but these arrays is kept unless records are asked for; `statistics` turns them
into estimates over examples and seeds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Observation
from .metrics import (
    attention_update,
    cosine,
    delta_simam,
    ft_attention_to_training_tokens,
    kendall,
    output_kl,
    simam,
    simaou,
    simaou_null,
    topk_recall,
)

# Per-example, per-layer arrays of one FT variant (NaN where a metric is not defined for the example).
VARIANT_METRICS = (
    "simaou",
    "simaou_shuffled_null",
    "simam_after",
    "delta_simam",
    "kendall",
    "kendall_random",
    "kendall_pre_rotary",
    "topk_recall",
    "topk_random",
)


@dataclass
class KendallInputs:
    """What Kendall τ of one variant needs: the aligned context positions and training-token indices, the
    training tokens' queries per layer, and which recorded query to compare them with."""

    icl_positions: torch.Tensor
    ft_indices: torch.Tensor
    train_queries: list[torch.Tensor] | None  # queries attention used (or the projection's, without rotary)
    test_query: str  # "query" or "projected_query": the ProbeRecord field that matches train_queries
    pre_rotary: list[torch.Tensor] | None  # query-projection outputs, for rotary models


@dataclass
class VariantValues:
    correct: list[bool] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    gold_probability: list[float] = field(default_factory=list)
    output_kl: list[float] = field(default_factory=list)
    output_topk: list[float] = field(default_factory=list)
    per_layer: dict[str, list[np.ndarray]] = field(default_factory=lambda: {m: [] for m in VARIANT_METRICS})
    previous_delta: torch.Tensor | None = None


@dataclass
class SeedValues:
    """Per-example values of one seed on one model."""

    gold: list[int] = field(default_factory=list)
    zsl_predicted: list[int] = field(default_factory=list)
    icl_predicted: list[int] = field(default_factory=list)
    icl_gold_probability: list[float] = field(default_factory=list)
    simam_before: list[np.ndarray] = field(default_factory=list)
    simaou_uniform_null: list[np.ndarray] = field(default_factory=list)
    simaou_gaussian_null: list[np.ndarray] = field(default_factory=list)
    output_kl_zsl: list[float] = field(default_factory=list)
    output_topk_zsl: list[float] = field(default_factory=list)
    variants: dict[str, VariantValues] = field(default_factory=dict)
    # Δ_ICL of the first example collected: `join_shards` pairs it with the previous shard's last FT update.
    first_delta_icl: torch.Tensor | None = None

    @property
    def zsl_correct(self) -> np.ndarray:
        return np.asarray(self.zsl_predicted) == np.asarray(self.gold)

    @property
    def icl_correct(self) -> np.ndarray:
        return np.asarray(self.icl_predicted) == np.asarray(self.gold)


class SeedCollector:
    """Folds the observations of one seed into `SeedValues`, example by example in evaluation order.

    The random baselines draw from generators seeded with ``bootstrap_seed + seed`` in a fixed order (per example:
    the Uniform and the Gaussian SimAOU nulls, then per variant and layer the Kendall noise), so a run's numbers do
    not depend on the batch size. A collector of one process's share of the examples (`distributed.shard`) starts
    at their `offset` in the evaluation order: it first replays (draws and discards) what the examples before it
    drew, so each example gets the baselines a one-process run gives it; `join_shards` joins the shares.
    """

    def __init__(
        self,
        *,
        seed: int,
        bootstrap_seed: int,
        start: int,
        context_length: int,
        num_layers: int,
        kendall: dict[str, KendallInputs | None],
        kendall_n: int,
        topk: int,
        output_topk: int,
        records=None,
        offset: int = 0,
    ):
        self.values = SeedValues(variants={name: VariantValues() for name in kendall})
        self.generator = torch.Generator().manual_seed(bootstrap_seed + seed)
        self.rng = np.random.default_rng(bootstrap_seed + seed)
        self.start, self.context_length, self.num_layers = start, context_length, num_layers
        self.kendall, self.kendall_n, self.topk, self.output_topk = kendall, kendall_n, topk, output_topk
        self.records = records
        self.index = self.offset = offset

    def add(
        self,
        examples: list[dict],
        zsl: list[Observation],
        icl: list[Observation],
        ft: dict[str, list[Observation]],
    ):
        for i, example in enumerate(examples):
            self._add_one(example, zsl[i], icl[i], {name: obs[i] for name, obs in ft.items()})
            self.index += 1

    def _add_one(self, example: dict, zsl: Observation, icl: Observation, ft: dict[str, Observation]) -> None:
        values, gold = self.values, int(example["label"])
        values.gold.append(gold)
        values.zsl_predicted.append(zsl.predicted)
        values.icl_predicted.append(icl.predicted)
        values.icl_gold_probability.append(float(icl.scores.probabilities[gold]))
        icl_log_probs, zsl_log_probs = icl.scores.next_token_log_probs, zsl.scores.next_token_log_probs
        values.output_kl_zsl.append(output_kl(icl_log_probs, zsl_log_probs))
        values.output_topk_zsl.append(topk_recall(icl_log_probs, zsl_log_probs, self.output_topk))
        # Score rows over the query-example keys: after START (ZSL, FT), after the whole context (ICL).
        zsl_q = [s[:, self.start :] for s in zsl.record.scores]
        icl_q = [s[:, self.context_length :] for s in icl.record.scores]
        values.simam_before.append(simam(icl_q, zsl_q).numpy())
        delta_icl = attention_update(zsl.record.attention_output, icl.record.attention_output)
        if self.index == self.offset:
            values.first_delta_icl = delta_icl
            self._replay_draws(delta_icl, icl, ft)
        values.simaou_uniform_null.append(simaou_null(delta_icl, "uniform", self.generator).numpy())
        values.simaou_gaussian_null.append(simaou_null(delta_icl, "gaussian", self.generator).numpy())
        if self.records is not None:
            self.records.add_settings(self.index, gold, zsl, icl, zsl_q, icl_q)
        for name, observation in ft.items():
            self._add_variant(name, gold, zsl, icl, observation, zsl_q, icl_q, delta_icl)

    def _add_variant(self, name, gold, zsl, icl, ft: Observation, zsl_q, icl_q, delta_icl) -> None:
        variant = self.values.variants[name]
        variant.predicted.append(ft.predicted)
        variant.correct.append(ft.predicted == gold)
        variant.gold_probability.append(float(ft.scores.probabilities[gold]))
        icl_log_probs = icl.scores.next_token_log_probs
        variant.output_kl.append(output_kl(icl_log_probs, ft.scores.next_token_log_probs))
        variant.output_topk.append(
            topk_recall(icl_log_probs, ft.scores.next_token_log_probs, self.output_topk)
        )
        layers = np.full(self.num_layers, math.nan)
        row = {metric: layers.copy() for metric in VARIANT_METRICS}
        row["simaou"] = simaou(
            zsl.record.attention_output, icl.record.attention_output, ft.record.attention_output
        ).numpy()
        # Shuffled-example null: the ICL update of example i against the FT update of example i-1.
        delta_ft = attention_update(zsl.record.attention_output, ft.record.attention_output)
        if variant.previous_delta is not None:
            row["simaou_shuffled_null"] = cosine(delta_icl, variant.previous_delta).numpy()
        variant.previous_delta = delta_ft
        ft_q = [s[:, self.start :] for s in ft.record.scores]
        row["simam_after"] = simam(icl_q, ft_q).numpy()
        row["delta_simam"] = delta_simam(zsl_q, icl_q, ft_q).numpy()
        inputs = self.kendall.get(name)
        m_icl_layers = m_ft_layers = None
        test_query = getattr(ft.record, inputs.test_query) if inputs is not None else None
        if self.index < self.kendall_n and self._ranks_kendall(name, ft):
            m_icl_layers, m_ft_layers = [], []
            for layer in range(self.num_layers):
                m_icl = icl.record.scores[layer][:, inputs.icl_positions].sum(0).numpy()
                train = inputs.train_queries[layer][inputs.ft_indices]
                m_ft = ft_attention_to_training_tokens(train, test_query[layer]).numpy()
                noise = self.rng.random(m_icl.shape[0])
                row["kendall"][layer] = kendall(m_icl, m_ft)
                row["kendall_random"][layer] = kendall(m_icl, noise)
                # top-k capped at a fifth of the demo tokens: with short contexts a fixed k=100 would be trivial
                top = max(1, min(self.topk, m_icl.shape[0] // 5))
                row["topk_recall"][layer] = topk_recall(m_icl, m_ft, top)
                row["topk_random"][layer] = topk_recall(m_icl, noise, top)
                m_icl_layers.append(m_icl)
                m_ft_layers.append(m_ft)
            if inputs.pre_rotary is not None and ft.record.projected_query is not None:
                for layer in range(self.num_layers):
                    train = inputs.pre_rotary[layer][inputs.ft_indices]
                    m_ft = ft_attention_to_training_tokens(train, ft.record.projected_query[layer]).numpy()
                    row["kendall_pre_rotary"][layer] = kendall(m_icl_layers[layer], m_ft)
        for metric in VARIANT_METRICS:
            variant.per_layer[metric].append(row[metric])
        if self.records is not None:
            self.records.add_variant(self.index, name, ft, ft_q, m_icl_layers, m_ft_layers)

    def _ranks_kendall(self, name: str, ft: Observation) -> bool:
        """Whether variant `name` has Kendall τ (and its noise draws), given an example's FT observation."""
        inputs = self.kendall.get(name)
        return (
            inputs is not None
            and inputs.train_queries is not None
            and getattr(ft.record, inputs.test_query) is not None
        )

    def _replay_draws(self, delta_icl: torch.Tensor, icl: Observation, ft: dict[str, Observation]) -> None:
        """Draw and discard the random baselines of the `offset` examples before this shard, in `_add_one`'s order.
        Their shapes are this example's: the same for every example of a seed."""
        for index in range(self.offset):
            simaou_null(delta_icl, "uniform", self.generator)
            simaou_null(delta_icl, "gaussian", self.generator)
            for name, observation in ft.items():
                if index < self.kendall_n and self._ranks_kendall(name, observation):
                    positions = self.kendall[name].icl_positions
                    for layer in range(self.num_layers):
                        self.rng.random(icl.record.scores[layer][:, positions].shape[1])


def join_shards(parts: list[SeedValues]) -> SeedValues:
    """The values of consecutive shares of the evaluation examples (in evaluation order) as one collector of all
    the examples has them: every list concatenated, and the shuffled-example SimAOU null of each share's first
    example, which pairs its Δ_ICL with the FT update of the previous share's last example, filled in."""
    parts = [part for part in parts if part.gold]  # a process may have had no examples
    if len(parts) == 1:
        return parts[0]
    joined = SeedValues(variants={name: VariantValues() for name in parts[0].variants})
    for part in parts:
        for name, value in vars(part).items():
            if isinstance(value, list):
                getattr(joined, name).extend(value)
        for name, variant in part.variants.items():
            into = joined.variants[name]
            if into.predicted and part.first_delta_icl is not None and into.previous_delta is not None:
                shuffled = cosine(part.first_delta_icl, into.previous_delta).numpy()
                variant = _with_first_shuffled_null(variant, shuffled)
            for field_name, value in vars(variant).items():
                if isinstance(value, list):
                    getattr(into, field_name).extend(value)
            for metric, rows in variant.per_layer.items():
                into.per_layer[metric].extend(rows)
            into.previous_delta = variant.previous_delta
    joined.first_delta_icl = parts[0].first_delta_icl
    return joined


def _with_first_shuffled_null(variant: VariantValues, shuffled: np.ndarray) -> VariantValues:
    per_layer = {metric: list(rows) for metric, rows in variant.per_layer.items()}
    per_layer["simaou_shuffled_null"][0] = shuffled
    return dataclasses.replace(variant, per_layer=per_layer)


__all__ = ["VARIANT_METRICS", "KendallInputs", "SeedCollector", "SeedValues", "VariantValues", "join_shards"]
