"""The MLP family: `depth` weight layers, `width` units per hidden layer, one activation.

Parameters, in order: the weights W_l (fan_in, fan_out) of every layer, then the biases b_l
(1, fan_out) when `bias` is on. Its symmetry metrics are phasemap.symmetry's (neurons, groups,
ranks); its fast training steps are the hand-written kernels (phasemap.kernels) and the C++
kernel (phasemap.fused), besides the generic autograd step every family has.

    params = init_params(cfg)                         # one model
    out = forward(stacked, x, **arch(cfg))            # stacked: (M, ...) each
"""

from __future__ import annotations

import torch

from phasemap import columns, kernels, symmetry
from phasemap.rng import derive_seed

Tensor = torch.Tensor

def arch(cfg: dict) -> dict:
    """What forward and measure need beside the parameters (equal for a batch)."""
    return {"n_weights": cfg["depth"], "activation": cfg["activation"], "bias": cfg["bias"]}


def init_params(cfg: dict, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """Weights W_l (fan_in, fan_out) ~ N(0, init_scale^2 / fan_in), then zero biases (with bias on).

    Drawn from the run's `seed` alone, so runs that differ only in gamma, T or sigma start
    from the same point.
    """
    gen = torch.Generator().manual_seed(derive_seed(cfg["seed"], "student"))
    sizes = [cfg["input_dim"]] + [cfg["width"]] * (cfg["depth"] - 1) + [cfg["output_dim"]]
    weights = [
        (torch.randn(a, b, generator=gen, dtype=torch.float64) * cfg["init_scale"] / a**0.5).to(dtype)
        for a, b in zip(sizes, sizes[1:])
    ]
    biases = [torch.zeros(1, b, dtype=dtype) for b in sizes[1:]] if cfg["bias"] else []
    return weights + biases


def forward(params: list[Tensor], x: Tensor, *, n_weights: int, activation: str, bias: bool) -> Tensor:
    """x (M, B, d_in) -> (M, B, d_out); params[n_weights:] are the biases (empty without)."""
    return kernels.forward(params[:n_weights], params[n_weights:], x, activation)[0]


def measure(params: list[Tensor], x_test: Tensor, th: dict[str, Tensor], *, n_weights: int,
            activation: str, bias: bool) -> dict[str, list]:
    """phasemap.symmetry's columns for M trained models (columns.METRICS; None where attention's)."""
    out = symmetry.measure(params[:n_weights], params[n_weights:], x_test, activation, th)
    return {key: out.get(key, [None] * params[0].shape[0]) for key in columns.METRICS}


def trace(params: list[Tensor], th: dict[str, Tensor], *, n_weights: int, activation: str,
          bias: bool) -> dict[str, list]:
    """The trace metrics of M models (columns.TRACE_METRICS), for a record step."""
    return symmetry.trace(params[:n_weights], params[n_weights:], activation, th)
