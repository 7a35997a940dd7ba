"""The analysis pipeline: ZSL, ICL and K/V-only FT on the same demonstrations, compared per layer.

For each demonstration seed:

1. draw the demonstrations (the demo pool shuffled with the seed, the first k that fit the context, in order);
2. optionally pick the learning rate on a tuning split (held out from the demo pool; on the evaluation split itself
   with ``paper_protocol=True``, as the paper did, and labelled so);
3. finetune the K/V deltas on the demonstrations (vanilla GD, and the LCGD / random-label controls), recording the
   training tokens' queries, and keep each variant's deltas;
4. run the ICL context once and keep its KV cache;
5. for each evaluation example run ZSL, ICL (reusing the cached context) and every FT variant, and fold the
   recorded internals straight into streaming metrics (nothing per example is kept unless asked).

The untrained-model control repeats all of it on a copy of the model with re-initialised decoder blocks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from peft import get_peft_model
from torch import nn
from tqdm.auto import tqdm
from transformers.cache_utils import LinearAttentionLayer

from ..architectures import attention_modules, get_architecture
from ..compat import cache_kwargs, output_cache
from ..kv_tuning import KVTuningConfig, kv_deltas
from .controls import random_label_demos, untrained_copy
from .finetune import kv_finetune, trainable_parameters
from .metrics import (
    StreamingMetric,
    accuracy,
    attention_update,
    bootstrap_ci,
    cosine,
    delta_simam,
    ft_attention_to_training_tokens,
    head_cosines,
    kendall,
    order_sensitivity,
    output_kl,
    rec2ftp,
    simam,
    simaou,
    simaou_null,
    topk_recall,
)
from .probe import AttentionProbe, KVInputSecondMoment, ProbeRecord, unwrap_model
from .prompt import Context, PromptLayout
from .tasks import AnalysisInputError, TaskData, TaskSpec, get_task, load_task_data

# Deutch et al.: untrained model, layer-causal GD; random-label and different-task FT; Shen et al.: demo order.
CONTROLS = ("untrained", "lcgd", "random_label", "other_task", "order")
PAPER_LR_GRID = tuple(m * s for s in (0.1, 0.01, 0.001, 0.0001) for m in range(1, 10))


@dataclass
class AnalysisConfig:
    """Everything that decides an analysis run (saved as ``config`` in results.json)."""

    task: str = "sst2"
    k: int = 16
    n_eval: int = 100
    seeds: tuple[int, ...] = (1,)
    lr: float | None = 1e-3
    lr_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    n_tune: int = 32
    paper_protocol: bool = False
    select_seed: bool = False
    analysis_position: str = "label"
    separator: str = "eos"
    max_length: int = 2048
    allow_fewer_demos: bool = False
    kendall_n: int = 100
    topk: int = 100
    controls: tuple[str, ...] = CONTROLS
    other_task: str | None = None  # the "other_task" control's FT demos (None: agnews, or sst2 for agnews)
    order_permutations: int = 2  # extra demonstration orders for the "order" control
    output_topk: int = 10  # top-k token overlap of the ICL and FT next-token distributions
    per_example: bool = False
    data_dir: str | None = None
    hub: bool = False
    bootstrap_seed: int = 0
    progress: bool = True

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.controls = tuple(self.controls)
        unknown = set(self.controls) - set(CONTROLS)
        if unknown:
            raise AnalysisInputError(f"Unknown control(s) {sorted(unknown)}; known: {list(CONTROLS)}.")
        if self.analysis_position not in ("label", "prompt"):
            raise AnalysisInputError(
                "analysis_position must be 'label' (paper code) or 'prompt' (last prompt token)."
            )
        if self.order_permutations < 1 or self.output_topk < 1:
            raise AnalysisInputError("order_permutations and output_topk must be >= 1.")
        if self.k < 1 or self.n_eval < 1 or not self.seeds:
            raise AnalysisInputError("k and n_eval must be >= 1 and at least one seed is needed.")
        if self.lr is None and not self.lr_grid:
            raise AnalysisInputError("Give a learning rate or a non-empty lr_grid to tune it on.")


@dataclass
class AnalysisResult:
    """The outcome of :func:`analyze`; ``results`` is the JSON-ready dictionary written to results.json."""

    results: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        node: Any = self.results
        for part in key.split("."):
            node = node[part]
        return node

    def save(self, out_dir, *, plots: bool = True) -> None:
        from .report import write_outputs

        write_outputs(self.results, out_dir, plots=plots)


# ------------------------------------------------------------------------------------------------ one comparison


@dataclass
class _Comparison:
    """Streaming metrics of ICL against one FT variant (vanilla GD, LCGD, random-label) on one model."""

    correct: list[bool] = field(default_factory=list)
    simaou: StreamingMetric = field(default_factory=StreamingMetric)
    simaou_shuffled: StreamingMetric = field(default_factory=StreamingMetric)
    simam_after: StreamingMetric = field(default_factory=StreamingMetric)
    delta_simam: StreamingMetric = field(default_factory=StreamingMetric)
    kendall: StreamingMetric = field(default_factory=StreamingMetric)
    kendall_random: StreamingMetric = field(default_factory=StreamingMetric)
    topk: StreamingMetric = field(default_factory=StreamingMetric)
    topk_random: StreamingMetric = field(default_factory=StreamingMetric)
    kendall_prerope: StreamingMetric = field(default_factory=StreamingMetric)
    output_kl: StreamingMetric = field(default_factory=StreamingMetric)  # KL(p_ICL || p_FT), next token
    output_topk: StreamingMetric = field(default_factory=StreamingMetric)
    weight_cosine: list[list[float]] | None = None  # per layer, per head
    previous_delta: torch.Tensor | None = None
    losses: list[float] = field(default_factory=list)

    def merge(self, other: _Comparison) -> None:
        self.correct += other.correct
        self.losses += other.losses
        for name in (
            "simaou",
            "simaou_shuffled",
            "simam_after",
            "delta_simam",
            "kendall",
            "kendall_random",
            "topk",
            "topk_random",
            "kendall_prerope",
            "output_kl",
            "output_topk",
        ):
            getattr(self, name).merge(getattr(other, name))


@dataclass
class _ModelStats:
    """Everything streamed for one model (the real one or the untrained control) over one or more seeds."""

    zsl_correct: list[bool] = field(default_factory=list)
    icl_correct: list[bool] = field(default_factory=list)
    simam_before: StreamingMetric = field(default_factory=StreamingMetric)
    simaou_uniform: StreamingMetric = field(default_factory=StreamingMetric)
    simaou_gaussian: StreamingMetric = field(default_factory=StreamingMetric)
    output_kl_zsl: StreamingMetric = field(
        default_factory=StreamingMetric
    )  # KL(p_ICL || p_ZSL): the reference
    output_topk_zsl: StreamingMetric = field(default_factory=StreamingMetric)
    # order control, per example: prediction changes across orders / std of P(gold) across orders
    order_flipped: dict[str, list[bool]] = field(default_factory=lambda: {"icl": [], "ft": []})
    order_spread: dict[str, list[float]] = field(default_factory=lambda: {"icl": [], "ft": []})
    comparisons: dict[str, _Comparison] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def merge(self, other: _ModelStats) -> None:
        self.zsl_correct += other.zsl_correct
        self.icl_correct += other.icl_correct
        self.simam_before.merge(other.simam_before)
        self.simaou_uniform.merge(other.simaou_uniform)
        self.simaou_gaussian.merge(other.simaou_gaussian)
        self.output_kl_zsl.merge(other.output_kl_zsl)
        self.output_topk_zsl.merge(other.output_topk_zsl)
        for setting in ("icl", "ft"):
            self.order_flipped[setting] += other.order_flipped[setting]
            self.order_spread[setting] += other.order_spread[setting]
        for name, comparison in other.comparisons.items():
            self.comparisons.setdefault(name, _Comparison()).merge(comparison)
        self.examples += other.examples


# ------------------------------------------------------------------------------------------------ the engine


class _Engine:
    """ZSL / ICL / FT forwards of one (peft-wrapped) model with the probe installed."""

    def __init__(self, model: nn.Module, layout: PromptLayout, config: AnalysisConfig):
        self.layout = layout
        self.config = config
        self.base = model
        self.model = get_peft_model(model, KVTuningConfig())
        self.model.eval()
        self.probe = AttentionProbe(self.model)
        self.moments = KVInputSecondMoment(self.model)
        self.params = trainable_parameters(self.model)
        self.zero_state = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.device = next(self.model.parameters()).device
        # Set by every predict(): the last prompt position's next-token log-probs and the candidates' probabilities.
        self.last_log_probs: torch.Tensor | None = None
        self.last_candidate_probs: np.ndarray | None = None

    def close(self) -> None:
        self.probe.remove()
        self.moments.remove()
        self.model.unload()

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, parameter in self.params.items():
            parameter.copy_(state[name])

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.params.items()}

    # -------------------------------------------------------------------------------------- forwards

    def _forward(
        self, new_ids: list[int], cache=None, keep: int = 1, record: bool = False, analysis_index: int = -1
    ):
        ids = torch.tensor([new_ids], device=self.device)
        recording = self.probe.record_eval(analysis_index) if record else contextlib.nullcontext()
        # The cached context must be reused unchanged by the next example: drop this example's tokens afterwards,
        # or, for recurrent cache layers that cannot roll back (MomentumGPT's momentum state), run on a copy.
        rollback = cache is not None and _croppable(cache)
        if cache is not None and not rollback:
            cache = copy.deepcopy(cache)
        prefix = cache.get_seq_length() if cache is not None else 0
        try:
            with torch.no_grad(), recording:
                output = self.model(
                    input_ids=ids, **cache_kwargs(cache), use_cache=cache is not None, logits_to_keep=keep
                )
        finally:
            if rollback and cache.get_seq_length() > prefix:
                cache.crop(prefix - cache.get_seq_length())
        return output.logits[0].float(), (self.probe.eval_record() if record else None)

    def context_cache(self, context: Context):
        """Run the context once and return its KV cache (None for a start-token-only context: it is re-run)."""
        if not context.demo_spans:
            return None
        ids = torch.tensor([context.input_ids], device=self.device)
        with torch.no_grad(), self.moments.accumulate(slice(len(self.layout.start_ids), None)):
            output = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return output_cache(output)

    def predict(
        self, context: Context, cache, example: dict, record: bool, accumulate_moments: bool = False
    ) -> tuple[int, ProbeRecord | None]:
        """Predicted label (mean log-prob of each candidate's tokens) and, with `record`, the probe record.

        The recorded forward is candidate 0's sequence (the paper code's analysis input). With single-token answers
        its last-prompt-position logits score every candidate (the code's shortcut); longer answers get one forward
        each. `accumulate_moments` adds the query-example tokens to the K/V input moments (ZSL pass only).
        """
        label_ids = self.layout.label_ids
        input_ids = self.layout.input_ids(example)
        prefix = [] if cache is not None else list(context.input_ids)
        analysis_index = -1 if self.config.analysis_position == "label" else -(len(label_ids[0]) + 1)
        moments = (
            self.moments.accumulate(slice(len(self.layout.start_ids), None))
            if accumulate_moments and cache is None
            else contextlib.nullcontext()
        )
        with moments:
            logits, record_out = self._forward(
                prefix + input_ids + label_ids[0], cache, keep=len(label_ids[0]) + 1, record=record,
                analysis_index=analysis_index,
            )  # fmt: skip
        log_probs = torch.log_softmax(logits, dim=-1)
        # The next-token distribution at the last prompt position (output-distribution metrics).
        self.last_log_probs = log_probs[0]
        if self.layout.single_token_labels:
            scores = [float(log_probs[0][answer[0]]) for answer in label_ids]
        else:
            scores = []
            for candidate, answer in enumerate(label_ids):
                if candidate > 0:
                    logits, _ = self._forward(prefix + input_ids + answer, cache, keep=len(answer) + 1)
                    log_probs = torch.log_softmax(logits, dim=-1)
                # kept position j (0 = last prompt token) predicts answer token j
                scores.append(float(np.mean([float(log_probs[j][token]) for j, token in enumerate(answer)])))
        self.last_candidate_probs = np.exp(np.asarray(scores) - np.logaddexp.reduce(scores))
        return int(np.argmax(scores)), record_out

    def predictions(
        self, context: Context, examples: list[dict], state: dict[str, torch.Tensor]
    ) -> tuple[list[int], list[float]]:
        """Predicted labels and the gold label's probability (softmax over candidate scores) on `examples`."""
        self.load_state(state)
        cache = self.context_cache(context)
        predicted, gold_probability = [], []
        for example in examples:
            predicted.append(self.predict(context, cache, example, record=False)[0])
            gold_probability.append(float(self.last_candidate_probs[int(example["label"])]))
        return predicted, gold_probability

    def accuracy_on(self, context: Context, examples: list[dict], state: dict[str, torch.Tensor]) -> float:
        self.load_state(state)
        cache = self.context_cache(context)
        correct = [self.predict(context, cache, ex, record=False)[0] == int(ex["label"]) for ex in examples]
        return accuracy(correct)


# ------------------------------------------------------------------------------------------------ helpers


def _croppable(cache) -> bool:
    """True when every layer of `cache` can drop its last tokens (KV layers can; recurrent-state layers cannot)."""
    return not any(isinstance(layer, LinearAttentionLayer) for layer in getattr(cache, "layers", ()))


def _choose_demos(pool, seed: int, layout: PromptLayout, config: AnalysisConfig, budget: int) -> list[dict]:
    """The first k demos of the seed-shuffled pool that fit (len(context)+len(demo)+longest eval < budget)."""
    shuffled = pool.shuffle(seed=seed)
    demos, length = [], len(layout.start_ids)
    for example in shuffled:
        if len(demos) == config.k:
            break
        size = len(layout.demo_ids(example)) + len(layout.separator_ids)
        if length + size >= budget:
            break
        demos.append(example)
        length += size
    if len(demos) < config.k and (not config.allow_fewer_demos or not demos):
        raise AnalysisInputError(
            f"k={config.k} demonstrations do not fit the context: with seed {seed} only {len(demos)} fit in "
            f"{config.max_length} tokens after reserving room for the longest evaluation example. Use --k "
            f"{max(len(demos), 1)} or smaller, raise --max-length, or pass --allow-fewer-demos (the paper's 'true K')."
        )
    return demos


def _weight_space(engine: _Engine, demo_moment, query_moment, state) -> list[list[float]] | None:
    """Per layer and head: cos(ΔW_ICL, ΔW_FT) in the relaxed linear-attention form (paper §1.2-1.3)."""
    if not engine.moments.supported or demo_moment is None or query_moment is None:
        return None
    engine.load_state(state)
    deltas = kv_deltas(engine.model)
    base = unwrap_model(engine.model)
    head_dim = (
        getattr(base.config, "head_dim", None) or base.config.hidden_size // base.config.num_attention_heads
    )
    result = []
    for layer, (key_module, value_module) in enumerate(
        zip(engine.moments.key_modules, engine.moments.value_modules, strict=True)
    ):
        if demo_moment[layer] is None or query_moment[layer] is None:
            return None
        tilde = []
        for module, role in ((key_module, "k"), (value_module, "v")):
            inner = getattr(module, "base_layer", module)
            weight = inner.weight.detach().double()
            bias = (
                inner.bias.detach().double()
                if inner.bias is not None
                else torch.zeros(weight.shape[0], dtype=torch.float64)
            )
            delta = deltas.get(layer, {})
            d_weight = delta.get(f"{role}_weight", torch.zeros_like(weight)).detach().double()
            d_bias = delta.get(f"{role}_bias", torch.zeros_like(bias)).detach().double()
            tilde.append((torch.cat([weight, bias[:, None]], 1), torch.cat([d_weight, d_bias[:, None]], 1)))
        (w_k, d_k), (w_v, d_v) = tilde
        icl = w_v @ demo_moment[layer] @ w_k.T
        ft = (w_v + d_v) @ query_moment[layer] @ (w_k + d_k).T - w_v @ query_moment[layer] @ w_k.T
        blocks = [slice(h * head_dim, (h + 1) * head_dim) for h in range(w_k.shape[0] // head_dim)]
        icl_heads = torch.stack([icl[b, b] for b in blocks])  # (kv heads, d, d): W_V,h ... W_K,hᵀ per head
        ft_heads = torch.stack([ft[b, b] for b in blocks])
        result.append([float(c) for c in head_cosines(icl_heads, ft_heads)])
    return result


def _order_control(engine, layout, demos, eval_examples, lr, seed, config, in_order, stats) -> None:
    """Shen et al.'s order test: the same demos in other orders, for ICL (the prompt) and FT (the SGD order)."""
    rng = np.random.default_rng(seed + 104_729)
    runs = {setting: ([list(p)], [list(g)]) for setting, (p, g) in in_order.items()}
    for _ in range(config.order_permutations):
        order = rng.permutation(len(demos))
        permuted = [demos[i] for i in order]
        predicted, gold = engine.predictions(layout.context(permuted), eval_examples, engine.zero_state)
        runs["icl"][0].append(predicted)
        runs["icl"][1].append(gold)
        engine.load_state(engine.zero_state)
        kv_finetune(engine.model, [layout.ft_sequence(d) for d in permuted], lr)
        predicted, gold = engine.predictions(layout.zero_shot_context(), eval_examples, engine.snapshot())
        runs["ft"][0].append(predicted)
        runs["ft"][1].append(gold)
    engine.moments.moments[:] = [None] * len(engine.moments.moments)  # the ICL contexts added to them
    for setting, (predictions, gold) in runs.items():
        flipped, spread = order_sensitivity(np.array(predictions), np.array(gold))
        stats.order_flipped[setting] += flipped.tolist()
        stats.order_spread[setting] += spread.tolist()


# ------------------------------------------------------------------------------------------------ one seed


def _run_seed(
    engine: _Engine,
    data: TaskData,
    eval_examples: list[dict],
    tune_examples: list[dict],
    demo_pool,
    seed: int,
    config: AnalysisConfig,
    budget: int,
    variants: tuple[str, ...],
    lr_cache: dict,
    label: str,
    other: tuple[PromptLayout, Any] | None = None,
) -> tuple[_ModelStats, dict]:
    layout = engine.layout
    demos = _choose_demos(demo_pool, seed, layout, config, budget)
    context = layout.context(demos)
    zero_context = layout.zero_shot_context()
    ft_sequences = [layout.ft_sequence(d) for d in demos]
    info: dict[str, Any] = {"seed": seed, "k_effective": len(demos), "context_tokens": len(context)}
    start = len(layout.start_ids)

    # Learning rate: given, or tuned on the tuning split by FT accuracy (ties -> the smaller rate).
    lr = config.lr
    if lr is None:
        # Keyed by seed only: the untrained control reuses the rate tuned for the real model (same protocol, demos).
        key = seed
        if key not in lr_cache:
            scores = {}
            for candidate in tqdm(
                config.lr_grid,
                desc=f"[{label}] tune lr (seed {seed})",
                disable=not config.progress,
                leave=False,
            ):
                engine.load_state(engine.zero_state)
                kv_finetune(engine.model, ft_sequences, candidate)
                scores[candidate] = engine.accuracy_on(zero_context, tune_examples, engine.snapshot())
                if any(not math.isfinite(p.detach().abs().max().item()) for p in engine.params.values()):
                    scores[candidate] = -1.0
            lr_cache[key] = max(sorted(scores), key=lambda c: scores[c])
            info["lr_search"] = {str(c): s for c, s in scores.items()}
        lr = lr_cache[key]
    info["lr"] = lr

    # Finetune every variant on the demos in order, recording training-token queries.
    states, train_queries, train_projected = {}, {}, {}
    stats = _ModelStats()
    for variant in variants:
        engine.load_state(engine.zero_state)
        sequences = ft_sequences
        records_queries = not engine.probe.fallback
        if variant == "random_label":
            sequences = [
                layout.ft_sequence(d)
                for d in random_label_demos(demos, layout.task.num_classes, seed=seed + 7919)
            ]
        elif variant == "other_task":
            # k demonstrations of another task in its own format: an update that teaches nothing about this task.
            # Its tokens do not line up with the ICL demos, so it has no Kendall comparison.
            other_layout, other_pool = other
            other_demos = list(other_pool.shuffle(seed=seed).select(range(min(len(demos), len(other_pool)))))
            sequences = [other_layout.ft_sequence(d) for d in other_demos]
            records_queries = False
        trace = kv_finetune(
            engine.model,
            sequences,
            lr,
            method="lcgd" if variant == "lcgd" else "gd",
            probe=engine.probe if records_queries else None,
            start_length=start,
        )
        states[variant] = engine.snapshot()
        train_queries[variant] = trace.train_queries
        train_projected[variant] = trace.train_projected_queries
        stats.comparisons[variant] = _Comparison(losses=trace.losses)

    # Demo-content positions in the ICL context (the Kendall slicing of the paper's code).
    demo_positions = torch.cat([torch.arange(a, b) for a, b in context.demo_spans])

    engine.load_state(engine.zero_state)
    for moment_list in (engine.moments.moments,):
        moment_list[:] = [None] * len(moment_list)
    cache = engine.context_cache(context)
    demo_moment = list(engine.moments.moments)
    engine.moments.moments[:] = [None] * len(engine.moments.moments)

    generator = torch.Generator().manual_seed(config.bootstrap_seed + seed)
    rng = np.random.default_rng(config.bootstrap_seed + seed)
    # In the paper's demonstration order, for the order control: {setting: (predictions, gold probabilities)}.
    in_order: dict[str, tuple[list[int], list[float]]] = {"icl": ([], []), "ft": ([], [])}
    for index, example in enumerate(
        tqdm(eval_examples, desc=f"[{label}] seed {seed}", disable=not config.progress, leave=False)
    ):
        gold = int(example["label"])
        engine.load_state(engine.zero_state)
        zsl_pred, zsl = engine.predict(zero_context, None, example, record=True, accumulate_moments=True)
        zsl_log_probs = engine.last_log_probs
        icl_pred, icl = engine.predict(context, cache, example, record=True)
        icl_log_probs = engine.last_log_probs
        in_order["icl"][0].append(icl_pred)
        in_order["icl"][1].append(float(engine.last_candidate_probs[gold]))
        stats.output_kl_zsl.add(np.array([output_kl(icl_log_probs, zsl_log_probs)]))
        stats.output_topk_zsl.add(np.array([topk_recall(icl_log_probs, zsl_log_probs, config.output_topk)]))
        stats.zsl_correct.append(zsl_pred == gold)
        stats.icl_correct.append(icl_pred == gold)
        zsl_q = [s[:, start:] for s in zsl.scores]
        icl_q = [s[:, len(context) :] for s in icl.scores]
        stats.simam_before.add(simam(icl_q, zsl_q))
        delta_icl = attention_update(zsl.attention_output, icl.attention_output)
        stats.simaou_uniform.add(simaou_null(delta_icl, "uniform", generator))
        stats.simaou_gaussian.add(simaou_null(delta_icl, "gaussian", generator))
        record: dict[str, Any] = (
            {"index": index, "gold": gold, "zsl": zsl_pred, "icl": icl_pred} if config.per_example else {}
        )
        for variant in variants:
            comparison = stats.comparisons[variant]
            engine.load_state(states[variant])
            ft_pred, ft = engine.predict(zero_context, None, example, record=True)
            comparison.correct.append(ft_pred == gold)
            comparison.output_kl.add(np.array([output_kl(icl_log_probs, engine.last_log_probs)]))
            comparison.output_topk.add(
                np.array([topk_recall(icl_log_probs, engine.last_log_probs, config.output_topk)])
            )
            if variant == "ft":
                in_order["ft"][0].append(ft_pred)
                in_order["ft"][1].append(float(engine.last_candidate_probs[gold]))
            comparison.simaou.add(simaou(zsl.attention_output, icl.attention_output, ft.attention_output))
            delta_ft = attention_update(zsl.attention_output, ft.attention_output)
            if (
                comparison.previous_delta is not None
            ):  # shuffled-example null: ICL update of i vs FT update of i-1
                comparison.simaou_shuffled.add(cosine(delta_icl, comparison.previous_delta))
            comparison.previous_delta = delta_ft
            ft_q = [s[:, start:] for s in ft.scores]
            comparison.simam_after.add(simam(icl_q, ft_q))
            comparison.delta_simam.add(delta_simam(zsl_q, icl_q, ft_q))
            if index < config.kendall_n and train_queries[variant] is not None and ft.query is not None:
                taus, randoms, recalls, random_recalls = [], [], [], []
                for layer in range(engine.probe.num_layers):
                    m_icl = icl.scores[layer][:, demo_positions].sum(0).numpy()
                    m_ft = ft_attention_to_training_tokens(
                        train_queries[variant][layer], ft.query[layer]
                    ).numpy()
                    if m_icl.shape != m_ft.shape:
                        raise RuntimeError(
                            f"ICL sees {m_icl.shape[0]} demo tokens but FT trained on {m_ft.shape[0]}."
                        )
                    noise = rng.random(m_icl.shape[0])
                    taus.append(kendall(m_icl, m_ft))
                    randoms.append(kendall(m_icl, noise))
                    # top-k capped at a fifth of the demo tokens: with short contexts a fixed k=100 would be trivial.
                    top = max(1, min(config.topk, m_icl.shape[0] // 5))
                    recalls.append(topk_recall(m_icl, m_ft, top))
                    random_recalls.append(topk_recall(m_icl, noise, top))
                if train_projected[variant] is not None and ft.projected_query is not None:
                    comparison.kendall_prerope.add(np.array([
                        kendall(icl.scores[layer][:, demo_positions].sum(0).numpy(),
                                ft_attention_to_training_tokens(train_projected[variant][layer], ft.projected_query[layer]).numpy())
                        for layer in range(engine.probe.num_layers)
                    ]))  # fmt: skip
                comparison.kendall.add(np.array(taus))
                comparison.kendall_random.add(np.array(randoms))
                comparison.topk.add(np.array(recalls))
                comparison.topk_random.add(np.array(random_recalls))
            if config.per_example:
                record[variant] = ft_pred
                record[f"simaou_{variant}"] = comparison.simaou.example_means[-1]
        if config.per_example:
            record["simam_before"] = stats.simam_before.example_means[-1]
            stats.examples.append(record)
    query_moment = list(engine.moments.moments)
    engine.moments.moments[:] = [None] * len(engine.moments.moments)
    for variant in variants:
        stats.comparisons[variant].weight_cosine = _weight_space(
            engine, demo_moment, query_moment, states[variant]
        )
    if "order" in config.controls and "ft" in variants and label == "model" and len(demos) > 1:
        _order_control(engine, layout, demos, eval_examples, lr, seed, config, in_order, stats)
    engine.load_state(engine.zero_state)
    info["demo_indices"] = [int(i) for i in demo_pool.shuffle(seed=seed)["__pool_index"][: len(demos)]]
    return stats, info


# ------------------------------------------------------------------------------------------------ summaries


def _num(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _summarize_model(stats: _ModelStats, config: AnalysisConfig) -> dict[str, Any]:
    seed = config.bootstrap_seed
    main = stats.comparisons["ft"]

    def acc_ci(flags):
        ci = bootstrap_ci([100.0 * f for f in flags], seed=seed)
        return list(ci) if ci else None

    out: dict[str, Any] = {
        "accuracy": {
            "zsl": accuracy(stats.zsl_correct),
            "icl": accuracy(stats.icl_correct),
            "ft": accuracy(main.correct),
            "ci95": {
                "zsl": acc_ci(stats.zsl_correct),
                "icl": acc_ci(stats.icl_correct),
                "ft": acc_ci(main.correct),
            },
        },
    }
    r = rec2ftp(stats.zsl_correct, stats.icl_correct, main.correct)
    out["rec2ftp"] = r.value
    out["rec2ftp_detail"] = {"n_ft_corrected": r.n_ft_corrected, "n_both_corrected": r.n_both_corrected}
    simaou_summary = main.simaou.summary(seed)
    out["simaou"] = {
        **simaou_summary,
        "random_mean": stats.simaou_uniform.mean,
        "random_per_layer": stats.simaou_uniform.per_layer,
        "gaussian_mean": stats.simaou_gaussian.mean,
        "shuffled_mean": main.simaou_shuffled.mean,
        "shuffled_per_layer": main.simaou_shuffled.per_layer,
    }
    before, after, delta = (
        stats.simam_before.summary(seed),
        main.simam_after.summary(seed),
        main.delta_simam.summary(seed),
    )
    out["simam"] = {
        "before_ft": before["mean"],
        "after_ft": after["mean"],
        "delta": delta["mean"],
        "before_ci95": before["ci95"],
        "after_ci95": after["ci95"],
        "delta_ci95": delta["ci95"],
        "per_layer_before": before["per_layer"],
        "per_layer_after": after["per_layer"],
        "per_layer_delta": delta["per_layer"],
    }
    kendall_summary = main.kendall.summary(seed)
    out["kendall"] = {
        **kendall_summary,
        "random_mean": main.kendall_random.mean,
        "random_per_layer": main.kendall_random.per_layer,
        "topk_recall": main.topk.mean,
        "topk_random": main.topk_random.mean,
        "topk": config.topk,
        "pre_rotary_mean": main.kendall_prerope.mean,
        "pre_rotary_per_layer": main.kendall_prerope.per_layer,
    }
    out["weight_space"] = _weight_summary([main.weight_cosine] if main.weight_cosine else None)
    ft_kl, zsl_kl = main.output_kl.summary(seed), stats.output_kl_zsl.summary(seed)
    out["output"] = {
        "kl_icl_ft": ft_kl["mean"],
        "kl_icl_ft_ci95": ft_kl["ci95"],
        "kl_icl_zsl": zsl_kl["mean"],
        "kl_icl_zsl_ci95": zsl_kl["ci95"],
        "topk_overlap_icl_ft": main.output_topk.mean,
        "topk_overlap_icl_zsl": stats.output_topk_zsl.mean,
        "topk": config.output_topk,
    }
    if stats.order_flipped["icl"]:
        order: dict[str, Any] = {"orders": 1 + config.order_permutations}
        for setting in ("icl", "ft"):
            flipped, spread = stats.order_flipped[setting], stats.order_spread[setting]
            order[f"{setting}_flip_rate"] = 100.0 * float(np.mean(flipped))
            order[f"{setting}_flip_rate_ci95"] = acc_ci(flipped)
            order[f"{setting}_gold_prob_std"] = float(np.mean(spread))
            order[f"{setting}_gold_prob_std_ci95"] = _list(bootstrap_ci(spread, seed=seed))
        out["order_sensitivity"] = order
    out["ft_losses"] = main.losses
    return out


def _list(ci):
    return list(ci) if ci else None


def _weight_summary(per_seed_cosines) -> dict[str, Any] | None:
    if not per_seed_cosines:
        return None
    array = np.array(per_seed_cosines, dtype=float)  # (seeds, L, heads)
    return {
        "mean": float(array.mean()),
        "per_layer": array.mean(axis=(0, 2)).tolist(),
        "per_layer_head": array.mean(axis=0).tolist(),
    }


def _summarize_variant(stats: _ModelStats, variant: str, config: AnalysisConfig, weights) -> dict[str, Any]:
    comparison = stats.comparisons[variant]
    r = rec2ftp(stats.zsl_correct, stats.icl_correct, comparison.correct)
    return {
        "accuracy_ft": accuracy(comparison.correct),
        "rec2ftp": r.value,
        "simaou": comparison.simaou.summary(config.bootstrap_seed),
        "simam_after_ft": comparison.simam_after.summary(config.bootstrap_seed),
        "delta_simam": comparison.delta_simam.summary(config.bootstrap_seed),
        "kendall": {
            **comparison.kendall.summary(config.bootstrap_seed),
            "random_mean": comparison.kendall_random.mean,
        },
        "weight_space": _weight_summary(weights),
        "output_kl": comparison.output_kl.mean,
        "output_topk_overlap": comparison.output_topk.mean,
    }


# ------------------------------------------------------------------------------------------------ entry point


def analyze(
    model: nn.Module,
    tokenizer,
    config: AnalysisConfig | None = None,
    *,
    task: TaskSpec | None = None,
    data: TaskData | None = None,
    model_name: str | None = None,
) -> AnalysisResult:
    """Compare ICL with K/V-only finetuning on `model` (any HF causal LM) for one task; see the module docstring.

    `task` / `data` override the built-in task named by ``config.task`` and its data (for user-defined tasks).
    The model is wrapped with peft for the run and unwrapped afterwards (its weights are unchanged).
    """
    config = config or AnalysisConfig()
    task = task or get_task(config.task)
    config = dataclasses.replace(config, task=task.name)
    data = data or load_task_data(task, config.data_dir, hub=config.hub)
    for split in (data.train, data.eval):
        if len(split) == 0:
            raise AnalysisInputError(f"Task {task.name!r}: a data split is empty.")
    try:
        get_architecture(model)
        if not attention_modules(model):
            raise ValueError("no decoder blocks")
    except (ValueError, AttributeError, TypeError) as error:
        raise AnalysisInputError(f"No attention found in {type(model).__name__}: {error}") from None
    layout = PromptLayout(tokenizer, task, separator=config.separator)
    started = time.time()

    # Splits: analysis = the eval split shuffled with seed 1 (as the paper's code), first n_eval examples. Tuning =
    # a held-out slice of the demo pool, or the analysis examples themselves under the paper's protocol.
    pool = data.train.add_column("__pool_index", list(range(len(data.train))))
    eval_examples = list(data.eval.shuffle(seed=1).select(range(min(config.n_eval, len(data.eval)))))
    needs_tuning = config.lr is None or config.select_seed
    if config.paper_protocol:
        tune_examples, demo_pool = eval_examples, pool
        tuning_split = "eval (paper protocol: tuned on the analysis examples themselves)"
    elif needs_tuning:
        held = pool.shuffle(seed=10_000)
        n_tune = min(config.n_tune, max(len(held) - config.k, 0))
        if n_tune < 1:
            raise AnalysisInputError(
                f"The demo pool ({len(pool)} examples) is too small to hold out a tuning split."
            )
        tune_examples = list(held.select(range(n_tune)))
        demo_pool = held.select(range(n_tune, len(held)))
        tuning_split = f"{n_tune} examples held out of the demo pool"
    else:
        tune_examples, demo_pool, tuning_split = [], pool, "none (learning rate given)"
    if not config.allow_fewer_demos and len(demo_pool) < config.k:
        raise AnalysisInputError(
            f"k={config.k} exceeds the {len(demo_pool)} examples of the demonstration pool."
        )

    model_max = getattr(model.config, "max_position_embeddings", None) or config.max_length
    max_length = min(config.max_length, model_max)
    longest = max(
        len(layout.start_ids) + len(layout.input_ids(ex)) + max(map(len, layout.label_ids))
        for ex in eval_examples + tune_examples
    )
    budget = max_length - longest
    if budget <= len(layout.start_ids):
        raise AnalysisInputError(
            f"The longest evaluation example ({longest} tokens) does not fit in {max_length} tokens."
        )

    main_variants = ("ft",) + tuple(v for v in ("lcgd", "random_label", "other_task") if v in config.controls)
    other = None
    if "other_task" in config.controls:
        other_spec = get_task(config.other_task or ("sst2" if task.name == "agnews" else "agnews"))
        if other_spec.name == task.name:
            raise AnalysisInputError("other_task must differ from the analysed task.")
        other_data = load_task_data(other_spec, config.data_dir, hub=config.hub)
        other = (PromptLayout(tokenizer, other_spec, separator=config.separator), other_data.train)
    runs = [("model", model, main_variants)]
    if "untrained" in config.controls:
        runs.append(("untrained", None, ("ft",)))

    seeds = list(config.seeds)
    seed_infos: list[dict] = []
    lr_cache: dict = {}
    totals: dict[str, _ModelStats] = {}
    weights: dict[str, dict[str, list]] = {}
    per_seed: list[dict] = []
    probe_fallback = False
    for label, run_model, variants in runs:
        if run_model is None:
            run_model = untrained_copy(model, seed=1234)
        engine = _Engine(run_model, layout, config)
        probe_fallback = probe_fallback or engine.probe.fallback
        try:
            if label == "model" and config.select_seed and len(seeds) > 1:
                scores = {}
                for seed in seeds:
                    demos = _choose_demos(demo_pool, seed, layout, config, budget)
                    scores[seed] = engine.accuracy_on(layout.context(demos), tune_examples, engine.zero_state)
                seeds = [max(seeds, key=lambda s: (scores[s], -s))]
                seed_infos.append({"seed_search": {str(s): v for s, v in scores.items()}, "chosen": seeds[0]})
            for seed in seeds:
                stats, info = _run_seed(
                    engine,
                    data,
                    eval_examples,
                    tune_examples,
                    demo_pool,
                    seed,
                    config,
                    budget,
                    variants,
                    lr_cache,
                    label,
                    other,
                )
                totals.setdefault(label, _ModelStats()).merge(stats)
                for variant in variants:
                    weights.setdefault(label, {}).setdefault(variant, [])
                    if stats.comparisons[variant].weight_cosine is not None:
                        weights[label][variant].append(stats.comparisons[variant].weight_cosine)
                if label == "model":
                    summary = _summarize_model(stats, config)
                    per_seed.append(
                        {
                            **info,
                            **{k: summary[k] for k in ("accuracy", "rec2ftp")},
                            "simaou": summary["simaou"]["mean"],
                            "simam_before": summary["simam"]["before_ft"],
                            "simam_after": summary["simam"]["after_ft"],
                            "kendall": summary["kendall"]["mean"],
                        }
                    )
                else:
                    seed_infos.append({"untrained_seed": seed, **{k: info[k] for k in ("k_effective", "lr")}})
        finally:
            engine.close()

    stats = totals["model"]
    results = _summarize_model(stats, config)
    main_weights = weights["model"]["ft"]
    results["weight_space"] = _weight_summary(main_weights)
    results["controls"] = {}
    for variant in main_variants[1:]:
        results["controls"][variant] = _summarize_variant(stats, variant, config, weights["model"][variant])
    if "untrained" in totals:
        untrained = _summarize_model(totals["untrained"], config)
        untrained["weight_space"] = _weight_summary(weights["untrained"]["ft"])
        results["controls"]["untrained"] = untrained
    results["seeds"] = per_seed
    if config.per_example:
        results["examples"] = stats.examples
    results["config"] = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "model": model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "model_type": model.config.model_type,
        "num_layers": len(attention_modules(model)),
        "data_source": data.source,
        "n_eval_used": len(eval_examples),
        "tuning_split": tuning_split,
        "other_task_used": other[0].task.name if other else None,
        "seeds_analyzed": seeds,
        "seed_selection": seed_infos,
        "max_length_used": max_length,
        "start_token_ids": layout.start_ids,
        "separator_ids": layout.separator_ids,
        "label_token_counts": [len(ids) for ids in layout.label_ids],
        "probe_fallback": probe_fallback,
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
        "wall_seconds": round(time.time() - started, 1),
    }
    return AnalysisResult(results)


__all__ = ["CONTROLS", "PAPER_LR_GRID", "AnalysisConfig", "AnalysisResult", "analyze"]
