"""One chunk of configs in, one row per config out: tasks -> engine -> the family's metrics -> rows.

Needs only torch and numpy, so a chunk runs the same inside a Ray trial, in a notebook or on
a GPU machine without Ray. A batch that raises becomes `failed` rows carrying the error. Runs
with train.record also give trace rows, one per record step (phasemap.recording).

    rows = run_chunk(configs, device="cpu")
    rows, traces = train_chunk(configs, device="cpu")
"""

from __future__ import annotations

import socket
import time
import traceback
from itertools import groupby

import torch

from phasemap import backends, engine, models, recording
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


def _thresholds(configs: list[dict], device) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([c[k] for c in configs], device=device) for k in THRESHOLDS if k in configs[0]}


def _metric_rows(configs: list[dict], result: engine.Result, batch: engine.Batch,
                 recorder: recording.Recorder) -> list[dict]:
    metrics = models.get(batch.family).measure(result.params, batch.x_test, recorder.th, **batch.arch)
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
        change = None if diverged[i] else recording.settle_change(row, recorder.at_settle[i])
        row["settle_change"], row["settled"] = change, None if change is None else change == 0
        rows.append(row)
    return rows


def _trace_rows(configs: list[dict], recorder: recording.Recorder) -> list[dict]:
    return [{"run_id": cfg["run_id"], **step} for cfg, steps in zip(configs, recorder.rows()) for step in steps]


def failed_rows(configs: list[dict], error: str) -> list[dict]:
    """Rows for configs whose training raised: config columns, status and the error only."""
    return [{**cfg, "status": "failed", "error": error} for cfg in configs]


def run_chunk(configs: list[dict], device: str = "auto", max_models: int | None = None,
              backend: str | None = None) -> list[dict]:
    """Train and measure every config; one row per config (train_chunk without the traces)."""
    return train_chunk(configs, device, max_models, backend)[0]


def train_chunk(configs: list[dict], device: str = "auto", max_models: int | None = None,
                backend: str | None = None) -> tuple[list[dict], list[dict]]:
    """Train and measure every config: (one row per config, one trace row per record step of the
    configs with train.record). Batches group configs of one shape, max_models at a time.

    backend: force engine.fit's step (None: the fastest that applies to each batch).
    """
    device = pick_device(device)
    max_models = max_models or DEFAULT_MAX_MODELS[device]
    host = socket.gethostname()
    rows: list[dict] = []
    traces: list[dict] = []
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
            padded = part + [part[-1]] * pad
            begun = time.time()
            try:
                batch = engine.build_batch(padded, device)
                recorder = recording.Recorder(batch, _thresholds(padded, batch.x.device),
                                              recording.schedule(part[0].get("record"), batch.steps))
                result = engine.fit(batch, backend, observe=recorder)
                recorder.finish()
                new = _metric_rows(padded, result, batch, recorder)[:len(part)]
                new_traces = _trace_rows(part, recorder)
            except Exception as err:  # noqa: BLE001 - a bad batch must not stop the sweep
                detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                new, new_traces = failed_rows(part, detail), []
            for row in new:
                row.update(device=device, host=host, finished_at=time.time(), batch_seconds=time.time() - begun)
            rows.extend(new)
            traces.extend(new_traces)
    return rows, traces
