"""K/V-only finetuning on the demonstrations, as the paper's FT baseline (Dai et al. 2023, §3.2 and Appendix B).

Plain SGD (no momentum, no weight decay), constant learning rate, batch 1, one epoch in demonstration order, on the
K/V deltas of `transformers_momentum.kv_tuning.KVTuningConfig` only. The loss is the token-mean causal-LM NLL over
every token of the formatted demonstration (prompt and label tokens; the start token is never a target).

``method="lcgd"`` is Deutch et al.'s layer-causal GD: each decoder block's input is detached (a stop-gradient
between layers) and every block's output goes through the final norm and the LM head (a logit lens); the loss is the
sum of the per-layer token-mean NLLs, so each layer learns only from its own prediction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..architectures import decoder_layers, final_norm
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


@contextlib.contextmanager
def _layer_causal(model: nn.Module):
    """Detach every decoder block's input and collect every block's output (for the per-layer logit lens)."""
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
    for block in decoder_layers(model):
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
) -> FinetuneTrace:
    """One epoch of batch-1 SGD over `sequences` (token ids, in order) on `model`'s trainable parameters.

    `model` is a peft model from ``get_peft_model(base, KVTuningConfig())``; its deltas are updated in place.
    With `probe`, the training forwards record the queries of every token (in train mode, with the parameters after
    the previous steps, as the paper's code does); the first `start_length` positions (the start token) are dropped.
    """
    if method not in FT_METHODS:
        raise ValueError(f"Unknown finetuning method {method!r}; use one of {FT_METHODS}.")
    parameters = list(trainable_parameters(model).values())
    if not parameters:
        raise ValueError(
            "The model has no trainable parameters; wrap it with get_peft_model(model, KVTuningConfig())."
        )
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.0, weight_decay=0.0)
    trace = FinetuneTrace()
    per_layer_queries: list[list[torch.Tensor]] | None = None
    per_layer_projected: list[list[torch.Tensor]] | None = None
    base = unwrap_model(model)
    device = next(base.parameters()).device
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
                with record, _layer_causal(model) as block_outputs:
                    model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
                norm, head = final_norm(model), base.get_output_embeddings()
                loss = sum(_token_mean_nll(head(norm(hidden)), input_ids) for hidden in block_outputs)
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


__all__ = ["FT_METHODS", "FinetuneTrace", "kv_finetune", "trainable_parameters"]
