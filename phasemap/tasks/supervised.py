"""Supervised teachers on i.i.d. inputs (teacher: mlp, linear, identity): one model's train and
test set from its resolved config.

The teacher and the data are drawn from `data_seed` (or the run's `seed` when it is null), so
fixing `data_seed` holds the task fixed across seeds while students and SGD noise vary.

    data = make_data(cfg)  # {"x_train": (N, d_in), "y_train": (N, d_out), "x_test", "y_test"}
"""

from __future__ import annotations

import torch

from phasemap.activations import ACTIVATION_FNS
from phasemap.rng import derive_seed


def _inputs(gen: torch.Generator, n: int, cfg: dict) -> torch.Tensor:
    z = torch.randn(n, cfg["input_dim"], generator=gen, dtype=torch.float64) * cfg["input_scale"]
    return torch.sin(z) if cfg["input_dist"] == "sin_gaussian" else z


def _whiten(x: torch.Tensor) -> torch.Tensor:
    """Transform x (N, d) so that (1/N) x^T x = I exactly (to float64 precision)."""
    cov = x.T @ x / x.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    return x @ (evecs * evals.rsqrt()) @ evecs.T


def linear_teacher(gen: torch.Generator, cfg: dict) -> torch.Tensor:
    """W* (d_out, d_in) = U diag(spectrum) V^T with random orthonormal U, V."""
    rank, d_in, d_out = cfg["teacher_rank"], cfg["input_dim"], cfg["output_dim"]
    u, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=gen, dtype=torch.float64))
    s = torch.tensor(cfg["spectrum"], dtype=torch.float64)
    return (u * s) @ v.T


def mlp_teacher(gen: torch.Generator, cfg: dict) -> list[torch.Tensor]:
    """Weights of an mlp teacher: LeCun-normal layers with `teacher_rank` hidden units."""
    sizes = [cfg["input_dim"]] + [cfg["teacher_rank"]] * (cfg["teacher_depth"] - 1) + [cfg["output_dim"]]
    return [torch.randn(a, b, generator=gen, dtype=torch.float64) / a**0.5 for a, b in zip(sizes, sizes[1:])]


def _mlp_forward(weights: list[torch.Tensor], x: torch.Tensor, activation: str, scale: float) -> torch.Tensor:
    act = ACTIVATION_FNS[activation]
    for w in weights[:-1]:
        x = act(x @ w)
    return scale * (x @ weights[-1])


def teacher_params(cfg: dict) -> list[torch.Tensor]:
    """The teacher's weights as make_data draws them: [W*^T] (d_in, d_out) for a linear teacher, the
    layers for an mlp teacher, [] for the identity (float64)."""
    seed = cfg["data_seed"] if cfg["data_seed"] is not None else cfg["seed"]
    gen = torch.Generator().manual_seed(derive_seed(seed, "data"))
    _inputs(gen, cfg["n_train"], cfg), _inputs(gen, cfg["n_test"], cfg)   # the same draws as make_data
    if cfg["teacher"] == "linear":
        return [linear_teacher(gen, cfg).T.contiguous()]
    return mlp_teacher(gen, cfg) if cfg["teacher"] == "mlp" else []


def teach(teacher: str, params: list[torch.Tensor], x: torch.Tensor, activation: str, scale: float) -> torch.Tensor:
    """The teacher's outputs for inputs x (..., N, d_in), params with the same leading axes (batched)."""
    if teacher == "identity":
        return x
    if teacher == "linear":
        return x @ params[0]
    return _mlp_forward(params, x, activation, scale)


def make_data(cfg: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Train and test sets for one resolved config. Test targets are noiseless; train targets carry
    fixed label noise only with noise_on: labels (fresh_labels draws it per step in the engine)."""
    seed = cfg["data_seed"] if cfg["data_seed"] is not None else cfg["seed"]
    gen = torch.Generator().manual_seed(derive_seed(seed, "data"))
    x_train, x_test = _inputs(gen, cfg["n_train"], cfg), _inputs(gen, cfg["n_test"], cfg)
    if cfg["teacher"] == "identity":
        y_train, y_test = x_train.clone(), x_test.clone()
    elif cfg["teacher"] == "linear":
        w_star = linear_teacher(gen, cfg)
        if cfg["whiten"]:
            x_train = _whiten(x_train)
        y_train, y_test = x_train @ w_star.T, x_test @ w_star.T
    else:
        weights = mlp_teacher(gen, cfg)
        f = lambda x: _mlp_forward(weights, x, cfg["teacher_activation"], cfg["output_scale"])  # noqa: E731
        y_train, y_test = f(x_train), f(x_test)
    if cfg["noise_on"] == "labels" and cfg["sigma"] > 0 and not cfg.get("fresh_data"):   # fresh data: per step
        y_train = y_train + cfg["sigma"] * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
    out = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return {k: v.to(dtype) for k, v in out.items()}
