"""Reference learners for in-context linear regression, computed exactly (float64) on the model's own prompts.

Each learner maps the k in-context examples `(X, y)` of a prompt (X: k x d) to a weight vector w, whose prediction
at the query is `w.x_q` (so its input sensitivity d(prediction)/d(x_q) is w itself). Loss of the iterative ones:
`L(w) = 1/(2k) sum_i (w.x_i - y_i)^2`, started from w = 0 (von Oswald et al., 2023).

* ``ols``: the minimum-norm least-squares solution `pinv(X) y`.
* ``ridge``: `(X^T X + lam I)^-1 X^T y`.
* ``gd``: `steps` steps of gradient descent, `w <- w - lr grad L(w)`.
* ``momentum_gd``: heavy-ball GD in Dai et al.'s (2023, §5) form: the update applies the current gradient plus an
  exponentially decayed sum of the earlier ones, `w_t = w_{t-1} - lr sum_{i<=t} beta^(t-i) grad L(w_{i-1})`
  (their momentum attention adds `sum_{i<t} eta^(t-i) v_i` to the attention output, which plays the current step).
* ``newton``: `steps` iterations of Newton's method for the inverse of `S = X^T X` (Fu et al., 2023):
  `M_0 = a S^T`, `M_{j+1} = 2 M_j - M_j S M_j`, and `w = M_j X^T y` (-> `ols`). Fu et al. write
  `a = 2 / ||S S^T||_2`, the edge of the iteration's convergence range `0 < a < 2 / ||S S^T||_2`, where the top
  eigen-direction never converges; we tune `a = c / ||S S^T||_2` over c in (0, 2) like the other learners' steps.

Dai et al.'s own axis is the *token position*, not the layer: momentum attention adds an exponentially decayed sum
of the earlier positions' values, `out_t = attn_t + sum_(i<t) eta^(t-i) v_i`. Its learner is one pass over the
demonstrations in prompt order:

* ``online_sgd``: `w_i = w_(i-1) - lr g_i` with `g_i = (w_(i-1).x_i - y_i) x_i`, i = 1..k, from w_0 = 0;
* ``online_momentum_sgd``: `v_i = beta v_(i-1) + g_i`, `w_i = w_(i-1) - lr v_i`, i.e.
  `w_i = w_(i-1) - lr sum_(j<=i) beta^(i-j) g_j`: momentum as an EMA over token positions.
* ``kalman``: the exact posterior mean of w for prompts whose w drifts as a Gaussian random walk
  (`DriftingRegressionTask`): an oracle that knows the drift and noise scales (with no drift it is the Bayes
  posterior mean under w ~ N(0, I), i.e. ridge with lambda = noise variance; min-norm OLS without noise).

Step sizes, momentum, lambda (0 included) and Newton's step scale are tuned per number of examples k on held-out
prompts (`tune_learners`), never on the evaluation prompts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .tasks import LinearRegressionTask, RegressionPrompts, seed_generator


def ols(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares, (n, k, d), (n, k) -> (n, d)."""
    return (torch.linalg.pinv(xs) @ ys[..., None])[..., 0]


def ridge(xs: torch.Tensor, ys: torch.Tensor, lam: float) -> torch.Tensor:
    """`(X^T X + lam I)^-1 X^T y`; lam = 0 is min-norm least squares (the limit lam -> 0+, defined for k < d too)."""
    if lam == 0:
        return ols(xs, ys)
    gram = xs.transpose(1, 2) @ xs
    eye = torch.eye(xs.shape[-1], dtype=xs.dtype)
    return torch.linalg.solve(gram + lam * eye, (xs.transpose(1, 2) @ ys[..., None]))[..., 0]


def _gradient(xs: torch.Tensor, ys: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    residual = (xs @ w[..., None])[..., 0] - ys
    return (xs.transpose(1, 2) @ residual[..., None])[..., 0] / xs.shape[1]


def gradient_descent(
    xs: torch.Tensor, ys: torch.Tensor, lr: float, steps: int, momentum: float = 0.0
) -> torch.Tensor:
    """`steps` steps of (heavy-ball, when `momentum > 0`) GD from w = 0 on L(w) = 1/(2k) sum_i (w.x_i - y_i)^2."""
    w = xs.new_zeros(xs.shape[0], xs.shape[-1])
    if xs.shape[1] == 0:
        return w
    velocity = torch.zeros_like(w)
    for _ in range(steps):
        velocity = momentum * velocity + _gradient(xs, ys, w)
        w = w - lr * velocity
    return w


def momentum_gradient_descent(
    xs: torch.Tensor, ys: torch.Tensor, lr: float, momentum: float, steps: int
) -> torch.Tensor:
    return gradient_descent(xs, ys, lr, steps, momentum=momentum)


def newton_iterations(xs: torch.Tensor, ys: torch.Tensor, steps: int, scale: float = 1.0) -> torch.Tensor:
    """`steps` Newton-Schulz iterations for the inverse of S = X^T X from `M_0 = (scale / ||S S^T||_2) S^T`
    (converges for 0 < scale < 2), then `w = M X^T y`."""
    gram = xs.transpose(1, 2) @ xs
    # ||S S^T||_2 = lambda_max(S)^2 for the symmetric PSD S; the clamp keeps an all-zero prompt finite.
    scale = scale / torch.linalg.matrix_norm(gram @ gram.transpose(1, 2), ord=2).clamp_min(1e-300)
    inverse = scale[:, None, None] * gram.transpose(1, 2)
    for _ in range(steps):
        inverse = 2 * inverse - inverse @ gram @ inverse
    return (inverse @ xs.transpose(1, 2) @ ys[..., None])[..., 0]


def online_momentum_sgd(xs: torch.Tensor, ys: torch.Tensor, lr: float, momentum: float = 0.0) -> torch.Tensor:
    """One pass over the k demonstrations in prompt order, from w = 0: per example the squared-error gradient
    `g_i = (w.x_i - y_i) x_i`, the velocity `v_i = momentum v_(i-1) + g_i` and `w <- w - lr v_i` (an EMA of the
    per-position gradients, Dai et al.'s momentum on the token axis). `momentum = 0` is online SGD."""
    w = xs.new_zeros(xs.shape[0], xs.shape[-1])
    velocity = torch.zeros_like(w)
    for i in range(xs.shape[1]):
        x = xs[:, i]
        gradient = ((w * x).sum(-1) - ys[:, i])[:, None] * x
        velocity = momentum * velocity + gradient
        w = w - lr * velocity
    return w


def online_sgd(xs: torch.Tensor, ys: torch.Tensor, lr: float) -> torch.Tensor:
    """One pass of SGD (one example per step, prompt order) from w = 0."""
    return online_momentum_sgd(xs, ys, lr, 0.0)


def kalman_filter(
    xs: torch.Tensor, ys: torch.Tensor, drift_std: float, noise_std: float, prior_std: float = 1.0
) -> torch.Tensor:
    """Posterior mean of the current w after the k demonstrations, for w_1 ~ N(0, prior_std^2 I),
    w_i = w_(i-1) + drift_std * N(0, I) and y_i = w_i.x_i + noise_std * N(0, 1): the Bayes-optimal prediction of
    the next y is this mean times the next x (the random walk does not move the mean)."""
    n, k, d = xs.shape
    mean = xs.new_zeros(n, d)
    covariance = (prior_std**2) * torch.eye(d, dtype=xs.dtype).expand(n, d, d).clone()
    eye = torch.eye(d, dtype=xs.dtype)
    for i in range(k):
        if i > 0:
            covariance = covariance + drift_std**2 * eye
        x = xs[:, i]
        px = (covariance @ x[..., None])[..., 0]
        innovation = ((x * px).sum(-1) + noise_std**2).clamp_min(1e-12)
        gain = px / innovation[:, None]
        mean = mean + gain * (ys[:, i] - (mean * x).sum(-1))[:, None]
        covariance = covariance - gain[:, :, None] * px[:, None, :]
        covariance = (covariance + covariance.transpose(1, 2)) / 2  # keep it symmetric in floating point
    return mean


@dataclass(frozen=True)
class Learner:
    """A reference learner: `fit(xs, ys, **hyperparameters)` plus the grid its hyperparameters are tuned over."""

    name: str
    fit: Callable[..., torch.Tensor]
    grid: Mapping[str, Sequence[float]] = field(default_factory=dict)
    description: str = ""

    def candidates(self) -> list[dict[str, float]]:
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]


_LR_GRID = tuple(float(x) for x in torch.logspace(-2, 0.6, 27, dtype=torch.float64))
_MOMENTUM_GRID = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)
_RIDGE_GRID = (0.0,) + tuple(float(x) for x in torch.logspace(-4, 1.5, 23, dtype=torch.float64))
_NEWTON_SCALE_GRID = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 1.9, 1.99)
_ONLINE_LR_GRID = tuple(float(x) for x in torch.logspace(-2.5, 0.3, 29, dtype=torch.float64))


def reference_learners(
    steps: int, drift_std: float = 0.0, noise_std: float = 0.0, prior_std: float = 1.0
) -> dict[str, Learner]:
    """The lab's learners; `steps` is the number of iterations of the iterative ones (one per model layer). With
    `drift_std > 0` the Kalman-filter oracle of the drifting task joins them."""
    learners = [
        Learner("ols", ols, description="min-norm least squares"),
        Learner("ridge", ridge, {"lam": _RIDGE_GRID}, "ridge regression, lambda tuned (0 included)"),
        Learner(
            "gd_1step",
            lambda xs, ys, lr: gradient_descent(xs, ys, lr, 1),
            {"lr": _LR_GRID},
            "one GD step from w = 0, lr tuned (von Oswald et al.)",
        ),
        Learner(
            "gd",
            lambda xs, ys, lr: gradient_descent(xs, ys, lr, steps),
            {"lr": _LR_GRID},
            f"{steps} GD steps from w = 0, lr tuned",
        ),
        Learner(
            "momentum_gd",
            lambda xs, ys, lr, momentum: momentum_gradient_descent(xs, ys, lr, momentum, steps),
            {"lr": _LR_GRID, "momentum": _MOMENTUM_GRID},
            f"{steps} heavy-ball GD steps (Dai et al.'s form), lr and momentum tuned",
        ),
        Learner(
            "newton",
            lambda xs, ys, scale: newton_iterations(xs, ys, steps, scale),
            {"scale": _NEWTON_SCALE_GRID},
            f"{steps} Newton iterations for the inverse (Fu et al.), step scale tuned",
        ),
        Learner(
            "online_sgd",
            online_sgd,
            {"lr": _ONLINE_LR_GRID},
            "one pass of SGD over the demonstrations in prompt order, lr tuned",
        ),
        Learner(
            "online_momentum_sgd",
            online_momentum_sgd,
            {"lr": _ONLINE_LR_GRID, "momentum": _MOMENTUM_GRID},
            "one pass of SGD with momentum (an EMA over token positions, Dai et al.'s axis), lr and momentum tuned",
        ),
    ]
    if drift_std > 0:
        learners.append(
            Learner(
                "kalman",
                lambda xs, ys: kalman_filter(xs, ys, drift_std, noise_std, prior_std),
                description="Kalman filter: the exact posterior mean under the task's drift (an oracle)",
            )
        )
    return {learner.name: learner for learner in learners}


def online_momentum_at_eta(eta: float) -> Learner:
    """Online momentum SGD with the momentum fixed to an arm's eta (lr tuned): the learner Dai et al.'s reading
    says a momentum-attention model with that eta implements."""
    return Learner(
        "online_momentum_sgd_at_eta",
        lambda xs, ys, lr: online_momentum_sgd(xs, ys, lr, eta),
        {"lr": _ONLINE_LR_GRID},
        f"one pass of momentum SGD over the demonstrations with momentum fixed to the arm's eta ({eta:.3g}), lr tuned",
    )


def learner_weights(
    learner: Learner, prompts: RegressionPrompts, hyperparameters: Mapping[int, Mapping[str, float]]
) -> torch.Tensor:
    """w fitted on the first k points of every prompt, for every k = 0 .. P - 1: shape (n, P, d).

    `hyperparameters[k]` are the learner's tuned values for k examples."""
    xs, ys = prompts.xs.double(), prompts.ys.double()
    n, points, n_dims = xs.shape
    weights = xs.new_zeros(n, points, n_dims)
    for k in range(1, points):
        weights[:, k] = learner.fit(xs[:, :k], ys[:, :k], **hyperparameters.get(k, {}))
    return weights


def learner_predictions(weights: torch.Tensor, prompts: RegressionPrompts) -> torch.Tensor:
    """The prediction at every point from the weights fitted on the points before it: (n, P)."""
    return (weights * prompts.xs.double()).sum(-1)


def tune_learners(
    task: LinearRegressionTask,
    learners: Mapping[str, Learner],
    n_prompts: int = 2000,
    seed: int = 999_983,
) -> dict[str, dict[int, dict[str, float]]]:
    """Grid-search every learner's hyperparameters per k on `n_prompts` held-out prompts from `seed` (a stream
    disjoint from training and evaluation seeds). Returns learner -> k -> best hyperparameters."""
    prompts = task.sample(n_prompts, seed_generator(seed))
    xs, ys = prompts.xs, prompts.ys
    tuned: dict[str, dict[int, dict[str, float]]] = {}
    for name, learner in learners.items():
        tuned[name] = {}
        for k in range(1, task.n_points):
            best, best_error = {}, float("inf")
            for candidate in learner.candidates() or [{}]:
                w = learner.fit(xs[:, :k], ys[:, :k], **candidate)
                error = ((w * xs[:, k]).sum(-1) - ys[:, k]).pow(2).mean().item()
                if error < best_error:  # NaN/inf (divergent step sizes) never win
                    best, best_error = candidate, error
            tuned[name][k] = best
    return tuned
