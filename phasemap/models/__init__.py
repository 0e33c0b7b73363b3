"""Model families, one module each, chosen by `model.family`; a new family is one module here
and one line in FAMILIES.

The registry line declares the family's own sweep-file keys with their types and defaults (the
`model` section of a sweep file is validated against them), which keys decide a batch's shape,
the tasks it trains on and the metrics that do not apply; plain Python (types are named, from
phasemap.fields), so the driver validates and plans without torch, and the engine runs without
pydantic. Every family module has
the same small interface (shapes carry a leading model axis M):
- `arch(cfg) -> dict`: what forward and measure need beside the parameters;
- `init_params(cfg, dtype) -> list[Tensor]`: one model's parameters, drawn from its seed;
- `forward(params, x, **arch) -> Tensor`: the batched model, (M, B, ...) -> (M, B, d_out),
  differentiable by autograd (the generic backend trains any family through it);
- `measure(params, x_test, th, **arch) -> dict[str, list]`: the family's symmetry metrics, one
  list of M values per result column (None where a column does not apply);
- `trace(params, th, **arch) -> dict[str, list]`: the cheaper subset a training trace records at
  each record step (columns.TRACE_METRICS).

    family = models.get(cfg["family"])
    out = family.forward(params, x, **family.arch(cfg))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    """A registry line: where the family lives, and what resolving a config and planning a sweep
    need to know of it without importing it (plain Python, no torch)."""

    module: str                     # the family's module (imported when first used, with torch)
    fields: dict[str, tuple[str, Any]]   # its own model keys: (type in phasemap.fields, default;
                                         # a None default makes the key optional)
    shape_keys: tuple[str, ...]     # configs with equal values share a batch
    teachers: tuple[str, ...]       # the task.teacher kinds it trains on
    derived: dict[str, str] = field(default_factory=dict)   # a key left None: another key's value + 1
    not_measured: tuple[str, ...] = ()              # metrics keys that do not apply (refused if set)

    @property
    def keys(self) -> tuple[str, ...]:
        """The model keys only this family has."""
        return tuple(self.fields)


_COMMON = ("n_train", "n_test", "optimizer", "steps")
_NEURONS = ("dead_threshold", "dead_relative", "distinct_threshold", "sign_identify", "delta_relative")
FAMILIES: dict[str, Family] = {
    "mlp": Family("phasemap.models.mlp",
                  {"depth": ("Depth", 2), "width": ("Dim", 64), "activation": ("Activation", "tanh"),
                   "bias": ("Bool", False)},
                  ("input_dim", "output_dim", "depth", "width", "activation", "bias", *_COMMON),
                  teachers=("mlp", "linear", "identity")),
    # d_k defaults to the token dimension, input_dim + 1
    "transformer": Family("phasemap.models.transformer",
                          {"n_layers": ("Depth", 2), "heads": ("Dim", 1), "d_k": ("Dim", None),
                           "residual": ("Bool", True)},
                          ("input_dim", "n_ctx", "n_layers", "heads", "d_k", "residual", *_COMMON),
                          teachers=("icl_linear",), derived={"d_k": "input_dim"}, not_measured=_NEURONS),
}


def get(name: str):
    """The family module for `name`; a ValueError naming the families for anything else."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; use one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name].module)


def family_of(cfg: dict) -> str:
    """A config's family: configs without the key (every MLP sweep) are mlp."""
    return cfg.get("family", "mlp")
