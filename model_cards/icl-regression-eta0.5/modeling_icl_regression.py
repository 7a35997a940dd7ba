"""Models that learn linear regression in context: a MomentumGPT with linear read-in/out, and von Oswald's LSA.

* [`MomentumGPTForInContextRegression`] (Garg et al., 2022): the prompt `(x_1, y_1, ..., x_k, y_k, x_q)` enters a
  [`MomentumGPTModel`] through `inputs_embeds` as alternating x- and y-tokens, and a linear read-out predicts y at
  every x-token, so one forward pass gives the prediction after 0, 1, ..., k in-context examples.
* [`LinearSelfAttentionForInContextRegression`] (von Oswald et al., 2023): layers of linear self-attention on tokens
  `e_i = (x_i, y_i)` and the query `(x_q, 0)`; every token attends to the context tokens only. One layer with
  `W_KQ = [[I, 0], [0, 0]]` and `W_PV = [[0, 0], [0, -lr]]` *is* one step of gradient descent from w = 0 on
  `L(w) = 1/(2N) sum_i (w.x_i - y_i)^2`, and L such layers are L steps (`from_gradient_descent`).

This file runs as Hub remote code too: `save_pretrained` writes it next to the weights together with its
configuration file and MomentumGPT's two files, and the guarded imports below find them as siblings.
"""

import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_icl_regression import LinearSelfAttentionConfig, MomentumGPTICLRegressionConfig

try:  # inside the plugin
    from transformers_momentum.models.momentum_gpt.modeling_momentum_gpt import (
        MomentumGPTModel,
        MomentumGPTPreTrainedModel,
    )
except ImportError:  # as remote code, without the plugin: MomentumGPT's file was saved beside this one
    from .modeling_momentum_gpt import MomentumGPTModel, MomentumGPTPreTrainedModel


@dataclass
class InContextRegressionOutput(ModelOutput):
    """
    Args:
        loss: Squared error divided by `n_dims` (Garg et al.'s normalisation), averaged over the predictions made.
        predictions: `(batch, points)` for the MomentumGPT model (the prediction at point i has seen i examples),
            `(batch,)` for the LSA model (the query only).
        layer_predictions: One tensor shaped like `predictions` per layer (with `output_layer_predictions=True`):
            the read-out applied after each layer, the last one equal to `predictions`.
    """

    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    layer_predictions: tuple[torch.Tensor, ...] | None = None


def _write_remote_code(save_directory: str | Path, classes: tuple[type, ...]) -> None:
    """Copy the files defining `classes` (flat, as Hub remote code expects) into `save_directory`."""
    for cls in classes:
        source = Path(sys.modules[cls.__module__].__file__)
        target = Path(save_directory) / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)


class _SavesRemoteCode:
    """Mixin: `save_pretrained` also writes the code `trust_remote_code=True` needs without the plugin.

    transformers' own mechanism (`register_for_auto_class`) copies only a file's *sibling* relative imports, and this
    model's backbone lives in another package folder, so the four files are written here instead; the config's
    `auto_map` names the classes in them."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            _write_remote_code(
                save_directory,
                (
                    MomentumGPTForInContextRegression,
                    type(self.config),
                    MomentumGPTModel,
                    MomentumGPTModel.config_class,
                ),
            )


def interleave_prompt(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(x_1, y_1, ..., x_P, y_P) -> tokens (x_1, 0), (0, y_1), ..., (x_P, 0), shape (batch, 2P - 1, d + 1).

    The last y is left out: no prediction may see it (it is the target at the last x-token)."""
    batch, points, n_dims = xs.shape
    tokens = xs.new_zeros(batch, points, 2, n_dims + 1)
    tokens[:, :, 0, :n_dims] = xs
    tokens[:, :, 1, n_dims] = ys
    return tokens.reshape(batch, 2 * points, n_dims + 1)[:, :-1]


class MomentumGPTForInContextRegression(_SavesRemoteCode, MomentumGPTPreTrainedModel):
    config: MomentumGPTICLRegressionConfig

    def __init__(self, config: MomentumGPTICLRegressionConfig):
        super().__init__(config)
        self.read_in = nn.Linear(config.n_dims + 1, config.hidden_size)
        self.model = MomentumGPTModel(config)
        self.read_out = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self.read_in or module is self.read_out:
            # PyTorch's default Linear init, as Garg et al.'s read-in/out (built outside their GPT-2): the backbone's
            # N(0, 0.02) would shrink the prompt's signal to the size of the position embeddings, and training then
            # sits far longer on the plateau where the model predicts 0.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)

    def forward(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor | None = None,
        output_layer_predictions: bool = False,
        **kwargs,
    ) -> InContextRegressionOutput:
        r"""
        xs (`torch.Tensor` of shape `(batch, points, n_dims)`): The inputs x_1..x_P of the prompt.
        ys (`torch.Tensor` of shape `(batch, points)`, *optional*): Their targets. y_i enters the prompt after x_i
            and is the target of the prediction at x_i; without `ys` only the zero-shot prediction at x_1 is
            meaningful.
        output_layer_predictions (`bool`): Also return the read-out after every layer (a "logit lens").
        """
        if xs.shape[1] > self.config.max_points:
            raise ValueError(
                f"Prompt of {xs.shape[1]} points is longer than the model's max_points={self.config.max_points}."
            )
        tokens = interleave_prompt(xs, ys if ys is not None else xs.new_zeros(xs.shape[:2]))
        outputs = self.model(
            inputs_embeds=self.read_in(tokens), output_hidden_states=output_layer_predictions, use_cache=False
        )
        predictions = self.read_out(outputs.last_hidden_state[:, 0::2]).squeeze(-1)
        layer_predictions = None
        if output_layer_predictions:
            # hidden_states = (embeddings, block 1, ..., block L-1, final normed output): the final norm is applied
            # to the intermediate blocks too, so every layer is read out the way the last one is.
            intermediate = outputs.hidden_states[1:-1]
            layer_predictions = tuple(
                self.read_out(self.model.norm(hidden)[:, 0::2]).squeeze(-1) for hidden in intermediate
            ) + (predictions,)
        loss = None
        if ys is not None:
            loss = (predictions - ys).pow(2).mean() / self.config.n_dims
        return InContextRegressionOutput(
            loss=loss, predictions=predictions, layer_predictions=layer_predictions
        )


class LinearSelfAttentionLayer(nn.Module):
    """e_j <- e_j + sum_h W_PV,h (1/N sum_{i<=N} e_i e_i^T) W_KQ,h e_j for every token j; keys are the N context
    tokens (the query attends to them but is not one of them)."""

    def __init__(self, config: LinearSelfAttentionConfig):
        super().__init__()
        size = config.n_dims + 1
        self.kq = nn.Parameter(torch.zeros(config.num_attention_heads, size, size))
        self.pv = nn.Parameter(torch.zeros(config.num_attention_heads, size, size))

    def forward(self, tokens: torch.Tensor, n_context: int) -> torch.Tensor:
        context = tokens[:, :n_context]
        second_moment = context.transpose(1, 2) @ context / max(n_context, 1)  # (batch, D, D)
        # Summed over heads, the layer is one (D x D) linear map per prompt: sum_h W_PV,h M W_KQ,h.
        update = torch.einsum("hab,nbc,hcd->nad", self.pv, second_moment, self.kq)
        return tokens + tokens @ update.transpose(1, 2)


class LinearSelfAttentionForInContextRegression(_SavesRemoteCode, PreTrainedModel):
    config: LinearSelfAttentionConfig
    base_model_prefix = "lsa"

    def __init__(self, config: LinearSelfAttentionConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(
            [LinearSelfAttentionLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LinearSelfAttentionLayer):
            # von Oswald et al. start near zero, where the layer is the identity.
            for parameter in (module.kq, module.pv):
                init.normal_(parameter, mean=0.0, std=self.config.initializer_range)

    @classmethod
    def from_gradient_descent(
        cls, n_dims: int, learning_rate: float, steps: int = 1, dtype: torch.dtype = torch.float32
    ) -> "LinearSelfAttentionForInContextRegression":
        """The constructed model whose prediction *is* `steps` steps of GD from w = 0 with this learning rate on
        L(w) = 1/(2N) sum_i (w.x_i - y_i)^2 (von Oswald et al., 2023, Proposition 1, one layer per step)."""
        config = LinearSelfAttentionConfig(n_dims=n_dims, num_hidden_layers=steps, num_attention_heads=1)
        model = cls(config).to(dtype)
        with torch.no_grad():
            for layer in model.layers:
                layer.kq.zero_()
                layer.kq[0, :n_dims, :n_dims] = torch.eye(n_dims)
                layer.pv.zero_()
                # Each context token's y-slot becomes its residual y_i - w_t.x_i, the query's -w_t.x_q.
                layer.pv[0, n_dims, n_dims] = -learning_rate
        return model.eval()

    def forward(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor | None = None,
        output_layer_predictions: bool = False,
        **kwargs,
    ) -> InContextRegressionOutput:
        r"""
        xs (`torch.Tensor` of shape `(batch, N + 1, n_dims)`): N context inputs, then the query x_q.
        ys (`torch.Tensor` of shape `(batch, N + 1)`): Their targets; the last one (the query's) is only the target.
        """
        if ys is None:
            raise ValueError(
                "LinearSelfAttentionForInContextRegression needs `ys`: the context's targets are input."
            )
        n_context = xs.shape[1] - 1
        targets = ys.clone()
        targets[:, -1] = 0  # the query token is (x_q, 0)
        tokens = torch.cat([xs, targets[..., None]], dim=-1)
        layer_predictions = []
        for layer in self.layers:
            tokens = layer(tokens, n_context)
            layer_predictions.append(-tokens[:, -1, -1])  # the query's y-slot holds minus the prediction
        predictions = layer_predictions[-1]
        loss = (predictions - ys[:, -1]).pow(2).mean() / self.config.n_dims
        return InContextRegressionOutput(
            loss=loss,
            predictions=predictions,
            layer_predictions=tuple(layer_predictions) if output_layer_predictions else None,
        )


__all__ = [
    "InContextRegressionOutput",
    "LinearSelfAttentionForInContextRegression",
    "MomentumGPTForInContextRegression",
    "interleave_prompt",
]
