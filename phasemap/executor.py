"""Run a sweep on Ray Tune: one trial per chunk of configs, each chunk trained as batches.

An embedded local Ray is started (dashboard off) unless `address` names a running cluster.
Configs whose run_id is already in the results folder are skipped, so the same command
resumes an interrupted sweep and a grown grid runs only its new points. Trials write their
own Parquet files; the driver only counts, so thousands of configs make tens of trials.

    summary = run_sweep(load_spec("sweeps/quickstart.yaml"), "results/quickstart")
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Per-trial CSV/JSON/TensorBoard loggers would write files per trial for nothing.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# A token given through RAY_AUTH_TOKEN(_PATH) means the cluster to join uses token
# authentication; Ray reads the mode once, when it is imported.
if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
    os.environ.setdefault("RAY_AUTH_MODE", "token")

import ray  # noqa: E402 (after the environment it reads)
from ray import tune  # noqa: E402

from phasemap import store  # noqa: E402
from phasemap.grid import expand  # noqa: E402
from phasemap.shapes import shape_order  # noqa: E402
from phasemap.spec import SweepSpec  # noqa: E402

TRIALS_PER_SLOT = 4      # enough trials to balance load and show progress, few enough to stay cheap
MAX_CHUNK = 1024


class ClusterConnectError(RuntimeError):
    """`address` names no reachable Ray cluster (or one that refused us)."""


@dataclass
class Summary:
    """What a run did: configs in the sweep, skipped as done, and rows written by status."""

    total: int
    skipped: int
    written: dict[str, int] = field(default_factory=dict)
    failed_trials: int = 0
    errors: list[str] = field(default_factory=list)   # why trials failed after their retries
    compacted: int = 0                                # duplicate rows removed (retried failures)
    chunks: int = 0
    seconds: float = 0.0
    out_dir: str = ""

    @property
    def runs(self) -> int:
        return sum(self.written.values())


def plan_chunks(configs: list[dict], chunk: int | None, slots: int) -> list[list[dict]]:
    """Split configs into chunks of equal shape where possible (sorted by shape, then grid order)."""
    if not configs:
        return []
    size = chunk or min(MAX_CHUNK, max(1, math.ceil(len(configs) / (slots * TRIALS_PER_SLOT))))
    ordered = sorted(configs, key=shape_order)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _trial(config: dict, chunks: list[list[dict]], out_dir: str, sweep: str, device: str, threads: int) -> None:
    """A Ray Tune trainable: train one chunk, write its file, report the row count."""
    import torch

    from phasemap.runner import run_chunk

    torch.set_num_threads(threads)
    rows = run_chunk(chunks[config["chunk"]], device)
    for row in rows:
        row["sweep"] = sweep
    store.write_rows(rows, out_dir)   # a StoreError fails the trial; Tune retries it
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    tune.report({"runs": len(rows), **{f"rows_{k}": v for k, v in counts.items()}})


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start an embedded Ray (or join `address`); return True if this call started it."""
    if ray.is_initialized():
        return False
    common = dict(logging_level="ERROR", log_to_driver=False, configure_logging=True)
    if address:
        try:
            ray.init(address=address, **common)
        except ConnectionError as err:
            raise ClusterConnectError(
                f"cannot connect to the Ray cluster at {address}: is it running, and is this machine "
                "allowed to reach it? A cluster with token authentication (RAY_AUTH_MODE=token) also needs "
                "its token here: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH") from err
    else:
        # "local": always a new embedded instance, even where another Ray left its address behind.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
                 **common)
    return True


# Tune pickles its run config (callbacks included) to disk; the listener, which may hold a
# live progress bar, stays in this table and the callback carries only its key.
_LISTENERS: dict[int, Callable[[int], None]] = {}


class _Progress(tune.Callback):
    """Forwards each finished chunk's row count to a listener in the driver."""

    def __init__(self, on_runs: Callable[[int], None]):
        self.key = id(on_runs)
        _LISTENERS[self.key] = on_runs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        listener = _LISTENERS.get(self.key)
        if listener is not None:
            listener(int(result.get("runs", 0)))


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, chunk: int | None = None, address: str | None = None,
              device: str = "auto", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
              num_cpus: int | None = None, max_failures: int = 2,
              on_start: Callable[[int, int], None] | None = None,
              on_runs: Callable[[int], None] | None = None) -> Summary:
    """Run every config of `spec` not yet in `out_dir`; return what was written.

    on_start(total_to_run, already_done) and on_runs(n) let a caller drive a progress bar.
    """
    started = time.perf_counter()
    configs = expand(spec)
    out_dir = store.normalize(out_dir)
    done = store.run_ids(out_dir)
    todo = [c for c in configs if c["run_id"] not in done]
    summary = Summary(total=len(configs), skipped=len(configs) - len(todo), out_dir=out_dir)
    if not todo:
        summary.compacted = store.compact(out_dir)
        return summary
    store.check_writable(out_dir)     # before Ray starts: a clear error and nothing trained
    own_ray = _init_ray(address, num_cpus)
    tmp = tempfile.mkdtemp(prefix="phasemap-tune-")
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_trial))
        chunks = plan_chunks(todo, chunk, slots)
        summary.chunks = len(chunks)
        if on_start:
            on_start(len(todo), summary.skipped)
        trainable = tune.with_parameters(
            _trial, chunks=chunks, out_dir=out_dir, sweep=spec.name,
            device=device, threads=max(1, int(cpus_per_trial)))
        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"chunk": tune.grid_search(list(range(len(chunks))))},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=tmp, verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[_Progress(on_runs)] if on_runs else None),
        )
        grid = tuner.fit()
        for result in grid:
            if result.error is not None:   # still failing after max_failures retries
                summary.failed_trials += 1
                summary.errors.append(_first_line(result.error))
                continue
            for key, value in result.metrics.items():
                if key.startswith("rows_") and isinstance(value, int):
                    summary.written[key[5:]] = summary.written.get(key[5:], 0) + value
    finally:
        _LISTENERS.pop(id(on_runs), None)
        shutil.rmtree(tmp, ignore_errors=True)
        if own_ray:
            ray.shutdown()
    summary.compacted = store.compact(out_dir)
    summary.seconds = time.perf_counter() - started
    return summary


def _first_line(error: BaseException) -> str:
    """The root cause of a trial's error, one line (Ray wraps it in its own exceptions)."""
    cause = error
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    text = str(cause).strip().splitlines()
    for line in reversed(text):        # Ray's messages end with the original exception
        if line.strip():
            return line.strip()
    return type(cause).__name__
