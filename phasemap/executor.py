"""Run a sweep: chunks of configs, each trained as batches and written as one Parquet file.

Two executors run the same chunk function (`train_and_write`: train, write the rows, count):
- in this process, when no `address` is given: the first chunks train here, and the sweep
  stays here while the time projected for the rest is under IN_PROCESS_SECONDS; otherwise the
  rest goes to
- Ray Tune, one trial per chunk: an embedded local Ray (dashboard off) unless `address` names a
  running cluster. Always with `address`, trial resources asked for (gpus_per_trial, a
  cpus_per_trial other than 1), executor="ray", or inside a Ray already started.
Configs whose run_id is already in the results folder are skipped, so the same command
resumes an interrupted sweep and a grown grid runs only its new points. Trials write their
own Parquet files; the driver only counts, so thousands of configs make tens of trials.

SIGINT or SIGTERM stops a run: finished chunks stay on disk and the running ones are dropped.
In this process the first signal stops at once (SweepInterrupted); on Tune it asks Tune to stop,
Ray is shut down, and the summary says which signal ended the run and how many configs are still
missing (a second signal stops at once).

    summary = run_sweep(load_spec("sweeps/quickstart.yaml"), "results/quickstart")
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import resource
import shutil
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from phasemap import store
from phasemap.grid import DEFAULT_MAX_CONFIGS, Grid
from phasemap.plan import Chunk, Pending, pending, plan_chunks
from phasemap.spec import SweepSpec

__all__ = ["ClusterConnectError", "ResourceError", "Summary", "SweepInterrupted", "init_ray", "plan_chunks",
           "ray_session", "run_configs", "run_sweep"]

EXECUTORS = ("auto", "process", "ray")
# A sweep projected to train in less than this stays in this process. Ray's fixed cost (its start,
# Tune's, the trial processes' imports and the wind-down: ~9 s here) is then at least a sixth of the
# time, and on 2 cores one process with 2 threads trains full-batch MLPs as fast as two Ray workers.
IN_PROCESS_SECONDS = 60.0
IN_PROCESS_FILE = 256        # configs per results file in this process, after the first two batches
CONNECT_TIMEOUT_S = 5.0     # a Ray head that does not answer a TCP + HTTP/2 hello in this time is not there
NODE_WAIT_S = 60.0          # on a cluster, how long to wait for a node that can hold one trial to join


class ClusterConnectError(RuntimeError):
    """`address` names no reachable Ray cluster (or one that refused us)."""


class ResourceError(ValueError):
    """A trial asks for resources that no node of the cluster has: it would wait forever."""


class SweepInterrupted(BaseException):
    """A signal that stops the run now: the first during in-process training, the second during
    Tune's wind-down. A BaseException, like KeyboardInterrupt, so that no `except Exception` (a
    batch's failed rows, a chunk's retries) swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Summary:
    """What a run did, and what the results folder holds for this sweep now (read from disk)."""

    total: int
    skipped: int
    written: dict[str, int] = field(default_factory=dict)
    failed_trials: int = 0
    errors: list[str] = field(default_factory=list)   # why trials failed after their retries
    fatal: str | None = None                          # an error no retry can fix (no space, no permission)
    interrupted: int | None = None                    # the signal that stopped the run
    missing: int = 0                                  # configs not finished in out_dir after the run
    compacted: int = 0                                # duplicate rows removed (retried failures)
    chunks: int = 0
    executor: str | None = None                       # process, ray, or process+ray (a sweep that outgrew this process)
    trial_peak_mb: float | None = None                # the largest peak RSS a Tune trial process reported
    seconds: float = 0.0
    out_dir: str = ""

    @property
    def runs(self) -> int:
        return sum(self.written.values())

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.interrupted is None and self.fatal is None and not self.failed_trials


def train_and_write(configs: list[dict], out_dir: str, sweep: str, device: str, spec_yaml: str | None = None) -> dict:
    """Train one chunk and write its file (and its traces); return the report the driver counts:
    {"runs": n, "rows_ok": k, ...}, or {"runs": 0, "fatal": why} for a write that no retry can fix
    (no space, no permission), so that the chunk is not trained again. A retryable write error raises.
    The file's metadata holds the sweep file (spec_yaml) and the versions that trained it.
    """
    from phasemap.runner import train_chunk

    rows, traces = train_chunk(configs, device)
    for row in rows:
        row["sweep"] = sweep
    try:
        store.write_rows(rows, out_dir, traces, meta={"sweep": sweep, "spec": spec_yaml, "versions": _versions()})
    except store.StoreError as err:
        if err.retryable:
            raise
        return {"runs": 0, "fatal": str(err)}
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # this process's peak so far
    return {"runs": len(rows), "peak_mb": peak_mb, **{f"rows_{k}": v for k, v in counts.items()}}


@functools.cache
def _versions() -> dict[str, str]:
    """The versions of what trains here (ray only where it is loaded: a Tune trial), looked up
    once per process."""
    import platform
    import sys
    from importlib import metadata

    names = ["phasemap", "torch", "numpy", "pyarrow"] + (["ray"] if "ray" in sys.modules else [])
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].__version__       # the build (+cpu, +cu121) as well
    return out


def _trial(config: dict, chunks: list[Chunk], grid: Grid | None, out_dir: str, sweep: str, device: str,
           threads: int, spec_yaml: str | None = None) -> None:
    """A Ray Tune trainable: resolve one chunk's configs, train_and_write them and report (a
    retryable error: Tune retries). It receives the grid and index ranges, never the sweep's configs."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    tune.report(train_and_write(chunks[config["chunk"]].resolve(grid), out_dir, sweep, device, spec_yaml))


def _quiet_tune() -> None:
    """Tune's per-trial loggers write files for nothing; its new console output is not used."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # run_sweep handles SIGINT itself (and forwards it to Tune), SIGTERM too.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # A token given through RAY_AUTH_TOKEN(_PATH) means the cluster to join uses token authentication.
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterConnectError unless something at HOST:PORT answers like a Ray head (gRPC, HTTP/2).

    ray.init retries an absent or foreign address for minutes; this answers in seconds.
    "auto" (the cluster this node belongs to) is left to Ray.
    """
    target = address.split("://", 1)[-1]
    if address == "auto" or ":" not in target:
        return
    host, _, port_text = target.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ClusterConnectError(f"--address {address}: expected HOST:PORT, e.g. 127.0.0.1:6379") from None
    why = None
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as conn:
            if not address.startswith("ray://"):   # Ray Client speaks gRPC too, but lazily
                conn.settimeout(timeout)
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                frame = conn.recv(9)
                if len(frame) < 9 or frame[3] != 0x04:   # a server's first frame is SETTINGS
                    why = "something answers there, but not a Ray head (no gRPC)"
    except socket.timeout:
        why = f"no answer within {timeout:g} s"
    except OSError as err:
        why = err.strerror or str(err)
    if why:
        raise ClusterConnectError(_connect_message(address, why))


def _connect_message(address: str, why: str) -> str:
    return (f"cannot connect to the Ray cluster at {address} ({why}): is it running, and is this machine "
            "allowed to reach it? A cluster with token authentication (RAY_AUTH_MODE=token) also needs "
            "its token here: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start an embedded Ray (or join `address`); return True if this call started it."""
    _quiet_tune()
    import ray

    if ray.is_initialized():
        return False
    common = dict(logging_level="ERROR", log_to_driver=False, configure_logging=True)
    if address:
        probe(address)
        try:
            ray.init(address=address, **common)
        except ConnectionError as err:
            raise ClusterConnectError(_connect_message(address, str(err).splitlines()[0])) from err
    else:
        # "local": always a new embedded instance, even where another Ray left its address behind.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
                 **common)
    return True


def check_resources(cpus_per_trial: float, gpus_per_trial: float, wait: float) -> int:
    """Refuse a trial size that no alive node can hold (after waiting `wait` s for nodes to join);
    return how many trials fit at once. cpus_per_trial > 0 (run_sweep checks it before Ray starts)."""
    import ray

    deadline = time.monotonic() + wait
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        slots = sum(int(min(r.get("CPU", 0) // cpus_per_trial,
                            r.get("GPU", 0) // gpus_per_trial if gpus_per_trial else float("inf")))
                    for r in nodes)
        if slots or time.monotonic() >= deadline:
            break
        time.sleep(2)
    if slots:
        return slots
    cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    gpus = sum(r.get("GPU", 0) for r in nodes)
    if gpus_per_trial and not gpus:
        raise ResourceError(f"--gpus-per-trial {gpus_per_trial:g}: this Ray cluster has no GPU "
                            "(give --gpus-per-trial 0 to train on CPUs)")
    biggest_gpu = max((r.get("GPU", 0) for r in nodes), default=0)
    if gpus_per_trial > biggest_gpu:
        raise ResourceError(f"--gpus-per-trial {gpus_per_trial:g}: no node has that many GPUs "
                            f"(the largest has {biggest_gpu:g}); use a fraction, e.g. 0.25, to share one")
    raise ResourceError(f"--cpus-per-trial {cpus_per_trial:g}: no node has that many CPUs "
                        f"(the largest has {cpus:g})" + (" next to the GPUs asked for" if gpus_per_trial else ""))


# Set inside ray_session: a Ray that run_configs starts is kept for the session's later calls.
_SESSION: dict = {}


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Keep one Ray for several run_configs calls: started by the first call that needs it (or
    already running), and shut down at the end if it was not running at the start. Calls that
    run in this process start none."""
    outer, was_running = dict(_SESSION), _ray_running()
    _SESSION.clear()
    _SESSION.update(active=True)
    try:
        yield
    finally:
        _SESSION.clear()
        _SESSION.update(outer)
        if not was_running and _ray_running() and not outer.get("active"):
            import ray

            ray.shutdown()


def _ray_running() -> bool:
    """A Ray already up in this process (without importing ray, which takes a second)."""
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


# Tune pickles its run config to disk; what the driver's hooks need (a live progress bar, the
# fatal error) stays in this table and the stopper carries only its key.
_WATCHED: dict[int, dict] = {}


def _watch_result(key: int, trial_id: str, result: dict) -> None:
    state = _WATCHED.get(key)
    # Tune may consult a stopper more than once for one result: count each result once.
    if state is None or (trial_id, result.get("training_iteration")) in state["seen"]:
        return
    state["seen"].add((trial_id, result.get("training_iteration")))
    if state["on_runs"] and result.get("runs"):
        state["on_runs"](int(result["runs"]))
    if result.get("fatal") and state["fatal"] is None:
        state["fatal"] = result["fatal"]
    if result.get("peak_mb"):
        state["trial_peak_mb"] = max(state.get("trial_peak_mb", 0.0), float(result["peak_mb"]))


def _watch_stop_all(key: int) -> bool:
    state = _WATCHED.get(key, {})
    return bool(state.get("fatal") or state.get("signal"))


def _stopper(key: int):
    """A Tune stopper that forwards row counts to the driver and ends the sweep on a fatal error
    or a signal. (Its methods reach the state through module functions, which pickle by name.)"""
    from ray.tune.stopper import Stopper

    class Watch(Stopper):
        def __call__(self, trial_id, result) -> bool:
            _watch_result(key, trial_id, result)
            return False

        def stop_all(self) -> bool:
            return _watch_stop_all(key)

    return Watch()


@contextmanager
def _signals(state: dict) -> Iterator[Callable[[], None]]:
    """Route SIGINT and SIGTERM to a graceful stop (the first) or an immediate one (the second).

    Yields `arm`, which installs the handlers again: ray.init replaces the SIGTERM handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None   # only the main thread may install handlers (a notebook's worker thread)
        return

    def handle(signum, frame):
        if state.get("signal"):
            raise SweepInterrupted(state["signal"])
        state["signal"] = signum
        if not state.get("tuning"):       # before Tune runs there is nothing to wind down
            raise SweepInterrupted(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1)   # Tune's own "stop the experiment" handler
        if callable(tune_stop):
            tune_stop(signum, frame)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def arm() -> None:
        for s in previous:
            signal.signal(s, handle)

    arm()
    try:
        yield arm
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _tune_logs_quiet() -> Iterator[None]:
    """Tune logs every failed attempt with its traceback; the summary reports each error once."""
    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, chunk: int | None = None, address: str | None = None,
              device: str = "auto", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
              num_cpus: int | None = None, max_failures: int = 2, max_configs: int = DEFAULT_MAX_CONFIGS,
              executor: str = "auto", on_start: Callable[[int, int], None] | None = None,
              on_runs: Callable[[int], None] | None = None) -> Summary:
    """Run every config of `spec` not yet in `out_dir`; return what was written and what is missing.

    executor: auto (this process for a small sweep, else Ray Tune; see the module docstring),
    process (always here) or ray (always Ray Tune). on_start(total_to_run, already_done) and
    on_runs(n) let a caller drive a progress bar. Raises SweepInterrupted when a signal cuts an
    in-process run, or a second signal a Tune run, short (Ray is shut down first).
    """
    if cpus_per_trial <= 0:
        raise ResourceError(f"--cpus-per-trial {cpus_per_trial:g}: a trial needs a positive share of a CPU")
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if executor == "process" and address:
        raise ResourceError("--executor process trains in this process; --address needs Ray (--executor ray or auto)")
    todo = pending(spec, str(out_dir), max_configs, set_aside=True)
    return run_configs(spec.name, todo, chunk=chunk, address=address, device=device, cpus_per_trial=cpus_per_trial,
                       gpus_per_trial=gpus_per_trial, num_cpus=num_cpus, max_failures=max_failures,
                       executor=executor, on_start=on_start, on_runs=on_runs)


def run_configs(name: str, todo: Pending, *, chunk: int | None = None, address: str | None = None,
                device: str = "auto", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                num_cpus: int | None = None, max_failures: int = 2, executor: str = "auto",
                on_start: Callable[[int, int], None] | None = None,
                on_runs: Callable[[int], None] | None = None) -> Summary:
    """Train the configs of `todo` (not yet in todo.out_dir) for the sweep `name`, as
    run_sweep does; inside `ray_session` a Ray it started is kept, so several calls share one."""
    started = time.perf_counter()
    out_dir = todo.out_dir
    summary = Summary(total=todo.total, skipped=todo.done, out_dir=out_dir)
    if not todo.count:
        summary.compacted = store.compact(out_dir)
        return summary
    store.check_writable(out_dir)     # before Ray starts: a clear error and nothing trained
    state: dict = {"on_runs": on_runs, "fatal": None, "signal": None, "tuning": False, "seen": set()}
    key = id(state)
    _WATCHED[key] = state
    tmp = tempfile.mkdtemp(prefix="phasemap-tune-")
    own_ray = False
    with _signals(state) as arm:
        try:
            rest = todo
            # Trial resources asked for (--gpus-per-trial, --cpus-per-trial) are Ray's to grant or refuse.
            local = not address and not _ray_running() and gpus_per_trial == 0 and cpus_per_trial == 1
            if executor == "process" or (executor == "auto" and local):
                summary.executor = "process"
                if on_start:
                    on_start(todo.count, summary.skipped)
                rest = _in_process(name, todo, summary, state, device=device, max_failures=max_failures,
                                   budget=None if executor == "process" else IN_PROCESS_SECONDS)
            if rest.count and not state["fatal"]:
                summary.executor = "ray" if summary.executor is None else "process+ray"
                own_ray = init_ray(address, num_cpus)
                arm()
                slots = check_resources(cpus_per_trial, gpus_per_trial, NODE_WAIT_S if address else 0)
                if on_start and summary.executor == "ray":     # once Ray answers: a refused address draws no bar
                    on_start(todo.count, summary.skipped)
                _tune(name, rest, summary, state, key, tmp, chunk=chunk, slots=slots, device=device,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_failures=max_failures)
        finally:
            _WATCHED.pop(key, None)
            shutil.rmtree(tmp, ignore_errors=True)
            if own_ray and not _SESSION.get("active"):     # inside ray_session, it shuts Ray down
                import ray

                ray.shutdown()
    summary.fatal, summary.interrupted = state["fatal"], state["signal"]
    summary.trial_peak_mb = state.get("trial_peak_mb")
    summary.compacted, finished = store.settle(out_dir)   # one read of the index for both
    summary.missing = todo.missing(finished)
    summary.seconds = time.perf_counter() - started
    return summary


def _in_process(name: str, todo: Pending, summary: Summary, state: dict, *, device: str, max_failures: int,
                budget: float | None) -> Pending:
    """Train chunks here through train_and_write; return what is left for Ray: nothing, unless
    `budget` is given and the time projected for the rest (from the seconds per model-step of the
    chunks so far but the first, from the fourth chunk on) exceeds it. A write error is retried
    max_failures times."""
    from phasemap.runner import DEFAULT_MAX_MODELS, pick_device

    batch = DEFAULT_MAX_MODELS[pick_device(device)]
    rest = todo
    seconds = steps = 0.0         # spent on the chunks after the first (which pays one-time loads)
    for i in itertools.count():
        if not rest.count:
            break
        # After two chunks of one batch a file holds several (a Parquet write costs ~50 ms whatever
        # its size: 64 files of ref-mlp took 3 s); the decision waits for one of those, so that it
        # rests on seconds of training, not on one noisy batch.
        configs = rest.first(batch if i < 2 else IN_PROCESS_FILE).resolve(todo.grid)
        projected = seconds / steps * configs[0]["steps"] * rest.count if i >= 3 else 0.0
        if budget is not None and projected > budget:
            return rest
        began = time.perf_counter()
        for attempt in range(max_failures + 1):
            try:
                report = train_and_write(configs, todo.out_dir, name, device, todo.spec_yaml)
                break
            except Exception as err:  # noqa: BLE001 - as a Tune trial: retried, then counted with its reason
                if attempt == max_failures:
                    summary.failed_trials += 1
                    summary.errors.append(_first_line(err))
                    report = {}
        summary.chunks += 1
        if i:
            seconds, steps = seconds + time.perf_counter() - began, steps + sum(c["steps"] for c in configs)
        rest = rest.skip(len(configs))
        _count(summary, report)
        if report.get("runs") and state["on_runs"]:
            state["on_runs"](int(report["runs"]))
        if report.get("fatal"):
            state["fatal"] = report["fatal"]
            break
    return rest.skip(rest.count)


def _count(summary: Summary, metrics: dict) -> None:
    for name, value in metrics.items():
        if name.startswith("rows_") and isinstance(value, int):
            summary.written[name[5:]] = summary.written.get(name[5:], 0) + value


def _tune(name: str, todo: Pending, summary: Summary, state: dict, key: int, tmp: str,
          *, chunk, slots, device, cpus_per_trial, gpus_per_trial, max_failures) -> None:
    """Train `todo` as one Tune experiment, one trial per chunk; fill the summary's counts."""
    from ray import tune

    chunks = todo.chunks(chunk, slots)
    summary.chunks += len(chunks)
    trainable = tune.with_parameters(
        _trial, chunks=chunks, grid=todo.grid, out_dir=todo.out_dir, sweep=name, spec_yaml=todo.spec_yaml,
        device=device, threads=max(1, int(cpus_per_trial)))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={"chunk": tune.grid_search(list(range(len(chunks))))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=tmp, verbose=0, stop=_stopper(key),
            failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    state["tuning"] = True
    try:
        with _tune_logs_quiet():
            grid = tuner.fit()
    finally:
        state["tuning"] = False
    for result in grid:
        if result.error is not None:   # still failing after max_failures retries
            summary.failed_trials += 1
            summary.errors.append(_first_line(result.error))
            continue
        _count(summary, result.metrics or {})


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
