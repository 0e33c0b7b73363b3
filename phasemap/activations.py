"""Activation functions with their derivatives, for the engine's hand-written backward pass."""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor

ACTIVATION_FNS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "swish": torch.nn.functional.silu,
    "sin": torch.sin,
    "quadratic": torch.square,
    "linear": lambda z: z,
}

# f'(z), given the pre-activation z and the activation a = f(z) (reused where cheaper).
DERIVATIVES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "tanh": lambda z, a: 1 - a * a,
    "relu": lambda z, a: (z > 0).to(z.dtype),
    "swish": lambda z, a: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z))),
    "sin": lambda z, a: torch.cos(z),
    "quadratic": lambda z, a: 2 * z,
    "linear": lambda z, a: torch.ones_like(z),
}

# Odd activations: a neuron (w_in, w_out) and its negation (-w_in, -w_out) compute the same function.
ODD = frozenset({"tanh", "sin", "linear"})
