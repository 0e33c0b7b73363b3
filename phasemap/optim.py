"""Optimizer updates for M models at once: SGD, Adam and AdamW with per-model hyperparameters.

One place for the update rules and Adam's state, shared by every backend that computes
gradients (the hand-written MLP step, autograd for any family). Pure functions, so a compiled
step can include the update:

    state = init_state(params, "adam")
    hyper = step_hyper(hyper, beta1, beta2, state.t + 1)          # Adam's bias corrections
    params, state.m, state.v = apply(params, grads, state.m, state.v, hyper, "adam")

Loss convention: the gradient passed in is that of the data term; SGD and Adam add the
penalty gamma |theta|^2 (gradient 2 gamma theta), AdamW decays theta by lr gamma instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class State:
    """Adam's first and second moments (empty for SGD), one tensor per parameter."""

    m: list[Tensor] = field(default_factory=list)
    v: list[Tensor] = field(default_factory=list)


def init_state(params: list[Tensor], optimizer: str) -> State:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if optimizer == "sgd":
        return State()
    return State([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params])


def step_hyper(hyper: dict[str, Tensor], beta1: Tensor, beta2: Tensor, t: int) -> dict[str, Tensor]:
    """hyper with Adam's bias corrections bc1 = 1 - beta1^t, bc2 = 1 - beta2^t for step t (from 1)."""
    return {**hyper, "bc1": 1 - beta1 ** t, "bc2": 1 - beta2 ** t}


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-model (M,) vector against a parameter (M, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def apply(params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
          hyper: dict[str, Tensor], optimizer: str) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """One update of every model; returns new (params, m, v).

    hyper: lr, gamma (M,) and for adam(w) beta1, beta2, eps, bc1, bc2 (see step_hyper).
    """
    lr, gamma = hyper["lr"], hyper["gamma"]
    new_p, new_m, new_v = [], [], []
    for i, (p, g) in enumerate(zip(params, grads)):
        if optimizer == "sgd":                             # p <- p - lr (g + 2 gamma p)
            new_p.append(p * (1 - 2 * _col(lr * gamma, p)) - _col(lr, p) * g)
            continue
        if optimizer == "adamw":                           # decoupled: p <- p (1 - lr gamma)
            p = p * (1 - _col(lr * gamma, p))
        else:                                              # adam: the penalty's gradient 2 gamma p
            g = g + 2 * _col(gamma, p) * p
        b1, b2 = _col(hyper["beta1"], p), _col(hyper["beta2"], p)
        mi = b1 * m[i] + (1 - b1) * g
        vi = b2 * v[i] + (1 - b2) * g * g
        m_hat, v_hat = mi / _col(hyper["bc1"], p), vi / _col(hyper["bc2"], p)
        new_p.append(p - _col(lr, p) * m_hat / (v_hat.sqrt() + _col(hyper["eps"], p)))
        new_m.append(mi)
        new_v.append(vi)
    return new_p, new_m, new_v
