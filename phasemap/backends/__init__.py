"""Backends: how a batch of M models advances by training steps. One module each:

- `kernel`: the MLP's hand-written step (phasemap.kernels), `eager` or `compiled` by inductor;
- `cpp`: the C++ kernel for two-layer MLPs under SGD on the CPU (phasemap.fused), `fused`;
- `autograd`: any family, by autograd of its batched forward, with phasemap.optim's updates.

Each backend says whether it can train a batch (`supports` returns None, or the reason it
cannot), whether it wants blocks of one fixed size (`fixed_shapes`: a compiled step is compiled
per shape, so the runner pads a short last block), how many steps one call may advance, and
gives the function that advances them. `choose` picks the fastest that supports a batch.

    backend = choose("mlp", arch, "sgd", "cpu", torch.float32, work)     # or get("autograd")
    advance = backend.stepper("mlp", arch, "sgd")
    loss, params, state = advance(params, state, x, y, sample_weight, hyper, n)
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from phasemap import optim

Tensor = torch.Tensor
# advance(params, state, x, y, sample_weight, hyper, n) -> (data loss (M,) of the last step, params, state)
Advance = Callable[[list[Tensor], optim.State, Tensor, Tensor, Tensor, dict, int],
                   tuple[Tensor, list[Tensor], optim.State]]
COMPILE_WORK = 2e9  # model x step x sample x unit products above which an MLP batch is compiled


class Backend(Protocol):
    name: str
    fixed_shapes: bool

    def supports(self, family: str, arch: dict, optimizer: str, device: torch.device | str,
                 dtype: torch.dtype) -> str | None: ...

    def span(self, same_every_step: bool, check_every: int) -> int: ...

    def stepper(self, family: str, arch: dict, optimizer: str) -> Advance: ...


def _registry() -> dict[str, Backend]:
    from phasemap.backends import autograd, cpp, kernel

    return {"fused": cpp.Fused(), "compiled": kernel.HandWritten(compile=True),
            "eager": kernel.HandWritten(compile=False), "autograd": autograd.Autograd()}


NAMES = ("fused", "compiled", "eager", "autograd")


def get(name: str) -> Backend:
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; use one of {', '.join(NAMES)}")
    return _registry()[name]


def check(backend: Backend, family: str, arch: dict, optimizer: str, device, dtype) -> None:
    """Raise a ValueError with the reason when `backend` cannot train such a batch."""
    reason = backend.supports(family, arch, optimizer, device, dtype)
    if reason is not None:
        raise ValueError(f"backend {backend.name} cannot train this batch: {reason}")


def data_loss(family: str, arch: dict, params: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """(M,) data loss (1/N) sum_n ||y_n - f(x_n)||^2 of M models on one data set each: the C++
    forward where the fused kernel covers the network, else the family's forward (the losses of
    the runs table and of the traces both come from here)."""
    # The kernel's forward does not depend on the optimizer: ask about it as for SGD.
    if _registry()["fused"].supports(family, arch, "sgd", x.device, x.dtype) is None:
        from phasemap import fused

        return fused.data_loss(x, y, params[0], params[1], arch["activation"])
    from phasemap import models

    out = models.get(family).forward(params, x, **arch)
    return ((out - y) ** 2).flatten(2).sum(dim=2).mean(dim=1)


def choose(family: str, arch: dict, optimizer: str, device, dtype, work: float) -> Backend:
    """The fused C++ kernel where it applies; for other MLPs the hand-written step, compiled
    when the batch's work dwarfs inductor's compile time (seconds, cached on disk); else autograd."""
    registry = _registry()
    order = ("fused", "compiled" if work >= COMPILE_WORK else "eager", "autograd")
    for name in order:
        if registry[name].supports(family, arch, optimizer, device, dtype) is None:
            return registry[name]
    raise ValueError(f"no backend can train family {family!r}")     # autograd takes every family
