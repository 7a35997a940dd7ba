"""The MQAR stages of the lab: the task, its training stream and the evaluation of one trained model.

Accuracy counts every queried key's answer (argmax at the query); with `--mqar-reassign` the accuracy on the
re-assigned keys alone (whose answer is the latest value) is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.momentum_gpt import MomentumGPTForCausalLM
from .evaluation import mqar_accuracy, mqar_anchor_measure
from .regression import EVAL_SEED, GATE_SEED
from .results import RunRecord
from .runs import Job
from .tasks import MQARTask, mqar_stream
from .training import AnchorProbe, ModelSettings, build_mqar_model, learned_etas


@dataclass
class MQARContext:
    task: MQARTask
    kv_counts: list[int]
    n_eval: int
    n_gate: int


def make_task(args) -> MQARTask:
    return MQARTask(vocab_size=args.vocab_size, max_kv_pairs=args.max_kv_pairs, reassign=args.mqar_reassign)


def prepare(args) -> MQARContext:
    task = make_task(args)
    return MQARContext(task, list(range(1, task.max_kv_pairs + 1)), args.n_eval, args.n_gate)


def build(args, context: MQARContext, eta: str, seed: int) -> MomentumGPTForCausalLM:
    settings = ModelSettings(args.num_layers, args.hidden_size, args.num_heads, args.learnable_eta_init)
    return build_mqar_model(settings, context.task, eta, seed)


def stream_and_callbacks(args, context: MQARContext, seed: int):
    probe = AnchorProbe(
        mqar_anchor_measure(context.task, context.n_gate, GATE_SEED),
        every=args.anchor_every or max(1, args.steps // 20),
        threshold=0.01,
    )
    return mqar_stream(context.task, seed), probe, [probe]


def chance_baselines(context: MQARContext) -> dict[str, list[float]]:
    """Error rates of guessing: uniformly over all value tokens, and over the values present in the prompt."""
    return {
        "chance_any_value": [1 - 1 / context.task.n_values for _ in context.kv_counts],
        "chance_prompt_value": [1 - 1 / c for c in context.kv_counts],
    }


def evaluate(model: MomentumGPTForCausalLM, job: Job, args, context: MQARContext) -> RunRecord:
    reassigned: dict[int, float] = {}
    accuracy = mqar_accuracy(model, context.task, context.kv_counts, context.n_eval, EVAL_SEED, reassigned)
    held_out = mqar_accuracy(model, context.task, context.kv_counts, context.n_gate, GATE_SEED)
    errors = [1 - accuracy[c] for c in context.kv_counts]
    extra = {"held_out_error": 1 - sum(held_out.values()) / len(held_out)}
    extra.update({f"reassigned_accuracy_{count}": value for count, value in reassigned.items()})
    return RunRecord(
        eta=job.eta,
        seed=job.seed,
        learning_rate=job.lr,
        steps=args.steps,
        headline=sum(errors) / len(errors),
        anchor_gap=errors[-1],
        curve=errors,
        extra=extra,
        learned_etas=learned_etas(model),
    )


__all__ = [
    "MQARContext",
    "build",
    "chance_baselines",
    "evaluate",
    "make_task",
    "prepare",
    "stream_and_callbacks",
]
