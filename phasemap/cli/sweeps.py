"""`phasemap run` and `phasemap show`: train a sweep into a results folder, and say what it holds.

    phasemap run sweeps/quickstart.yaml
    phasemap run sweeps/quickstart.yaml --set train.steps=500 --out /tmp/qs
    phasemap show results/quickstart --json
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from phasemap.cli.common import MAX_CONFIGS_OPTION, app, check_device, console, err_console, fail, spec_fail
from phasemap.spec import SpecError, load_spec


class _RunsPerSecond(TextColumn):
    def __init__(self):
        super().__init__("")

    def render(self, task):
        # The overall rate: progress arrives a chunk at a time, so a windowed rate would jump.
        elapsed = task.finished_time if task.finished else task.elapsed
        return f"{task.completed / elapsed:.1f} runs/s" if elapsed and task.completed else "- runs/s"


@app.command()
def run(
    spec: Path = typer.Argument(..., help="Sweep file (YAML), or - to read it from standard input."),
    out: Optional[str] = typer.Option(None, "--out", help="Results folder or URI, e.g. s3://bucket/NAME (default: results/NAME)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.steps=500 (repeatable)."),
    chunk: Optional[int] = typer.Option(None, "--chunk", min=1, help="Configs per Ray Tune trial (default: automatic)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster instead of starting one."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", min=0.0),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", min=0.0, help="Fractions share a GPU."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the embedded Ray (default: all)."),
    max_configs: int = MAX_CONFIGS_OPTION,
    executor: str = typer.Option("auto", "--executor", help="auto (this process for a sweep of a few seconds, "
                                 "else Ray Tune), process or ray. With --address: always Ray."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and count configs; train nothing."),
) -> None:
    """Run a sweep: train every config not yet in the results folder, one Parquet row each.

    Exit codes: 0 when every config of the sweep is in the results folder; 1 when some are
    missing (failed chunks, an unwritable location); 2 for bad input; 130/143 when stopped by
    SIGINT/SIGTERM (finished chunks are kept: run the same command again to finish).
    """
    from phasemap.plan import pending
    from phasemap.store import StoreError

    check_device(device, local=not address)
    if executor not in ("auto", "process", "ray"):
        fail(f"--executor {executor}: use auto, process or ray")
    if executor == "process" and address:
        fail("--executor process trains in this process; --address needs Ray (--executor ray or auto)")
    try:
        sweep = load_spec(spec, set_)
        out_dir = out or str(Path("results") / sweep.name)
        if dry_run:
            todo = pending(sweep, out_dir, max_configs)
            console.print(f"{sweep.name}: {todo.total} configs, {todo.done} already in {out_dir}, "
                          f"{todo.count} to run")
            return
    except SpecError as err:
        spec_fail(spec, err)
    except StoreError as err:
        fail(str(err), 1)
    from phasemap.executor import ClusterConnectError, ResourceError, SweepInterrupted, run_sweep

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("runs"), _RunsPerSecond(), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=err_console, transient=False)
    state: dict = {}

    def on_start(n_todo: int, n_done: int) -> None:
        progress.start()
        state["task"] = progress.add_task(sweep.name, total=n_todo)

    def on_runs(n: int) -> None:
        progress.advance(state["task"], n)

    try:
        summary = run_sweep(sweep, out_dir, chunk=chunk, address=address, device=device,
                            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, num_cpus=num_cpus,
                            max_configs=max_configs, executor=executor, on_start=on_start, on_runs=on_runs)
    except SpecError as err:                    # raised before anything is written
        spec_fail(spec, err)
    except ResourceError as err:
        fail(str(err))
    except (StoreError, ClusterConnectError) as err:
        fail(str(err), 1)
    except SweepInterrupted as err:
        if state:
            progress.stop()
        stopped(sweep, out_dir, err.signum, max_configs)
    finally:
        if state:            # started by on_start: a run with nothing to do draws no bar
            progress.stop()
    report(sweep.name, out_dir, summary)


def stopped(sweep, out_dir: str, signum: int, max_configs: int) -> NoReturn:
    """After a run cut short by a signal: what is on disk now, and the shell's exit code for it."""
    from phasemap.plan import pending

    todo = pending(sweep, out_dir, max_configs)
    fail(f"{sweep.name}: stopped by {signal.Signals(signum).name}; {todo.done} of {todo.total} configs are "
         f"in {out_dir}, {todo.count} missing; run the same command again to finish", 128 + signum)


def report(name: str, out_dir: str, summary) -> None:
    """Print what a run wrote and what the folder holds now; exit non-zero unless the sweep is complete."""
    if summary.runs == 0 and summary.skipped == summary.total and summary.complete:
        console.print(f"{name}: all {summary.total} configs already in {out_dir}; nothing to run")
        return
    on_disk = f"{summary.total - summary.missing} of {summary.total} configs are in {out_dir}, {summary.missing} missing"
    if summary.interrupted is not None:   # what the trials reported so far undercounts: say what is on disk
        fail(f"{name}: stopped by {signal.Signals(summary.interrupted).name}; {on_disk}; "
             "run the same command again to finish", 128 + summary.interrupted)
    counts = ", ".join(f"{v} {k}" for k, v in summary.written.items()) or "none"
    rate = summary.runs / summary.seconds if summary.seconds else 0.0
    where = {"process": "in this process", "ray": "on Ray Tune",
             "process+ray": "in this process, then on Ray Tune"}.get(summary.executor, "")
    console.print(f"{name}: wrote {summary.runs} rows ({counts}) to {out_dir} in {summary.seconds:.1f} s "
                  f"({rate:.1f} runs/s{', ' + where if where else ''}); {summary.skipped} were already there")
    if summary.compacted:
        console.print(f"{summary.compacted} superseded rows (failed before, finished now) removed")
    if summary.fatal:
        fail(f"{summary.fatal} (not retried: trying again cannot fix this); {on_disk}", 1)
    if summary.failed_trials:
        reasons = "; ".join(sorted(set(summary.errors)))
        fail(f"{summary.failed_trials} chunk(s) failed after retries ({reasons}); {on_disk}; run the same "
             "command again to retry the missing configs", 1)
    if summary.missing:
        fail(f"{on_disk}; run the same command again to retry them", 1)


@app.command()
def show(
    results: str = typer.Argument(..., help="Results folder, e.g. results/quickstart or URI."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Summarize a results folder: runs, status counts, and the axes with their values."""
    from phasemap.summary import ResultsError, summarize

    try:
        info = summarize(results)
    except ResultsError as err:
        fail(str(err))
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    console.print(f"[bold]{info['path']}[/]: {info['runs']} runs in {info['files']} files "
                  f"(sweeps: {', '.join(info['sweeps'])})")
    console.print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(info["status"].items())))
    if info["set_aside"]:
        console.print(f"{len(info['set_aside'])} damaged file(s) set aside by run, their configs trained again: "
                      + ", ".join(escape(p) for p in info["set_aside"]), highlight=False)
    for axis, values in info["axes"].items():
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:12])
        more = f" … ({len(values)} values)" if len(values) > 12 else ""
        console.print(f"  {axis}: {escape(shown)}{more}", highlight=False)
    for note in info["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)
