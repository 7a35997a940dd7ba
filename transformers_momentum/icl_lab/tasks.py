"""Synthetic in-context learning tasks, generated on the fly from a seed.

* [`LinearRegressionTask`]: prompts `(x_1, y_1, ..., x_P, y_P)` with `y_i = w.x_i + noise`, a fresh `w` per prompt
  (Garg et al., 2022; von Oswald et al., 2023). The prediction at x_i has seen the i - 1 pairs before it, so one
  prompt of P points measures the error after k = 0, ..., P - 1 in-context examples.
  With `noise_std > 0` GD, ridge and OLS separate (Akyürek et al., 2023); with `drift_std > 0` the weight vector
  drifts along the prompt as a random walk, so recent examples say more than old ones (a recency task); and
  `input_scale` / `covariance="skewed"` give Garg et al.'s out-of-distribution prompts.
* [`MQARTask`]: multi-query associative recall (Arora et al., 2023, "Zoology"): key-value pairs, then every key
  again; the model must answer each key with its value. With `reassign=True` one key is given a new value right
  before the queries, and the latest value is the answer (a recency task).
* [`Curriculum`]: Garg et al.'s curriculum, growing the active dimensions and the prompt length during training.

[`PromptStream`] turns a task into an endless, seeded `IterableDataset` for `Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import IterableDataset

IGNORE_INDEX = -100  # label of positions that carry no answer (the causal-LM loss skips them)


@dataclass(frozen=True)
class RegressionPrompts:
    """A batch of regression prompts: `xs` (n, P, d), `ys` (n, P) and the task vectors `ws`: (n, d), or (n, P, d)
    when w drifts along the prompt (`ws[:, i]` generated `ys[:, i]`)."""

    xs: torch.Tensor
    ys: torch.Tensor
    ws: torch.Tensor

    def __len__(self) -> int:
        return self.xs.shape[0]

    def to(self, dtype: torch.dtype) -> RegressionPrompts:
        return RegressionPrompts(self.xs.to(dtype), self.ys.to(dtype), self.ws.to(dtype))

    def __getitem__(self, index) -> RegressionPrompts:
        return RegressionPrompts(self.xs[index], self.ys[index], self.ws[index])


COVARIANCES = ("identity", "skewed")


def skewed_scales(n_dims: int) -> torch.Tensor:
    """Per-coordinate standard deviations of the skewed covariance: eigenvalues proportional to 1/i^2, i = 1..d,
    rescaled so that E||x||^2 = d as for N(0, I) (Garg et al., 2022, §5 out-of-distribution prompts)."""
    eigenvalues = 1.0 / torch.arange(1, n_dims + 1, dtype=torch.float64) ** 2
    return (eigenvalues * n_dims / eigenvalues.sum()).sqrt()


@dataclass(frozen=True)
class LinearRegressionTask:
    """In-context linear regression: `w ~ N(0, I_d)` per prompt, `y = w.x + noise_std * N(0, 1)`.

    Args:
        n_dims: Dimension d of x.
        n_points: Points P per prompt (the query included), so predictions see k = 0 .. P - 1 examples.
        noise_std: Standard deviation of the label noise.
        x_distribution: ``"gaussian"`` (x ~ N(0, I_d), Garg et al.) or ``"uniform"`` (x ~ U(-1, 1)^d, von Oswald
            et al.).
        drift_std: With `drift_std > 0`, w drifts along the prompt: `w_1 ~ N(0, I)`, `w_i = w_(i-1) +
            drift_std * N(0, I)`, and `y_i = w_i.x_i + noise`.
        input_scale: x is multiplied by this (Garg et al.'s out-of-distribution x2 and x0.5).
        covariance: ``"identity"`` or ``"skewed"`` (`skewed_scales`; Gaussian inputs only).
    """

    n_dims: int = 5
    n_points: int = 21
    noise_std: float = 0.0
    x_distribution: Literal["gaussian", "uniform"] = "gaussian"
    drift_std: float = 0.0
    input_scale: float = 1.0
    covariance: Literal["identity", "skewed"] = "identity"

    def __post_init__(self):
        if self.n_dims < 1 or self.n_points < 1:
            raise ValueError(f"n_dims and n_points must be positive; got {self.n_dims} and {self.n_points}.")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0; got {self.noise_std}.")
        if self.drift_std < 0:
            raise ValueError(f"drift_std must be >= 0; got {self.drift_std}.")
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be > 0; got {self.input_scale}.")
        if self.x_distribution not in ("gaussian", "uniform"):
            raise ValueError(f"x_distribution must be 'gaussian' or 'uniform'; got {self.x_distribution!r}.")
        if self.covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}; got {self.covariance!r}.")
        if self.covariance == "skewed" and self.x_distribution != "gaussian":
            raise ValueError("a skewed covariance needs x_distribution='gaussian'.")

    @property
    def max_examples(self) -> int:
        """The most in-context examples any prediction sees (P - 1)."""
        return self.n_points - 1

    def sample_inputs(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        if self.x_distribution == "gaussian":
            xs = torch.randn(*shape, self.n_dims, generator=generator, dtype=torch.float64)
            if self.covariance == "skewed":
                xs = xs * skewed_scales(self.n_dims)
        else:
            xs = 2 * torch.rand(*shape, self.n_dims, generator=generator, dtype=torch.float64) - 1
        return xs * self.input_scale if self.input_scale != 1.0 else xs

    def sample(
        self,
        n_prompts: int,
        generator: torch.Generator,
        n_points: int | None = None,
        active_dims: int | None = None,
    ) -> RegressionPrompts:
        """`n_prompts` prompts of `n_points` (default `self.n_points`) points, in float64. With `active_dims`, the
        coordinates of x past the first `active_dims` are 0 (Garg et al.'s curriculum)."""
        points = self.n_points if n_points is None else n_points
        xs = self.sample_inputs((n_prompts, points), generator)
        if active_dims is not None and active_dims < self.n_dims:
            xs[..., active_dims:] = 0
        ws = torch.randn(n_prompts, self.n_dims, generator=generator, dtype=torch.float64)
        if self.drift_std > 0:
            steps = torch.randn(n_prompts, points, self.n_dims, generator=generator, dtype=torch.float64)
            steps[:, 0] = 0
            ws = ws[:, None] + self.drift_std * steps.cumsum(1)  # (n, P, d): w_i for every point
            ys = (xs * ws).sum(-1)
        else:
            ys = torch.einsum("npd,nd->np", xs, ws)
        if self.noise_std > 0:
            ys = ys + self.noise_std * torch.randn(
                n_prompts, points, generator=generator, dtype=torch.float64
            )
        return RegressionPrompts(xs, ys, ws)

    def replace(self, **changes) -> LinearRegressionTask:
        from dataclasses import replace

        return replace(self, **changes)


#: The anchors' settings (synthetic ICL literature), for `LinearRegressionTask(**PRESETS[name])`.
REGRESSION_PRESETS: dict[str, dict] = {
    # Garg et al. 2022: d = 20, up to 40 in-context examples, x ~ N(0, I).
    "garg2022": dict(n_dims=20, n_points=41, x_distribution="gaussian"),
    # von Oswald et al. 2023: d = 10, N = 10 context points (+ the query), x ~ U(-1, 1)^d.
    "von_oswald2023": dict(n_dims=10, n_points=11, x_distribution="uniform"),
}


@dataclass(frozen=True)
class MQARTask:
    """Multi-query associative recall: `k_1 v_1 ... k_n v_n | k_pi(1) v_pi(1) ... k_pi(n) v_pi(n)`.

    Keys and values come from disjoint halves of the vocabulary (ids 1.. for keys, the rest for values; 0 pads);
    keys within a prompt are distinct, values are drawn with replacement. The second half asks every key once in a
    random order; the loss and the accuracy count only the answers there (the value after each queried key).

    Args:
        vocab_size: Token ids 0..vocab_size - 1 (0 is padding).
        max_kv_pairs: Most key-value pairs in a prompt; training draws n uniformly from
            [min_kv_pairs, max_kv_pairs] per prompt and right-pads to `4 * max_kv_pairs` tokens.
        min_kv_pairs: Fewest pairs in a training prompt.
        reassign: Right after the n pairs, one of their keys (drawn uniformly) comes again with a new value (never
            its old one); its query must be answered with this latest value. Prompts are then `4n + 2` tokens.
    """

    vocab_size: int = 64
    max_kv_pairs: int = 8
    min_kv_pairs: int = 1
    reassign: bool = False

    def __post_init__(self):
        if not 1 <= self.min_kv_pairs <= self.max_kv_pairs:
            raise ValueError(
                f"need 1 <= min_kv_pairs <= max_kv_pairs; got {self.min_kv_pairs} and {self.max_kv_pairs}."
            )
        if self.n_keys < self.max_kv_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} gives {self.n_keys} distinct keys, fewer than max_kv_pairs="
                f"{self.max_kv_pairs}; use vocab_size >= {2 * self.max_kv_pairs + 1}."
            )

    @property
    def n_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    @property
    def n_values(self) -> int:
        return self.vocab_size - 1 - self.n_keys

    @property
    def sequence_length(self) -> int:
        return 4 * self.max_kv_pairs + (2 if self.reassign else 0)

    def reassigned_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean (n, length) mask of the label positions that answer the re-assigned key (for `reassign=True`).

        The re-assigned key is the token at position 2n of each prompt (n its number of pairs)."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        if not self.reassign:
            return mask
        for row, ids in enumerate(input_ids.tolist()):
            n = (sum(1 for token in ids if token) - 2) // 4
            key = ids[2 * n]
            for t in range(2 * n + 3, 4 * n + 2, 2):
                if ids[t - 1] == key:
                    mask[row, t] = True
        return mask

    def sample(
        self, n_prompts: int, generator: torch.Generator, num_kv_pairs: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), each (n_prompts, 4 * max_kv_pairs). With `num_kv_pairs` every prompt has exactly
        that many pairs, otherwise each draws its own from [min_kv_pairs, max_kv_pairs]."""
        length = self.sequence_length
        input_ids = torch.zeros(n_prompts, length, dtype=torch.long)
        labels = torch.full((n_prompts, length), IGNORE_INDEX, dtype=torch.long)
        if num_kv_pairs is None:
            counts = torch.randint(
                self.min_kv_pairs, self.max_kv_pairs + 1, (n_prompts,), generator=generator
            ).tolist()
        else:
            if not 1 <= num_kv_pairs <= self.max_kv_pairs:
                raise ValueError(f"num_kv_pairs must be in [1, {self.max_kv_pairs}]; got {num_kv_pairs}.")
            counts = [num_kv_pairs] * n_prompts
        for row, n in enumerate(counts):
            keys = 1 + torch.randperm(self.n_keys, generator=generator)[:n]
            values = 1 + self.n_keys + torch.randint(0, self.n_values, (n,), generator=generator)
            order = torch.randperm(n, generator=generator)
            pairs = torch.stack([keys, values], dim=1).reshape(-1)
            extra = torch.empty(0, dtype=torch.long)
            if self.reassign:
                which = int(torch.randint(0, n, (1,), generator=generator))
                # A new value, never the old one: draw among the n_values - 1 others.
                offset = int(torch.randint(1, self.n_values, (1,), generator=generator))
                new_value = 1 + self.n_keys + (values[which] - 1 - self.n_keys + offset) % self.n_values
                extra = torch.stack([keys[which], new_value])
                values = values.clone()
                values[which] = new_value
            queries = torch.stack([keys[order], values[order]], dim=1).reshape(-1)
            start = 2 * n + len(extra)
            input_ids[row, : start + 2 * n] = torch.cat([pairs, extra, queries])
            labels[row, start + 1 : start + 2 * n : 2] = values[order]
        return input_ids, labels


class PromptStream(IterableDataset):
    """An endless stream of training examples from `make_batch(n, generator)`, seeded by `seed`.

    Examples are drawn in blocks of `block` prompts (cheap per example) and yielded one at a time as dicts of
    tensors, which `Trainer`'s default collator stacks. The same seed gives the same stream."""

    def __init__(
        self, make_batch: Callable[[int, torch.Generator], dict[str, torch.Tensor]], seed: int, block=256
    ):
        super().__init__()
        self.make_batch = make_batch
        self.seed = seed
        self.block = block

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            batch = self.make_batch(self.block, generator)
            for row in range(self.block):
                yield {name: tensor[row] for name, tensor in batch.items()}


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s (2022) curriculum: training starts with `start_dims` active dimensions (the rest of x is 0)
    and `start_points` points per prompt, and every `interval` steps adds `dims_increment` dimensions and
    `points_increment` points, up to the task's own."""

    start_dims: int
    start_points: int
    interval: int
    dims_increment: int = 1
    points_increment: int = 2

    def stage(self, step: int, n_dims: int, n_points: int) -> tuple[int, int]:
        """(active dimensions, points per prompt) at training step `step`."""
        grown = max(0, step) // self.interval
        return (
            min(n_dims, self.start_dims + grown * self.dims_increment),
            min(n_points, self.start_points + grown * self.points_increment),
        )


class StepCounter:
    """The training step, shared between a `TrainerCallback` that sets it and the stream that reads it."""

    def __init__(self) -> None:
        self.step = 0


def regression_stream(
    task: LinearRegressionTask,
    seed: int,
    n_points: int | None = None,
    curriculum: Curriculum | None = None,
    counter: StepCounter | None = None,
    block: int = 256,
) -> PromptStream:
    """Training prompts for the regression models (float32 `xs`, `ys`). With a `curriculum`, each block of
    `block` prompts (make it the batch size, so a batch never mixes prompt lengths) is drawn at the stage of the
    step `counter` holds."""

    def make_batch(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        points, active = n_points, None
        if curriculum is not None:
            active, points = curriculum.stage(counter.step if counter else 0, task.n_dims, task.n_points)
        prompts = task.sample(n, generator, n_points=points, active_dims=active).to(torch.float32)
        return {"xs": prompts.xs, "ys": prompts.ys}

    return PromptStream(make_batch, seed, block=block)


def mqar_stream(task: MQARTask, seed: int) -> PromptStream:
    """Training prompts for a causal LM (`input_ids`, `labels`)."""

    def make_batch(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        input_ids, labels = task.sample(n, generator)
        return {"input_ids": input_ids, "labels": labels}

    return PromptStream(make_batch, seed)


def seed_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
