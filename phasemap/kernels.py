"""The MLP's math for M models at once: forward, hand-written backward, the whole step.

Every function is pure (tensors in, tensors out) so the same code runs eagerly or through
torch.compile. `make_step(...)` returns the whole step (update rules from phasemap.optim) as
one function; with compile=True it is compiled by inductor, which fuses the elementwise work
(activation, derivative, loss, update) into a few loops. The `inductor=True` form of each
function is written for that: thin products become broadcast-sums, and tanh uses a rational
approximation (abs error < 1e-6) that fuses into those loops at the cost of a few multiply-adds.

Shapes: weights[l] (M, fan_in, fan_out); biases[l] (M, 1, fan_out); x (M, B, d_in);
y (M, B, d_out); sample_weight (M, B, 1); per-model hyperparameters (M,).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from phasemap import optim
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


def _matmul(a: Tensor, b: Tensor, inductor: bool) -> Tensor:
    """Batched a @ b; thin products become broadcast-sums that inductor fuses with their neighbours."""
    if inductor and (b.shape[-1] <= SMALL or a.shape[-2] <= SMALL):
        return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)
    return torch.bmm(a, b)


def forward(weights: list[Tensor], biases: list[Tensor], x: Tensor, activation: str, *,
            keep: bool = False, inductor: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Batched MLP. x (M, B, d) -> out (M, B, k); with keep, also pre-activations and activations."""
    act = fast_tanh if inductor and activation == "tanh" else ACTIVATION_FNS[activation]
    zs, hs = [], [x]
    h = x
    for l, w in enumerate(weights[:-1]):
        z = _matmul(h, w, inductor)
        if biases:
            z = z + biases[l]
        h = act(z)
        if keep:
            zs.append(z)
            hs.append(h)
    out = _matmul(h, weights[-1], inductor)
    return (out + biases[-1] if biases else out), zs, hs


def loss_and_grads(weights: list[Tensor], biases: list[Tensor], x: Tensor, y: Tensor,
                   sample_weight: Tensor, activation: str, *, inductor: bool = False
                   ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Data loss sum_n w_n ||y_n - f(x_n)||^2 per model (M,) and its gradients, by hand."""
    out, zs, hs = forward(weights, biases, x, activation, keep=True, inductor=inductor)
    err = out - y                                         # (M, B, k)
    loss = (sample_weight * err * err).sum(dim=(1, 2))
    g = 2 * sample_weight * err                           # dL/d out
    deriv = DERIVATIVES[activation]
    gw: list[Tensor] = [None] * len(weights)  # type: ignore[list-item]
    gb: list[Tensor] = [None] * len(biases)   # type: ignore[list-item]
    for l in range(len(weights) - 1, -1, -1):
        gw[l] = _matmul(hs[l].transpose(1, 2), g, inductor)  # (M, fan_in, fan_out)
        if biases:
            gb[l] = g.sum(dim=1, keepdim=True)
        if l > 0:
            g = _matmul(g, weights[l].transpose(1, 2), inductor) * deriv(zs[l - 1], hs[l])
    return loss, gw, gb


def step(params: list[Tensor], m: list[Tensor], v: list[Tensor], x: Tensor, y: Tensor,
         sample_weight: Tensor, hyper: dict[str, Tensor], *, n_weights: int, activation: str,
         optimizer: str, inductor: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """One optimizer step for every model; returns (data loss (M,), params, m, v), all new tensors.

    hyper: as optim.apply takes it.
    """
    loss, gw, gb = loss_and_grads(params[:n_weights], params[n_weights:], x, y, sample_weight,
                                  activation, inductor=inductor)
    new_p, new_m, new_v = optim.apply(params, gw + gb, m, v, hyper, optimizer)
    return loss, new_p, new_m, new_v


@functools.lru_cache(maxsize=None)
def make_step(n_weights: int, activation: str, optimizer: str, compile: bool) -> Callable:
    """The step function for one model family, compiled once per process when asked."""
    fn = functools.partial(step, n_weights=n_weights, activation=activation, optimizer=optimizer,
                           inductor=compile)
    # Realize (store) any pointwise result of more than a few ops instead of recomputing it in
    # each consumer: tanh(z) feeds the output, the derivative and a gradient (about 20% faster).
    options = {"realize_opcount_threshold": 12}
    return torch.compile(fn, dynamic=False, options=options) if compile else fn
