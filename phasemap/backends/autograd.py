"""Any model family: autograd of the batched forward, phasemap.optim's updates.

The models of a batch never interact, so the gradient of the sum of their losses with respect
to the stacked parameters is each model's own gradient: one backward pass serves all M.
"""

from __future__ import annotations

import torch

from phasemap import models, optim


class Autograd:
    name = "autograd"
    fixed_shapes = False

    def supports(self, family: str, arch: dict, optimizer: str, device, dtype) -> str | None:
        return None if family in models.FAMILIES else f"unknown family {family!r}"

    def span(self, same_every_step: bool, check_every: int) -> int:
        return 1

    def stepper(self, family: str, arch: dict, optimizer: str):
        forward = models.get(family).forward

        def advance(params, state: optim.State, x, y, sample_weight, hyper, n):
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(True) for p in params]
                err = forward(leaves, x, **arch) - y
                loss = (sample_weight * err * err).sum(dim=tuple(range(1, err.dim())))
                grads = torch.autograd.grad(loss.sum(), leaves)
            params, state.m, state.v = optim.apply(params, list(grads), state.m, state.v, hyper, optimizer)
            return loss.detach(), params, state

        return advance
