"""The analysis pipeline: ZSL, ICL and K/V-only FT on the same demonstrations, compared per layer.

    analyze(model, tokenizer, config)
      1. inputs     task data checked, prompt layout, splits (protocol.make_splits), context budget
      2. per model  (the pretrained model; with the `untrained` control, a copy with re-initialised blocks)
         per seed   demonstrations (protocol.draw_demos) -> learning rate (protocol.tune_learning_rate)
                    -> every FT variant trained on its sequences (variants.FT_VARIANTS, engine.finetune)
                    -> the ICL context run once (engine.prefix)
                    -> every evaluation example in ZSL, ICL and each FT variant, in batches (engine.evaluate)
                       (across processes: this process's share, distributed.shard)
                    -> per-example metric values (collect.SeedCollector)
                    -> weight-space cosines (weight_space) and the order control (order)
                    -> the shares of all processes joined in evaluation order (distributed.gather, join_shards)
      3. results    estimates over examples and seeds (summarize, statistics) -> AnalysisResult

The model is wrapped with peft for the run and unwrapped afterwards (its weights are unchanged). Under torchrun or
accelerate launch every process runs this whole pipeline and returns the same result (distributed.py).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .collect import KendallInputs, SeedCollector, SeedValues, join_shards
from .config import AnalysisConfig
from .controls import untrained_copy
from .engine import Engine
from .errors import AnalysisInputError
from .geometry import AttentionGeometry
from .icl import context_budget
from .order import order_control
from .prompt import PromptLayout
from .protocol import Splits, draw_demos, make_splits, select_seed, tune_learning_rate
from .records import Records
from .results import AnalysisResult, SeedInfo
from .statistics import describe_intervals
from .summarize import summarize_model, warnings_for
from .tasks import TaskData, TaskSpec, check_task_data, get_task, load_task_data
from .variants import VariantInputs, aligned_tokens, variants_for
from .weight_space import weight_space_cosines

logger = logging.getLogger(__name__)


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
    """
    started = time.time()
    config = config or AnalysisConfig()
    task = task or get_task(config.task)
    config = config.replace(task=task.name)
    data = (
        check_task_data(task, data)
        if data is not None
        else load_task_data(task, config.data_dir, hub=config.hub)
    )
    geometry = AttentionGeometry.of(model)  # read once; the pretrained model's engine reuses it
    if "untrained" in config.controls and any(p.is_meta for p in model.parameters()):
        # Its copy would re-initialise meta tensors (a no-op) and keep the offloaded pretrained weights.
        raise AnalysisInputError(
            "The untrained-model control re-initialises a copy of the decoder blocks, which needs the weights in "
            "memory; this model has offloaded weights (a device map with cpu/disk entries). Drop 'untrained' from "
            "--controls, or load the model without offloading."
        )
    layout = PromptLayout(
        tokenizer, task, separator=config.separator, start_token=config.start_token, newline=config.newline
    )
    splits = make_splits(data, config)
    budget, max_length = context_budget(
        model, layout, splits.eval_examples + splits.tune_examples, config.max_length, geometry=geometry
    )
    other = None
    if "other_task" in config.controls:
        other_task = get_task(config.other_task or ("sst2" if task.name == "agnews" else "agnews"))
        if other_task.name == task.name:
            raise AnalysisInputError("other_task must differ from the analysed task.")
        other_layout = PromptLayout(
            tokenizer,
            other_task,
            separator=config.separator,
            start_token=config.start_token,
            newline=config.newline,
        )
        other = (other_layout, load_task_data(other_task, config.data_dir, hub=config.hub).train)
    records = Records() if config.save_records else None

    run = _ModelRun(config, layout, splits, budget, max_length, other, records)
    models, seed_infos, seed_selection, warnings = {}, [], [], []
    runs = [("pretrained", model)] + ([("untrained", None)] if "untrained" in config.controls else [])
    for name, run_model in runs:
        if run_model is None:
            result, infos, selection, model_warnings = run(name, untrained_copy(model, seed=1234))
        else:
            result, infos, selection, model_warnings = run(name, run_model, geometry)
        models[name] = result
        warnings += model_warnings
        if name == "pretrained":
            seed_infos, seed_selection = infos, selection
    if run.probe_fallback and not run.exact_scores:
        warnings.append(
            "The model's attention does not dispatch through transformers' attention interface: score rows are "
            "log-probabilities (exact up to a per-head constant), so SimAM and ΔSimAM are approximate; Kendall τ is "
            "exact."
        )
    return AnalysisResult(
        config=asdict(config),
        run={
            "model": model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
            "model_type": model.config.model_type,
            "num_layers": geometry.num_layers,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            # forwards under torch.autocast in this dtype (mixed precision; the weights are `dtype`), else None
            "autocast": str(getattr(model, "tm_autocast_dtype", None) or "").replace("torch.", "") or None,
            "devices": _devices(model),
            "processes": distributed.world_size(),  # each evaluated a share of the examples (distributed.py)
            "data_source": data.source,
            "n_eval_used": len(splits.eval_examples),
            "tuning_split": splits.tuning_split,
            "other_task_used": other[0].task.name if other else None,
            "seeds_analyzed": run.seeds,
            "seed_selection": seed_selection,
            "max_length_used": max_length,
            "start_token_ids": layout.start_ids,
            "separator_ids": layout.separator_ids,
            "label_token_counts": [len(ids) for ids in layout.label_ids],
            "probe_fallback": run.probe_fallback,
            "exact_scores": run.exact_scores,
            "kendall_queries": run.kendall_queries,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "wall_seconds": round(time.time() - started, 1),
        },
        statistics=describe_intervals(len(run.seeds)),
        models=models,
        seeds=seed_infos,
        warnings=warnings,
        records=records,
    )


def _devices(model: nn.Module) -> list[str]:
    """Where the model's weights live: accelerate's device map when it was dispatched ("disk" and "cpu" entries
    are offloaded blocks), else the devices of its parameters."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        return sorted({f"cuda:{d}" if isinstance(d, int) else str(d) for d in device_map.values()})
    return sorted({str(p.device) for p in model.parameters()})


@dataclass
class _SeedRun:
    """What one seed on one model produced."""

    values: SeedValues  # per-example metric values
    info: SeedInfo
    weights: dict[str, list | None]  # per variant: cos(ΔW_ICL, ΔW_FT) per layer and head
    losses: dict[str, list[float]]  # per variant: the SGD losses
    variant_info: dict[str, dict]  # per variant: random labels kept, the other task, ...
    order: dict | None  # the order control: {"icl" | "ft": (changed, std of P(gold))} per example


class _ModelRun:
    """Runs every seed on one model (stage 2 of the module docstring)."""

    def __init__(
        self, config: AnalysisConfig, layout: PromptLayout, splits: Splits, budget, max_length, other, records
    ):
        self.config, self.layout, self.splits = config, layout, splits
        self.budget, self.max_length, self.other, self.records = budget, max_length, other, records
        self.seeds = list(config.seeds)
        self.lr_cache: dict[int, tuple[float, dict | None]] = {}
        self.probe_fallback = False
        self.exact_scores = True
        self.kendall_queries: str | None = None

    def __call__(self, name: str, model: nn.Module, geometry: AttentionGeometry | None = None):
        config = self.config
        variants = variants_for(config.controls) if name == "pretrained" else variants_for(())
        engine = Engine(model, self.layout, config, geometry)
        self.probe_fallback |= engine.probe.fallback
        self.exact_scores &= engine.probe.exact_scores
        seed_selection = {}
        try:
            if name == "pretrained" and config.select_seed and len(self.seeds) > 1:
                chosen, seed_selection = select_seed(
                    engine, self.splits, self.layout, config, self.budget, self.max_length
                )
                self.seeds = [chosen]
            progress = tqdm(  # across processes: the main process's share of the examples
                total=len(self.seeds) * len(distributed.shard(self.splits.eval_examples).items),
                desc=f"analyse [{name}]", unit="ex", disable=not config.progress or not distributed.is_main(),
            )  # fmt: skip
            with progress:
                runs = [self._seed(engine, name, seed, variants, progress) for seed in self.seeds]
            if engine.scorer.single_row_cache_batches:
                logger.info("%s: the context cache holds a recurrent state; ICL rows ran one at a time", name)
        finally:
            engine.close()
        values = [run.values for run in runs]
        result = summarize_model(
            values,
            config,
            weights={v.name: [run.weights[v.name] for run in runs] for v in variants},
            losses={v.name: [run.losses[v.name] for run in runs] for v in variants},
            info={v.name: [run.variant_info[v.name] for run in runs] for v in variants},
            order=[run.order for run in runs if run.order is not None] or None,
        )
        return (
            result,
            [run.info for run in runs],
            seed_selection,
            warnings_for(name, self.seeds, values, self.layout.task),
        )

    def _join_shares(self, values: SeedValues, order: dict | None, records: Records | None):
        """Every process's share of one seed joined in evaluation order, as a one-process run has it (one process:
        its own); the records go to the main process only."""
        values = join_shards(distributed.gather(values))
        orders = distributed.gather(order)
        if order is not None:
            order = {
                setting: tuple(np.concatenate([part[setting][i] for part in orders]) for i in range(2))
                for setting in order
            }
        if records is not None:
            for part in distributed.gather(records, to_main=True):
                self.records.extend(part)
        return values, order

    def _kendall_source(self, engine: Engine) -> str | None:
        """Which queries Kendall τ uses: the ones attention used, or (position-free queries) the projection's."""
        if not engine.probe.fallback:
            return "attention queries"
        if engine.probe.has_projected_queries and not engine.geometry.rotates_queries:
            return (
                "query projection (the model applies no rotary embedding, so these are attention's queries)"
            )
        return None

    def _seed(self, engine: Engine, name: str, seed: int, variants, progress) -> _SeedRun:
        config, layout, splits = self.config, self.layout, self.splits
        demos = draw_demos(splits, seed, layout, config, self.budget, self.max_length)
        context = layout.context(demos)
        sequences = [layout.ft_sequence(d) for d in demos]
        if config.lr is not None:
            lr, lr_search = config.lr, None
        elif seed in self.lr_cache:  # the untrained control reuses the rate tuned on the pretrained model
            lr, lr_search = self.lr_cache[seed]
        else:
            progress.set_postfix_str(f"tuning lr, seed {seed}")
            lr, lr_search = tune_learning_rate(engine, sequences, splits.tune_examples, config, seed)
            self.lr_cache[seed] = (lr, lr_search)
            progress.set_postfix_str("")
        source = self._kendall_source(engine)
        self.kendall_queries = self.kendall_queries or source

        # Every FT variant, trained from zero on its own sequences with the same rate.
        states, kendall, losses, info = {}, {}, {}, {}
        inputs = VariantInputs(layout, demos, seed, other=self.other)
        for variant in variants:
            training = variant.training_data(inputs)
            aligned = training.demos is not None and source is not None
            states[variant.name], trace = engine.finetune(
                training.sequences,
                lr,
                method=variant.method,
                record_queries=aligned,
                seed=config.bootstrap_seed + seed,
            )
            losses[variant.name], info[variant.name] = trace.losses, training.info
            kendall[variant.name] = None
            if aligned:
                icl_positions, ft_indices = aligned_tokens(layout, context, demos, training.demos)
                if len(icl_positions) < sum(b - a for a, b in context.demo_spans):
                    logger.info(
                        "seed %d, %s: Kendall over the %d demonstration tokens that line up",
                        seed,
                        variant.name,
                        len(icl_positions),
                    )
                rotary = not engine.probe.fallback and engine.geometry.rotates_queries
                kendall[variant.name] = KendallInputs(
                    icl_positions,
                    ft_indices,
                    trace.train_queries if not engine.probe.fallback else trace.train_projected_queries,
                    "query" if not engine.probe.fallback else "projected_query",
                    trace.train_projected_queries if rotary else None,
                )

        prefix = engine.prefix(context, moments=True)
        demo_moment = engine.moments.take()
        zero = engine.scorer.prefix(layout.zero_shot_context())
        # This process's share of the evaluation examples: all of them in a one-process run (distributed.py).
        share = distributed.shard(splits.eval_examples)
        share_records = Records().begin(name, seed) if self.records is not None else None
        collector = SeedCollector(
            seed=seed, bootstrap_seed=config.bootstrap_seed, start=len(layout.start_ids), context_length=len(context),
            num_layers=engine.probe.num_layers, kendall=kendall, kendall_n=config.kendall_n, topk=config.topk,
            output_topk=config.output_topk, records=share_records, offset=share.offset,
        )  # fmt: skip
        examples = share.items
        chunk_size = 4 * config.batch_size  # the scorer batches a chunk's examples by length
        for start in range(0, len(examples), chunk_size):
            chunk = examples[start : start + chunk_size]
            zsl = engine.evaluate(zero, chunk, engine.zero_state, moments=True)
            icl = engine.evaluate(prefix, chunk, engine.zero_state)
            ft = {v.name: engine.evaluate(zero, chunk, states[v.name]) for v in variants}
            collector.add(chunk, zsl, icl, ft)
            progress.update(len(chunk))
        query_moment = distributed.sum_tensors(engine.moments.take())
        weights = {}
        for variant in variants:
            engine.load_state(states[variant.name])
            weights[variant.name] = weight_space_cosines(
                engine.model, engine.moments, demo_moment, query_moment
            )
        values: SeedValues = collector.values

        order = None
        if "order" in config.controls and name == "pretrained" and len(demos) > 1:
            progress.set_postfix_str(f"order control, seed {seed}")
            in_order = {
                "icl": (values.icl_predicted, values.icl_gold_probability),
                "ft": (values.variants["gd"].predicted, values.variants["gd"].gold_probability),
            }
            order = order_control(
                engine, demos, examples, lr, seed, config.order_permutations, in_order, config.bootstrap_seed
            )
            progress.set_postfix_str("")
        values, order = self._join_shares(values, order, share_records)
        engine.load_state(engine.zero_state)
        seed_info = SeedInfo(
            seed=seed,
            k_effective=len(demos),
            context_tokens=len(context),
            lr=lr,
            lr_search=lr_search,
            demo_indices=[int(d["__pool_index"]) for d in demos],
        )
        return _SeedRun(values, seed_info, weights, losses, info, order)


__all__ = ["analyze"]
