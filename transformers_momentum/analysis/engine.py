"""ZSL, ICL and FT forwards of one model, returning what they computed (the pipeline's only contact with torch).

One `Engine` wraps the model with K/V deltas (`KVTuningConfig`), installs the probe and the K/V input moments, and
serves every setting of an evaluation example back to back: the FT variants' deltas are snapshotted after training
and loaded back in place, so nothing but the deltas changes between ZSL, ICL and each FT variant.

The engine reads the model's attention geometry once (`geometry.AttentionGeometry`: attention modules, query
projections, head sizes, where input ids go) and hands it to the probe, the K/V input moments, the scorer and the
finetuning loop.

Mixed precision: a model marked with ``tm_autocast_dtype`` (`load_model(..., autocast=True)`, fp32 weights) has
every engine forward, training and evaluation, run under ``torch.autocast`` in that dtype, as ``Trainer(bf16=True)``
and accelerate's ``mixed_precision="bf16"`` run a model: matmuls in bf16, norms, softmaxes and the residual stream in
fp32. A model whose weights were cast to bf16 is a different model: on SmolLM2-135M the K/V gradient of one SGD step
is 42% off the fp32 gradient (relative norm) with bf16 weights and 6% off under autocast.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from types import MethodType

import numpy as np
import torch
from peft import get_peft_model
from torch import nn

from ..architectures import unwrap_peft
from ..kv_tuning import KVTuningConfig
from . import distributed
from .config import AnalysisConfig
from .finetune import FinetuneTrace, kv_finetune, trainable_parameters, upcast_trainable
from .geometry import AttentionGeometry
from .icl import CandidateScorer, CandidateScores, Prefix, Row
from .probe import AttentionProbe, ProbeRecord
from .prompt import Context, PromptLayout
from .weight_space import KVInputSecondMoment

State = dict[str, torch.Tensor]


@dataclass
class Observation:
    """One evaluation example in one setting: its candidate scores and, when recorded, what the probe saw."""

    scores: CandidateScores
    record: ProbeRecord | None

    @property
    def predicted(self) -> int:
        return self.scores.predicted


def _autocast_forwards(model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
    """Every forward of `model` (the engine's own peft wrapper) under ``torch.autocast(device_type, dtype)``,
    patched onto the instance as accelerate's `prepare_model` does for mixed precision; gone with the wrapper."""
    forward = torch.autocast(device_type=device_type, dtype=dtype)(type(model).forward)
    model.forward = MethodType(forward, model)


class Engine:
    """ZSL / ICL / FT forwards of `model` with the probe installed; :meth:`close` restores the model.

    `geometry` is `model`'s `AttentionGeometry` when the caller has it already (read from the model otherwise); the
    attention modules and query projections it names are the same objects after peft wraps the K/V projections.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: PromptLayout,
        config: AnalysisConfig,
        geometry: AttentionGeometry | None = None,
    ):
        self.layout = layout
        self.geometry = geometry or AttentionGeometry.of(model)
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` alias: not the user's to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            self.model = get_peft_model(model, KVTuningConfig())
        self.model.eval()
        autocast_dtype = getattr(model, "tm_autocast_dtype", None)
        if autocast_dtype is not None:
            _autocast_forwards(self.model, autocast_dtype, self.geometry.input_device.type)
        self.probe = AttentionProbe(self.model, self.geometry)
        self.moments = KVInputSecondMoment(self.model, self.geometry)
        self.params = trainable_parameters(self.model)
        upcast_trainable(self.params.values())  # fp32 deltas whatever the model's precision (finetune.py)
        self.zero_state: State = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.scorer = CandidateScorer(
            self.model,
            layout,
            batch_size=config.batch_size,
            analysis_position=config.analysis_position,
            geometry=self.geometry,
        )

    def close(self) -> None:
        self.probe.remove()
        self.moments.remove()
        self.model.unload()

    # ------------------------------------------------------------------------------------------ K/V deltas

    @torch.no_grad()
    def load_state(self, state: State) -> None:
        for name, parameter in self.params.items():
            parameter.copy_(state[name])

    def snapshot(self) -> State:
        return {name: p.detach().clone() for name, p in self.params.items()}

    def finetune(
        self,
        sequences: list[list[int]],
        lr: float,
        *,
        method: str = "gd",
        record_queries: bool = False,
        seed: int = 0,
    ) -> tuple[State, FinetuneTrace]:
        """K/V deltas after one epoch of batch-1 SGD on `sequences` from zero, and the training trace.

        FT runs in train mode, so a model's own dropout is active (the paper's fairseq GPTs: 0.1); its random stream
        is seeded with `seed` so that a run is reproducible, without touching the caller's global generator.
        """
        self.load_state(self.zero_state)
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(seed)
            trace = kv_finetune(
                self.model,
                sequences,
                lr,
                method=method,
                probe=self.probe if record_queries else None,
                start_length=len(self.layout.start_ids),
                geometry=self.geometry,
            )
        # Across processes every one trains the same deltas; all evaluate the main process's (distributed.py).
        return distributed.broadcast(self.snapshot()), trace

    def _cuda_devices(self) -> list[torch.device]:
        """Every CUDA device a forward runs on (a model spread by a device map runs dropout on each), so that
        seeding the dropout stream leaves the caller's generators as they were."""
        devices = {p.device for p in self.model.parameters()} | {self.geometry.input_device}
        for placed in (getattr(unwrap_peft(self.model), "hf_device_map", None) or {}).values():
            if isinstance(placed, int) or str(placed).startswith("cuda"):  # accelerate names GPUs by index
                devices.add(torch.device("cuda", placed) if isinstance(placed, int) else torch.device(placed))
        return sorted((d for d in devices if d.type == "cuda"), key=str)

    def deltas_finite(self) -> bool:
        return all(bool(torch.isfinite(p.detach()).all()) for p in self.params.values())

    # ------------------------------------------------------------------------------------------ forwards

    def prefix(self, context: Context, *, moments: bool = False) -> Prefix:
        """`context` run once with the zero deltas (ICL); with `moments`, its demo tokens join the K/V moments."""
        self.load_state(self.zero_state)
        start = len(self.layout.start_ids)

        def observe():
            mask = torch.zeros((1, len(context)), dtype=torch.bool)
            mask[0, start:] = True
            return self.moments.accumulate(mask)

        return self.scorer.prefix(context, observe if moments else None)

    def evaluate(
        self,
        prefix: Prefix,
        examples: list[dict],
        state: State,
        *,
        record: bool = True,
        moments: bool = False,
    ) -> list[Observation]:
        """Every example after `prefix` with the deltas `state`; `record` keeps the probe's record of candidate 0's
        sequence, `moments` adds its query-example tokens to the K/V input moments."""
        self.load_state(state)
        records: dict[int, ProbeRecord] = {}

        @contextlib.contextmanager
        def observe(rows: list[Row]):
            recorded = {i: row.analysis_index for i, row in enumerate(rows) if row.analysis_index is not None}
            with contextlib.ExitStack() as stack:
                if record:
                    stack.enter_context(self.probe.record_eval(recorded))
                if moments:
                    mask = torch.zeros((len(rows), max(len(r.ids) for r in rows)), dtype=torch.bool)
                    for i in recorded:
                        mask[i, rows[i].query_start : len(rows[i].ids)] = True
                    stack.enter_context(self.moments.accumulate(mask))
                yield
            if record:
                records.update({rows[i].example: r for i, r in self.probe.eval_records().items()})

        scores = self.scorer.score(prefix, examples, observe if (record or moments) else None)
        return [Observation(s, records.get(i)) for i, s in enumerate(scores)]

    def predictions(self, context: Context, examples: list[dict], state: State) -> list[CandidateScores]:
        """Candidate scores without recording (lr tuning, seed selection, the order control)."""
        self.load_state(state)
        prefix = self.scorer.prefix(context)
        return self.scorer.score(prefix, examples)

    def accuracy(self, context: Context, examples: list[dict], state: State) -> float:
        """Accuracy (%) on `examples`; across processes each scores its share and every one gets the same value."""
        share = distributed.shard(examples).items
        scores = self.predictions(context, share, state)
        correct = [s.predicted == int(ex["label"]) for s, ex in zip(scores, share, strict=True)]
        return 100.0 * float(np.mean(distributed.concatenate(distributed.gather(correct))))


__all__ = ["Engine", "Observation", "State"]
