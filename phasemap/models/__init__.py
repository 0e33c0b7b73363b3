"""Model families, one module each, chosen by `model.family`; a new family is one module here
and one line in FAMILIES.

The registry line says which config keys are the family's own and which decide a batch's
shape (plain Python: the driver plans chunks without importing torch). Every family module has
the same small interface (shapes carry a leading model axis M):
- `arch(cfg) -> dict`: what forward and measure need beside the parameters;
- `init_params(cfg, dtype) -> list[Tensor]`: one model's parameters, drawn from its seed;
- `forward(params, x, **arch) -> Tensor`: the batched model, (M, B, ...) -> (M, B, d_out),
  differentiable by autograd (the generic backend trains any family through it);
- `measure(params, x_test, th, **arch) -> dict[str, list]`: the family's symmetry metrics, one
  list of M values per result column (None where a column does not apply).

    family = models.get(cfg["family"])
    out = family.forward(params, x, **family.arch(cfg))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    """A registry line: where the family lives, and what resolving a config and planning a sweep
    need to know of it without importing it (plain Python, no torch)."""

    module: str                     # the family's module (imported when first used, with torch)
    keys: tuple[str, ...]           # model keys only this family has (refused for the others)
    shape_keys: tuple[str, ...]     # configs with equal values share a batch
    teachers: tuple[str, ...]       # the task.teacher kinds it trains on
    defaults: dict = field(default_factory=dict)    # its keys' defaults; a string names another key + 1
    not_measured: tuple[str, ...] = ()              # metrics keys that do not apply (refused if set)


_COMMON = ("n_train", "n_test", "optimizer", "steps")
_NEURONS = ("dead_threshold", "dead_relative", "distinct_threshold", "sign_identify", "delta_relative")
FAMILIES: dict[str, Family] = {
    "mlp": Family("phasemap.models.mlp", ("depth", "width", "activation", "bias"),
                  ("input_dim", "output_dim", "depth", "width", "activation", "bias", *_COMMON),
                  teachers=("mlp", "linear", "identity")),
    "transformer": Family("phasemap.models.transformer", ("n_layers", "heads", "d_k", "residual"),
                          ("input_dim", "n_ctx", "n_layers", "heads", "d_k", "residual", *_COMMON),
                          teachers=("icl_linear",),
                          defaults={"n_layers": 2, "heads": 1, "d_k": "input_dim", "residual": True},
                          not_measured=_NEURONS),
}


def get(name: str):
    """The family module for `name`; a ValueError naming the families for anything else."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; use one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name].module)


def family_of(cfg: dict) -> str:
    """A config's family: configs without the key (every MLP sweep) are mlp."""
    return cfg.get("family", "mlp")
