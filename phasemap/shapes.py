"""Which configs can share a batch: those whose tensors have the same shapes and step function.

Plain Python (no torch), so the driver can plan chunks without loading the engine:

    groups = itertools.groupby(sorted(configs, key=shape_order), key=shape_order)
"""

from __future__ import annotations

from phasemap.models import FAMILIES, family_of

TEACHER_KEYS = ("teacher", "teacher_rank", "teacher_depth", "teacher_activation")


def shape_key(cfg: dict) -> tuple:
    """Configs with equal keys are trained by the engine as one batch (with fresh data the engine
    runs the teacher at every step, so its shape joins the key; a batch records at one schedule)."""
    family = family_of(cfg)
    key = (family, *(cfg[k] for k in FAMILIES[family].shape_keys))
    if cfg.get("record"):
        key += (cfg["record"],)
    return key + tuple(cfg[k] for k in TEACHER_KEYS) if cfg.get("fresh_data") else key


def shape_order(cfg: dict) -> str:
    """A sort key that keeps configs of one shape together (values of mixed types compare as text)."""
    return repr(shape_key(cfg))
