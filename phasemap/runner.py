"""One chunk of configs in, one row per config out: tasks -> engine -> the family's metrics -> rows.

Needs only torch and numpy, so a chunk runs the same inside a Ray trial, in a notebook or on
a GPU machine without Ray. A batch that raises becomes `failed` rows carrying the error.

    rows = run_chunk(configs, device="cpu")
"""

from __future__ import annotations

import socket
import time
import traceback
from itertools import groupby

import torch

from phasemap import backends, engine, models
from phasemap.columns import THRESHOLDS
from phasemap.shapes import shape_order

# Models per batch: on the CPU a block of 32 keeps a step's activations in cache; a GPU wants
# thousands to fill its cores.
DEFAULT_MAX_MODELS = {"cpu": 32, "cuda": 4096}


def pick_device(device: str = "auto") -> str:
    """'auto' is cuda when torch sees a GPU, else cpu; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device (is this a CPU build of torch?)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def _metric_rows(configs: list[dict], result: engine.Result, batch: engine.Batch) -> list[dict]:
    th = {k: torch.tensor([c[k] for c in configs], device=batch.x.device) for k in THRESHOLDS if k in configs[0]}
    metrics = models.get(batch.family).measure(result.params, batch.x_test, th, **batch.arch)
    diverged = result.diverged.tolist()
    div_step = result.diverged_step.tolist()
    train_loss, test_loss = result.train_loss.tolist(), result.test_loss.tolist()
    share = result.seconds / len(configs)
    rows = []
    for i, cfg in enumerate(configs):
        row = {**cfg, "status": "diverged" if diverged[i] else "ok", "error": None,
               "train_loss": None if diverged[i] else train_loss[i],
               "test_loss": None if diverged[i] else test_loss[i],
               "diverged_step": div_step[i] if diverged[i] else None,
               "train_seconds": share, "batch_models": len(configs), "backend": result.backend}
        for key, values in metrics.items():
            row[key] = None if diverged[i] else values[i]
        rows.append(row)
    return rows


def failed_rows(configs: list[dict], error: str) -> list[dict]:
    """Rows for configs whose training raised: config columns, status and the error only."""
    return [{**cfg, "status": "failed", "error": error} for cfg in configs]


def run_chunk(configs: list[dict], device: str = "auto", max_models: int | None = None,
              backend: str | None = None) -> list[dict]:
    """Train and measure every config; batches group configs of one shape, max_models at a time.

    backend: force engine.fit's step (None: the fastest that applies to each batch).
    """
    device = pick_device(device)
    max_models = max_models or DEFAULT_MAX_MODELS[device]
    host = socket.gethostname()
    rows: list[dict] = []
    for _, group in groupby(sorted(configs, key=shape_order), key=shape_order):
        group = list(group)
        chosen = backends.get(backend) if backend else engine.backend_for(group[0], min(len(group), max_models),
                                                                            device)
        for start in range(0, len(group), max_models):
            part = group[start:start + max_models]
            # Pad a short last block with copies so every block has one shape: a compiled
            # step is then compiled once, not once more for the remainder (other backends
            # compile nothing per shape, so they train no copies).
            pad = max_models - len(part) if len(group) > max_models and chosen.fixed_shapes else 0
            begun = time.time()
            try:
                batch = engine.build_batch(part + [part[-1]] * pad, device)
                result = engine.fit(batch, backend)
                new = _metric_rows(part + [part[-1]] * pad, result, batch)[:len(part)]
            except Exception as err:  # noqa: BLE001 - a bad batch must not stop the sweep
                detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                new = failed_rows(part, detail)
            for row in new:
                row.update(device=device, host=host, finished_at=time.time(), batch_seconds=time.time() - begun)
            rows.extend(new)
    return rows
