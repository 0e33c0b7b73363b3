"""Which configs can share a batch: those whose tensors have the same shapes and step function.

Plain Python (no torch), so the driver can plan chunks without loading the engine:

    groups = itertools.groupby(sorted(configs, key=shape_order), key=shape_order)
"""

from __future__ import annotations

import math

from phasemap.models import FAMILIES, family_of

TEACHER_KEYS = ("teacher", "teacher_rank", "teacher_depth", "teacher_activation")


def batch_class(cfg: dict) -> str:
    """Full batch, or the power of two a minibatch size rounds up to. A batch of models steps at its
    largest minibatch (the others masked), and only an all-full-batch one skips sampling: mixing
    the quickstart's batch sizes 20 and 200 in one batch trained 2.6x slower than apart. Within
    a class the padding wastes at most half; results do not depend on the company a model keeps."""
    size = cfg.get("batch_size")
    if size is None or size >= cfg["n_train"]:
        return "full"
    return f"2^{math.ceil(math.log2(size))}"


def shape_key(cfg: dict) -> tuple:
    """Configs with equal keys are trained by the engine as one batch (with fresh data the engine
    runs the teacher at every step, so its shape joins the key; a batch records at one schedule)."""
    family = family_of(cfg)
    key = (family, *(cfg[k] for k in FAMILIES[family].shape_keys))
    if cfg.get("record"):
        key += (cfg["record"],)
    return key + tuple(cfg[k] for k in TEACHER_KEYS) if cfg.get("fresh_data") else key


def shape_order(cfg: dict) -> str:
    """A sort key that keeps configs of one shape and one batch_class together, the batches the
    runner trains (values of mixed types compare as text). The engine could batch configs of one
    shape_key whatever their minibatches; it is faster not to."""
    return repr((*shape_key(cfg), batch_class(cfg)))


def work(cfg: dict, n_models: int = 1) -> float:
    """Models x steps x samples x width x depth: the size of an MLP batch's training (0 for a family
    without width and depth: unknown)."""
    return float(n_models * cfg["steps"] * cfg["n_train"] * cfg.get("width", 0) * cfg.get("depth", 0))
