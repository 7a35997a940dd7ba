"""K/V-only finetuning on the demonstrations, as the paper's FT baseline (Dai et al. 2023, §3.2 and Appendix B).

Plain SGD (no momentum, no weight decay), constant learning rate, batch 1, one epoch in demonstration order, on the
K/V deltas of `transformers_momentum.kv_tuning.KVTuningConfig` only. The loss is the token-mean causal-LM NLL over
every token of the formatted demonstration (prompt and label tokens; the start token is never a target).

``method="lcgd"`` is Deutch et al.'s layer-causal GD: each decoder block's input is detached (a stop-gradient
between layers) and every block's output goes through the final norm and the LM head (a logit lens); the loss is the
sum of the per-layer token-mean NLLs, so each layer learns only from its own prediction.

Mixed precision as training frameworks do it: with a bf16/fp16 model the forwards run in that precision, while the
K/V deltas (the trainable parameters), their gradients and the SGD step stay in fp32 (the "master weights" of AMP
training). A bf16 delta would lose every update below 2^-8 of its own size; an fp32 delta keeps it, and the layer
adds the delta's fp32 output to the half-precision base output (`kv_tuning.KVTuningLayer`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..architectures import decoder_layers
from .geometry import AttentionGeometry
from .probe import AttentionProbe, unwrap_model

FT_METHODS = ("gd", "lcgd")


@dataclass
class FinetuneTrace:
    """Per-step losses and, when a probe recorded them, per layer the scaled queries of every training token
    (start tokens dropped, examples concatenated in order): L tensors of shape (N, heads*head_dim). The queries
    attention uses (after any rotary embedding) need the attention interface; the query projection's outputs are
    recorded whenever the model has a separate query projection."""

    losses: list[float] = field(default_factory=list)
    train_queries: list[torch.Tensor] | None = None
    train_projected_queries: list[torch.Tensor] | None = None


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def upcast_trainable(parameters) -> None:
    """Keep every trainable floating-point parameter in at least fp32, in place (the same `Parameter` objects, so
    optimizers and snapshots that hold them stay valid). peft upcasts fresh adapters of half-precision models itself
    (`autocast_adapter_dtype`), but not a model cast to bf16 after wrapping or wrapped without autocast."""
    for parameter in parameters:
        if parameter.is_floating_point() and parameter.element_size() < 4:
            parameter.data = parameter.data.float()


@contextlib.contextmanager
def _layer_causal(model: nn.Module, blocks: nn.ModuleList | None = None):
    """Detach every decoder block's input and collect every block's output (for the per-layer logit lens).
    `blocks` are `model`'s decoder blocks when the caller has them (`AttentionGeometry.blocks`)."""
    outputs: list[torch.Tensor] = []

    def detach_input(module, args, kwargs):
        if args:
            return (args[0].detach(), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach()
        return args, kwargs

    def keep_output(module, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    hooks = []
    for block in blocks if blocks is not None else decoder_layers(model):
        hooks.append(block.register_forward_pre_hook(detach_input, with_kwargs=True))
        hooks.append(block.register_forward_hook(keep_output))
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def _token_mean_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[0, :-1].float(), input_ids[0, 1:])


def kv_finetune(
    model: nn.Module,
    sequences: list[list[int]],
    lr: float,
    *,
    method: str = "gd",
    probe: AttentionProbe | None = None,
    start_length: int = 1,
    geometry: AttentionGeometry | None = None,
) -> FinetuneTrace:
    """One epoch of batch-1 SGD over `sequences` (token ids, in order) on `model`'s trainable parameters.

    `model` is a peft model from ``get_peft_model(base, KVTuningConfig())``; its deltas are updated in place.
    With `probe`, the training forwards record the queries of every token (in train mode, with the parameters after
    the previous steps, as the paper's code does); the first `start_length` positions (the start token) are dropped.
    `geometry` is the model's `AttentionGeometry` (read from the model when not given). Half-precision trainable
    parameters are upcast to fp32 first (see the module docstring).
    """
    if method not in FT_METHODS:
        raise ValueError(f"Unknown finetuning method {method!r}; use one of {FT_METHODS}.")
    parameters = list(trainable_parameters(model).values())
    if not parameters:
        raise ValueError(
            "The model has no trainable parameters; wrap it with get_peft_model(model, KVTuningConfig())."
        )
    upcast_trainable(parameters)
    geometry = geometry or AttentionGeometry.of(model)
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.0, weight_decay=0.0)
    trace = FinetuneTrace()
    per_layer_queries: list[list[torch.Tensor]] | None = None
    per_layer_projected: list[list[torch.Tensor]] | None = None
    base = unwrap_model(model)
    device = geometry.input_device  # not the first parameter's device: meta when the embeddings are offloaded
    was_training = model.training
    model.train()
    try:
        for sequence in sequences:
            input_ids = torch.tensor([sequence], device=device)
            optimizer.zero_grad(set_to_none=True)
            record = probe.record_train() if probe is not None else contextlib.nullcontext()
            if method == "gd":
                with record:
                    logits = model(input_ids=input_ids, use_cache=False).logits
                loss = _token_mean_nll(logits, input_ids)
            else:
                with record, _layer_causal(model, geometry.blocks) as block_outputs:
                    model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
                norm, head = geometry.final_norm, base.get_output_embeddings()
                # a post-norm model has no final norm: its blocks' outputs go to the head as they are
                lens = [norm(hidden) if norm is not None else hidden for hidden in block_outputs]
                loss = sum(_token_mean_nll(head(hidden), input_ids) for hidden in lens)
            loss.backward()
            optimizer.step()
            trace.losses.append(float(loss.detach()))
            if probe is not None:
                queries = probe.train_queries()
                if queries is not None:
                    if per_layer_queries is None:
                        per_layer_queries = [[] for _ in queries]
                    for layer, q in enumerate(queries):
                        per_layer_queries[layer].append(q[start_length:])
                projected = probe.train_projected_queries()
                if projected is not None:
                    if per_layer_projected is None:
                        per_layer_projected = [[] for _ in projected]
                    for layer, q in enumerate(projected):
                        per_layer_projected[layer].append(q[start_length:])
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    if per_layer_queries is not None:
        trace.train_queries = [torch.cat(chunks) for chunks in per_layer_queries]
    if per_layer_projected is not None:
        trace.train_projected_queries = [torch.cat(chunks) for chunks in per_layer_projected]
    return trace


__all__ = ["FT_METHODS", "FinetuneTrace", "kv_finetune", "trainable_parameters", "upcast_trainable"]
