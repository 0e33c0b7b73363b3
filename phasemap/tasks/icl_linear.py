"""In-context linear regression (the paper's transformer task, Fig. 10): sequences of (x, w^T x) tokens.

Each sequence has its own weight vector w; its n_ctx tokens are [x_t, w^T x_t] (dimension D = d + 1),
except that the final token's label is hidden (set to 0) and is the target:

    data = make_data(cfg)   # x_train (N, n_ctx, D), y_train (N, 1), x_test (Nt, n_ctx, D), y_test (Nt, 1)

- w ~ N(0, I_d / d); with teacher_rank r < d, w = P z with P (d, r) orthonormal columns fixed for
  the task and z ~ N(0, I_r / r). Either way E||w||^2 = 1.
- x_t ~ N(0, input_scale^2 I_d).
- noise_on "labels" with sigma > 0: sigma * N(0, 1) on the visible context labels and on y_train,
  drawn once; the test set is always clean.

Predicting zero has test loss E[(w^T x)^2] = input_scale^2 E||w||^2 = input_scale^2 for every
teacher_rank (`predict_zero_loss`): the baseline a trained model must beat.
"""

from __future__ import annotations

import torch

from phasemap.rng import derive_seed

Tensor = torch.Tensor


def predict_zero_loss(cfg: dict) -> float:
    """Expected test loss E[(y - 0)^2] of the zero predictor: input_scale^2, for every teacher_rank."""
    return float(cfg["input_scale"]) ** 2


def _basis(gen: torch.Generator, cfg: dict) -> Tensor | None:
    """P (d, r) with orthonormal columns, or None when teacher_rank is None or d (no structure)."""
    d, rank = cfg["input_dim"], cfg["teacher_rank"]
    if rank is None or rank == d:
        return None
    if not 1 <= rank < d:
        raise ValueError(f"teacher_rank must be between 1 and input_dim = {d}, not {rank}")
    p, _ = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=torch.float64))
    return p


def _sequences(gen: torch.Generator, n: int, basis: Tensor | None, cfg: dict) -> tuple[Tensor, Tensor]:
    """n clean sequences: inputs (n, n_ctx, d) and every token's true label (n, n_ctx)."""
    d = cfg["input_dim"]
    if basis is None:
        w = torch.randn(n, d, generator=gen, dtype=torch.float64) / d**0.5
    else:
        rank = basis.shape[1]
        w = torch.randn(n, rank, generator=gen, dtype=torch.float64) / rank**0.5 @ basis.T
    x = torch.randn(n, cfg["n_ctx"], d, generator=gen, dtype=torch.float64) * cfg["input_scale"]
    return x, torch.einsum("ntd,nd->nt", x, w)


def _tokens(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Tokens (n, n_ctx, d + 1) with the final label hidden, and that label as the target (n, 1)."""
    visible = labels.clone()
    visible[:, -1] = 0.0
    return torch.cat([x, visible[..., None]], dim=-1), labels[:, -1:]


def make_data(cfg: dict, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Train and test sequences for one resolved config, drawn from data_seed (or seed).

    cfg keys: input_dim, n_ctx, n_train, n_test, input_scale, sigma, noise_on, teacher_rank,
    data_seed, seed. The label noise is drawn after the clean data, so runs that differ only in
    sigma see the same sequences.
    """
    seed = cfg["data_seed"] if cfg["data_seed"] is not None else cfg["seed"]
    gen = torch.Generator().manual_seed(derive_seed(seed, "data"))
    basis = _basis(gen, cfg)
    x_train, labels_train = _sequences(gen, cfg["n_train"], basis, cfg)
    x_test, labels_test = _sequences(gen, cfg["n_test"], basis, cfg)
    if cfg["noise_on"] == "labels" and cfg["sigma"] > 0:
        # one draw per token: the context labels' noise and, in the last column, the target's
        labels_train = labels_train + cfg["sigma"] * torch.randn(labels_train.shape, generator=gen,
                                                                 dtype=torch.float64)
    tokens_train, y_train = _tokens(x_train, labels_train)
    tokens_test, y_test = _tokens(x_test, labels_test)
    out = {"x_train": tokens_train, "y_train": y_train, "x_test": tokens_test, "y_test": y_test}
    return {k: v.to(dtype) for k, v in out.items()}
