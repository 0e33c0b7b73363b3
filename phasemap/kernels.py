"""The math of one training step for M models at once: forward, hand-written backward, update.

Every function is pure (tensors in, tensors out) so the same code runs eagerly or through
torch.compile. `make_step(...)` returns the whole step as one function; with compile=True it is
compiled by inductor, which fuses the elementwise work (activation, derivative, loss, update)
into a few loops, and the activation tanh uses a rational approximation (abs error < 1e-6) that
fuses into those loops at the cost of a few multiply-adds.

Shapes: weights[l] (M, fan_in, fan_out); biases[l] (M, 1, fan_out); x (M, B, d_in);
y (M, B, d_out); sample_weight (M, B, 1); per-model hyperparameters (M,).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from phasemap.activations import ACTIVATION_FNS, DERIVATIVES

Tensor = torch.Tensor
SMALL = 4  # matmuls with an inner or outer size this small are written elementwise when compiled

# tanh(x) ~ x P(x^2) / Q(x^2) for |x| <= 9 (+-1 beyond): a rational fit made for phasemap by
# iteratively reweighted least squares on [0, 9]; max abs error 5e-7 in float32.
_TANH_P = (0.9999999847, -0.15886870591, 0.031403685892, 0.0079853570923, 0.0002299734577,
           1.4037552132e-06, 9.3110963384e-10)
_TANH_Q = (1.0, 0.1744645309, -0.043774619848, 0.024099958115, 0.001646074725,
           2.2061337818e-05, 5.3602317446e-08)


def fast_tanh(z: Tensor) -> Tensor:
    """tanh by a rational approximation: abs error < 1e-6, fuses into compiled loops."""
    z = z.clamp(-9.0, 9.0)
    z2 = z * z
    p = _TANH_P[-1]
    for c in reversed(_TANH_P[:-1]):
        p = p * z2 + c
    q = _TANH_Q[-1]
    for c in reversed(_TANH_Q[:-1]):
        q = q * z2 + c
    return z * p / q


def _matmul(a: Tensor, b: Tensor, fused: bool) -> Tensor:
    """Batched a @ b; thin products become broadcast-sums that inductor fuses with their neighbours."""
    if fused and (b.shape[-1] <= SMALL or a.shape[-2] <= SMALL):
        return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)
    return torch.bmm(a, b)


def forward(weights: list[Tensor], biases: list[Tensor], x: Tensor, activation: str, *,
            keep: bool = False, fused: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Batched MLP. x (M, B, d) -> out (M, B, k); with keep, also pre-activations and activations."""
    act = fast_tanh if fused and activation == "tanh" else ACTIVATION_FNS[activation]
    zs, hs = [], [x]
    h = x
    last = len(weights) - 1
    for l, w in enumerate(weights):
        z = _matmul(h, w, fused)
        if biases:
            z = z + biases[l]
        if l == last:
            return z, zs, hs
        h = act(z)
        if keep:
            zs.append(z)
            hs.append(h)
    raise AssertionError("unreachable")


def loss_and_grads(weights: list[Tensor], biases: list[Tensor], x: Tensor, y: Tensor,
                   sample_weight: Tensor, activation: str, *, fused: bool = False
                   ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Data loss sum_n w_n ||y_n - f(x_n)||^2 per model (M,) and its gradients, by hand."""
    out, zs, hs = forward(weights, biases, x, activation, keep=True, fused=fused)
    err = out - y                                         # (M, B, k)
    loss = (sample_weight * err * err).sum(dim=(1, 2))
    g = 2 * sample_weight * err                           # dL/d out
    deriv = DERIVATIVES[activation]
    gw: list[Tensor] = [None] * len(weights)  # type: ignore[list-item]
    gb: list[Tensor] = [None] * len(biases)   # type: ignore[list-item]
    for l in range(len(weights) - 1, -1, -1):
        gw[l] = _matmul(hs[l].transpose(1, 2), g, fused)  # (M, fan_in, fan_out)
        if biases:
            gb[l] = g.sum(dim=1, keepdim=True)
        if l > 0:
            g = _matmul(g, weights[l].transpose(1, 2), fused) * deriv(zs[l - 1], hs[l])
    return loss, gw, gb


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-model (M,) vector against a parameter (M, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def step(params: list[Tensor], m: list[Tensor], v: list[Tensor], x: Tensor, y: Tensor,
         sample_weight: Tensor, hyper: dict[str, Tensor], *, n_weights: int, activation: str,
         optimizer: str, fused: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """One optimizer step for every model; returns (data loss (M,), params, m, v), all new tensors.

    hyper: lr, gamma (M,) and for adam(w) beta1, beta2, eps, bc1 = 1 - beta1^t, bc2 = 1 - beta2^t.
    """
    loss, gw, gb = loss_and_grads(params[:n_weights], params[n_weights:], x, y, sample_weight,
                                  activation, fused=fused)
    lr, gamma = hyper["lr"], hyper["gamma"]
    new_p, new_m, new_v = [], [], []
    for i, (p, g) in enumerate(zip(params, gw + gb)):
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
    return loss, new_p, new_m, new_v


@functools.lru_cache(maxsize=None)
def make_step(n_weights: int, activation: str, optimizer: str, compile: bool) -> Callable:
    """The step function for one model family, compiled once per process when asked."""
    fn = functools.partial(step, n_weights=n_weights, activation=activation, optimizer=optimizer,
                           fused=compile)
    # Realize (store) any pointwise result of more than a few ops instead of recomputing it in
    # each consumer: tanh(z) feeds the output, the derivative and a gradient (about 20% faster).
    options = {"realize_opcount_threshold": 12}
    return torch.compile(fn, dynamic=False, options=options) if compile else fn
