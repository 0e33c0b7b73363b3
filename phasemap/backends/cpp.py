"""The C++ kernel (phasemap.fused): SGD for two-layer MLPs without biases, on the CPU."""

from __future__ import annotations

from phasemap import fused, optim


class Fused:
    """Runs up to a divergence check in one call when every step sees the same data."""

    name = "fused"
    fixed_shapes = False            # compiles nothing per shape: a short last block is not padded

    def supports(self, family: str, arch: dict, optimizer: str, device, dtype) -> str | None:
        if family != "mlp":
            return f"the C++ kernel is the MLP's, not the {family}'s"
        reason = fused.supports(arch["n_weights"], arch["bias"], optimizer, arch["activation"], dtype, device)
        if reason is None and not fused.available():
            return "the C++ kernel could not be built on this machine"
        return reason

    def span(self, same_every_step: bool, check_every: int) -> int:
        return check_every if same_every_step else 1

    def stepper(self, family: str, arch: dict, optimizer: str):
        flat: dict = {}       # the kernel's (M, k) sample weights, made once: they are the same every step

        def advance(params, state: optim.State, x, y, sample_weight, hyper, n):
            if flat.get("from") is not sample_weight:
                flat.update({"from": sample_weight, "weights": sample_weight[..., 0].contiguous()})
            loss = fused.sgd_steps(x, y, flat["weights"], params[0], params[1], hyper["lr"], hyper["gamma"], n,
                                   arch["activation"])
            return loss, params, state

        return advance
