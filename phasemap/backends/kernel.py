"""The MLP's hand-written step (phasemap.kernels): eager, or compiled by inductor."""

from __future__ import annotations

from phasemap import kernels, optim


class HandWritten:
    """Forward, backward and update written out for the MLP: no autograd graph per step."""

    def __init__(self, compile: bool):
        self.compile = compile
        self.name = "compiled" if compile else "eager"
        self.fixed_shapes = compile        # inductor compiles once per shape

    def supports(self, family: str, arch: dict, optimizer: str, device, dtype) -> str | None:
        return None if family == "mlp" else f"the hand-written step is the MLP's, not the {family}'s"

    def span(self, same_every_step: bool, check_every: int) -> int:
        return 1

    def stepper(self, family: str, arch: dict, optimizer: str):
        step = kernels.make_step(arch["n_weights"], arch["activation"], optimizer, self.compile)

        def advance(params, state: optim.State, x, y, sample_weight, hyper, n):
            loss, params, state.m, state.v = step(params, state.m, state.v, x, y, sample_weight, hyper)
            return loss, params, state

        return advance
