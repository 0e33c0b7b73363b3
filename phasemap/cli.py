"""The `phasemap` command line: each command is a thin wrapper over a library function.

    phasemap run sweeps/quickstart.yaml
    phasemap run sweeps/quickstart.yaml --set train.steps=500 --out /tmp/qs
    phasemap show results/quickstart --json
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from phasemap.grid import DEFAULT_MAX_CONFIGS
from phasemap.spec import SpecError, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Phase diagrams of parameter-symmetry breaking and restoration.")
DEVICES = ("auto", "cpu", "cuda")


def _console(stderr: bool) -> Console:
    """Rich output on a terminal; piped into a file or a program, plain full-length lines (no
    wrapping, no ellipses, no colour)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True, no_color=True, highlight=False)


err_console = _console(stderr=True)
console = _console(stderr=False)
_STATE = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an error.")) -> None:
    _STATE["debug"] = debug


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _spec_fail(spec: Path, err: SpecError) -> NoReturn:
    """A sweep-file error, led by the file's name (grid errors are found after loading)."""
    text = str(err)
    _fail(text if text.startswith(str(spec)) else f"{spec}: {text}")


def _check_device(device: str, choices: tuple[str, ...] = DEVICES, local: bool = True) -> None:
    """Refuse an unknown device, and cuda where torch sees no GPU (only if the run is local)."""
    if device not in choices:
        _fail(f"--device: {device!r} is not one of {', '.join(choices)}")
    if device == "cuda" and local:
        import torch
        if not torch.cuda.is_available():
            _fail("--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU); "
                  "see the README's GPU note")


class _RunsPerSecond(TextColumn):
    def __init__(self):
        super().__init__("")

    def render(self, task):
        # The overall rate: progress arrives a chunk at a time, so a windowed rate would jump.
        elapsed = task.finished_time if task.finished else task.elapsed
        return f"{task.completed / elapsed:.1f} runs/s" if elapsed and task.completed else "- runs/s"


_MAX_CONFIGS = typer.Option(DEFAULT_MAX_CONFIGS, "--max-configs", min=1,
                            help="Refuse a sweep with more configs than this (a guard against typos in the grid).")


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
    max_configs: int = _MAX_CONFIGS,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and count configs; train nothing."),
) -> None:
    """Run a sweep: train every config not yet in the results folder, one Parquet row each.

    Exit codes: 0 when every config of the sweep is in the results folder; 1 when some are
    missing (failed chunks, an unwritable location); 2 for bad input; 130/143 when stopped by
    SIGINT/SIGTERM (finished chunks are kept: run the same command again to finish).
    """
    from phasemap.plan import pending
    from phasemap.store import StoreError

    _check_device(device, local=not address)
    try:
        sweep = load_spec(spec, set_)
        out_dir = out or str(Path("results") / sweep.name)
        if dry_run:
            todo = pending(sweep, out_dir, max_configs)
            console.print(f"{sweep.name}: {todo.total} configs, {todo.done} already in {out_dir}, "
                          f"{len(todo.configs)} to run")
            return
    except SpecError as err:
        _spec_fail(spec, err)
    except StoreError as err:
        _fail(str(err), 1)
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
                            max_configs=max_configs, on_start=on_start, on_runs=on_runs)
    except SpecError as err:                    # raised before anything is written
        _spec_fail(spec, err)
    except ResourceError as err:
        _fail(str(err))
    except (StoreError, ClusterConnectError) as err:
        _fail(str(err), 1)
    except SweepInterrupted as err:
        progress.stop()
        _stopped(sweep, out_dir, err.signum, max_configs)
    finally:
        progress.stop()
    _report(sweep.name, out_dir, summary)


def _stopped(sweep, out_dir: str, signum: int, max_configs: int) -> NoReturn:
    """After a run cut short by a signal: what is on disk now, and the shell's exit code for it."""
    from phasemap.plan import pending

    todo = pending(sweep, out_dir, max_configs)
    _fail(f"{sweep.name}: stopped by {signal.Signals(signum).name}; {todo.done} of {todo.total} configs are "
          f"in {out_dir}, {len(todo.configs)} missing; run the same command again to finish", 128 + signum)


def _report(name: str, out_dir: str, summary) -> None:
    """Print what a run wrote and what the folder holds now; exit non-zero unless the sweep is complete."""
    if summary.runs == 0 and summary.skipped == summary.total and summary.complete:
        console.print(f"{name}: all {summary.total} configs already in {out_dir}; nothing to run")
        return
    on_disk = f"{summary.total - summary.missing} of {summary.total} configs are in {out_dir}, {summary.missing} missing"
    if summary.interrupted is not None:   # what the trials reported so far undercounts: say what is on disk
        _fail(f"{name}: stopped by {signal.Signals(summary.interrupted).name}; {on_disk}; "
              "run the same command again to finish", 128 + summary.interrupted)
    counts = ", ".join(f"{v} {k}" for k, v in summary.written.items()) or "none"
    rate = summary.runs / summary.seconds if summary.seconds else 0.0
    console.print(f"{name}: wrote {summary.runs} rows ({counts}) to {out_dir} in {summary.seconds:.1f} s "
                  f"({rate:.1f} runs/s); {summary.skipped} were already there")
    if summary.compacted:
        console.print(f"{summary.compacted} superseded rows (failed before, finished now) removed")
    if summary.fatal:
        _fail(f"{summary.fatal} (not retried: trying again cannot fix this); {on_disk}", 1)
    if summary.failed_trials:
        reasons = "; ".join(sorted(set(summary.errors)))
        _fail(f"{summary.failed_trials} chunk(s) failed after retries ({reasons}); {on_disk}; run the same "
              "command again to retry the missing configs", 1)
    if summary.missing:
        _fail(f"{on_disk}; run the same command again to retry them", 1)


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
        _fail(str(err))
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    console.print(f"[bold]{info['path']}[/]: {info['runs']} runs in {info['files']} files "
                  f"(sweeps: {', '.join(info['sweeps'])})")
    console.print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(info["status"].items())))
    for axis, values in info["axes"].items():
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:12])
        more = f" … ({len(values)} values)" if len(values) > 12 else ""
        console.print(f"  {axis}: {escape(shown)}{more}", highlight=False)


def _analysis_call(fn, *args, **kwargs):
    from phasemap.analysis import AnalysisError
    from phasemap.summary import ResultsError

    try:
        return fn(*args, **kwargs)
    except (AnalysisError, ResultsError) as err:
        _fail(str(err))


@app.command()
def critical(
    results: str = typer.Argument(..., help="Results folder or URI."),
    metric: str = typer.Option(..., "--metric", help="e.g. weight_rank, n_distinct, n_dead."),
    axis: str = typer.Option(..., "--axis", help="e.g. gamma, temperature, sigma."),
    by: Optional[str] = typer.Option(None, "--by", help="Comma-separated group columns (default: the other axes)."),
    min_seed_share: float = typer.Option(0.5, "--min-seed-share", min=0.0, max=1.0,
                                         help="Grid values where fewer seeds finished ok locate no boundary."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """Critical points: where the metric changes level along an axis; CIs cover the grid step and the seeds."""
    from phasemap.analysis import critical as find

    table = _analysis_call(find, results, metric, axis, by=by.split(",") if by else None,
                           min_seed_share=min_seed_share)
    if as_json:
        sys.stdout.write(json.dumps(table.to_dicts(), indent=2) + "\n")
        return
    if table.height == 0:
        console.print(f"{metric} does not change level along {axis}")
        return
    from rich.table import Table

    view = Table(*table.columns)
    for row in table.iter_rows():
        view.add_row(*(f"{v:.4g}" if isinstance(v, float) else "—" if v is None else escape(str(v)) for v in row))
    console.print(view)


@app.command()
def scaling(
    results: str = typer.Argument(..., help="Results folder or URI."),
    metric: Optional[str] = typer.Option(None, "--metric",
                                         help="Default: weight_rank for linear students, else n_distinct."),
    axis: str = typer.Option("gamma", "--axis"),
    method: str = typer.Option("transitions", "--method", help="transitions or quantile."),
    quantile: float = typer.Option(0.9, "--quantile", min=0.0, max=1.0),
    min_seed_share: float = typer.Option(0.5, "--min-seed-share", min=0.0, max=1.0,
                                         help="Grid values where fewer seeds finished ok are not used."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit the bound metric <= C * axis^(-beta); count violations; test saturation in width."""
    from phasemap.analysis import scaling as fit

    out = _analysis_call(fit, results, metric, axis, method=method, quantile=quantile, min_seed_share=min_seed_share)
    metric = out["metric"]
    if as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    console.print(f"{metric} <= C {axis}^(-beta): beta = {out['beta']:.3f} "
                  f"[{out['beta_ci'][0]:.3f}, {out['beta_ci'][1]:.3f}], C = {out['C']:.3g} "
                  f"[{out['C_ci'][0]:.3g}, {out['C_ci'][1]:.3g}] ({out['method']}, {len(out['points'])} points); "
                  f"{out['violations']} of {out['n_runs']} runs above the bound", highlight=False)
    if out["n_excluded"]:
        console.print(f"{out['n_excluded']} diverged or failed runs not used", highlight=False)
    if out["unresolved"]:
        console.print(escape("not fitted (unresolved: several levels in one grid step, or too few seeds ok; a "
                             "denser grid or more seeds resolve them): " + "; ".join(
                                 f"{r['from']}->{r['to']} in [{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
                                 for r in out["unresolved"])), highlight=False)
    sat = out["width_saturation"]
    if sat:
        console.print(f"width {sat['widths'][0]} -> {sat['widths'][1]}: max relative growth "
                      f"{sat['max_relative_growth']:.2f}: {'saturated' if sat['saturated'] else 'still growing'}")


@app.command()
def plot(
    results: str = typer.Argument(..., help="Results folder or URI."),
    kind: str = typer.Option("phase", "--kind", help="phase, scaling, width or loss."),
    x: Optional[str] = typer.Option(None, "--x", help="Horizontal axis (default: gamma)."),
    y: Optional[str] = typer.Option(None, "--y", help="Vertical axis (phase), or the series (loss)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="What the figure measures (default: weight_rank "
                                         "for linear students, else n_distinct); phase also takes symmetry_class."),
    color: Optional[str] = typer.Option(None, "--color", help="Alias of --metric for the phase diagram's color."),
    facet: Optional[str] = typer.Option(None, "--facet", help="A third axis: one panel per value (phase)."),
    out: Path = typer.Option(..., "-o", "--out", help="Figure file: .png, .svg or .pdf."),
) -> None:
    """Draw a phase diagram, a scaling plot, a width-saturation plot or loss curves."""
    from phasemap.plots import plot as draw

    path = _analysis_call(draw, results, kind, out, x=x, y=y, color=color, facet=facet, metric=metric)
    console.print(f"wrote {path}")


@app.command()
def validate(
    quick: bool = typer.Option(False, "--quick", help="Fewer seeds and temperatures (a few minutes)."),
    out: Path = typer.Option(Path("results/validation"), "--out", help="Where the validation sweeps write."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
) -> None:
    """Run sweeps/validation/*.yaml and compare measured boundaries and exponents with exact theory."""
    from rich.table import Table

    from phasemap.executor import SweepInterrupted, run_sweep
    from phasemap.validation import validate as run_checks

    def run_complete(sweep, results) -> None:
        """Run one validation sweep; stop (with run's exit code) unless all of its configs are there."""
        try:
            summary = run_sweep(sweep, results)
        except SweepInterrupted as err:
            _stopped(sweep, str(results), err.signum, DEFAULT_MAX_CONFIGS)
        _report(sweep.name, str(results), summary)

    rows = _analysis_call(run_checks, out, quick, run=run_complete)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        table = Table("sweep", "quantity", "predicted", "measured", "95% CI", "tolerance", "")
        for r in rows:
            measured = "—" if r["measured"] is None else f"{r['measured']:.4g}"
            ci = "—" if not r.get("ci") else f"[{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
            verdict = "[green]ok[/]" if r["ok"] else "[bold red]MISS[/]"
            if r.get("in_ci") is False:
                verdict += " (exact value outside the CI)"
            table.add_row(r["sweep"], escape(r["quantity"]), f"{r['predicted']:.4g}", measured, ci, r["tolerance"],
                          verdict)
        console.print(table)
    misses = sum(not r["ok"] for r in rows)
    if misses:
        err_console.print(f"{misses} of {len(rows)} checks missed")
        raise typer.Exit(1)


@app.command()
def bench(
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    configs: Optional[int] = typer.Option(None, "--configs", min=1, help="Train only N of ref-mlp's 2048 configs."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="CPU worker processes (default: one per core)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Force the step: fused, compiled or eager (default: the fastest that applies)."),
    baseline: int = typer.Option(8, "--baseline", min=0, help="Configs for the naive baseline (0: skip it)."),
    analysis: bool = typer.Option(False, "--analysis", help="Time the analysis on synthetic rows instead."),
    rows: int = typer.Option(1_000_000, "--rows", min=10_000, help="Synthetic rows for --analysis."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Benchmark the engine on sweeps/bench/ref-mlp.yaml against one-config-per-trial Ray Tune."""
    from phasemap.bench import analysis_bench, baseline_bench, engine_bench, load_configs

    if analysis:
        out = analysis_bench(rows)
        if as_json:
            sys.stdout.write(json.dumps(out, indent=2) + "\n")
        else:
            console.print(f"{out['rows']} synthetic runs: critical {out['critical_seconds']:.2f} s "
                          f"({out['critical_rows']} critical points), scaling {out['scaling_seconds']:.2f} s")
        return

    _check_device(device, ("cpu", "cuda"))
    from phasemap.engine import BACKENDS

    if backend is not None and backend not in BACKENDS:
        _fail(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "fused" and device != "cpu":
        _fail("--backend fused runs on the CPU only")
    result = {"engine": engine_bench(load_configs(n=configs), device, workers, backend)}
    if baseline:
        try:
            result["baseline"] = baseline_bench(load_configs(n=baseline))
            result["speedup"] = result["engine"]["runs_per_s"] / result["baseline"]["runs_per_s"]
        except ImportError:
            err_console.print("ray is not installed here: baseline skipped")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    e = result["engine"]
    console.print(f"engine ({e['device']}, {e['backend']} step, {e['workers']} worker(s)): {e['runs']} runs in {e['seconds']:.1f} s "
                  f"= [bold]{e['runs_per_s']:.1f} runs/s[/], {e['gflops']:.1f} GFLOP/s = "
                  f"{100 * e['peak_fraction']:.0f}% of the {e['peak_gflops']:.0f} GFLOP/s batched-matmul peak "
                  f"(warm-up {e['warmup_seconds']:.1f} s)")
    if "baseline" in result:
        b = result["baseline"]
        console.print(f"baseline (one config per Ray Tune trial, plain autograd): {b['runs']} runs in "
                      f"{b['seconds']:.1f} s = {b['runs_per_s']:.2f} runs/s; engine/baseline = "
                      f"[bold]{result['speedup']:.0f}x[/]")


_ADDRESS = typer.Option(None, "--address", help="Jobs API, e.g. http://127.0.0.1:8265 (default: "
                        "RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265).")
_TOKEN_FILE = typer.Option(None, "--token-file", help="File holding the cluster's auth token (default: "
                           "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).")


def _cluster(address: Optional[str], token_file: Optional[Path]):
    from phasemap.jobs import Cluster, ClusterError

    try:
        return Cluster(address, token_file)
    except ClusterError as err:
        _fail(str(err), 1)


def _cluster_call(fn, *args, **kwargs):
    from phasemap.jobs import ClusterError

    try:
        return fn(*args, **kwargs)
    except ClusterError as err:
        _fail(str(err), 1)


def _exit_for(state: str) -> None:
    console.print(f"job status: {state}")
    if state != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="Sweep file (YAML)."),
    out: str = typer.Option(..., "--out", help="Where the cluster writes: an absolute path every node mounts, or a URI (s3://...)."),
    address: Optional[str] = _ADDRESS,
    set_: list[str] = typer.Option([], "--set", help="Override a key (repeatable)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job's logs and exit with its status."),
    chunk: Optional[int] = typer.Option(None, "--chunk", min=1, help="Configs per Ray Tune trial."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (on the cluster's nodes)."),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", min=0.0),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", min=0.0, help="Fractions share a GPU, e.g. 0.125."),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="Submission id (default: phasemap-NAME-TIME-XXXX)."),
    max_configs: int = _MAX_CONFIGS,
    token_file: Optional[Path] = _TOKEN_FILE,
) -> None:
    """Submit a sweep to a Ray cluster as a Ray Job; print the job id (the laptop may disconnect)."""
    _check_device(device, local=False)    # the cluster's nodes, not this machine, need the GPU
    run_args = ["--device", device, "--cpus-per-trial", str(cpus_per_trial), "--gpus-per-trial", str(gpus_per_trial),
                "--max-configs", str(max_configs)]
    if chunk:
        run_args += ["--chunk", str(chunk)]
    cluster = _cluster(address, token_file)
    try:
        submitted = _cluster_call(cluster.submit, spec, set_, out, run_args=run_args, submission_id=job_id,
                                  max_configs=max_configs)
    except SpecError as err:
        _fail(str(err))
    sys.stdout.write(submitted + "\n")
    sys.stdout.flush()
    if wait:
        _exit_for(_cluster_call(cluster.follow, submitted, lambda text: err_console.out(text, end="", highlight=False)))


@app.command()
def status(job: str = typer.Argument(..., help="Job id printed by submit."),
           address: Optional[str] = _ADDRESS, token_file: Optional[Path] = _TOKEN_FILE) -> None:
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and where it writes."""
    cluster = _cluster(address, token_file)
    info = _cluster_call(cluster.info, job)
    meta = info.metadata or {}
    console.print(f"{job}: {info.status.value}" + (f"  sweep {meta['phasemap_sweep']}" if "phasemap_sweep" in meta else "")
                  + (f"  out {meta['phasemap_out']}" if "phasemap_out" in meta else ""), highlight=False)
    if info.message and info.status.value in ("FAILED", "STOPPED"):
        console.print(escape(info.message), highlight=False)


@app.command()
def logs(job: str = typer.Argument(..., help="Job id printed by submit."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends."),
         address: Optional[str] = _ADDRESS, token_file: Optional[Path] = _TOKEN_FILE) -> None:
    """Print a job's driver logs."""
    cluster = _cluster(address, token_file)
    if follow:
        _exit_for(_cluster_call(cluster.follow, job, lambda text: sys.stdout.write(text)))
        return
    sys.stdout.write(_cluster_call(cluster.logs, job))


@app.command()
def stop(job: str = typer.Argument(..., help="Job id printed by submit."),
         address: Optional[str] = _ADDRESS, token_file: Optional[Path] = _TOKEN_FILE) -> None:
    """Stop a running job. Rows already written stay; submitting again runs only what is missing."""
    cluster = _cluster(address, token_file)
    stopped = _cluster_call(cluster.stop, job)
    console.print(f"{job}: " + ("stop requested" if stopped else "had already ended"))


def _user_error_code(err: Exception) -> int | None:
    """2 for bad input, 1 for a location or cluster that failed us, None for a bug."""
    from phasemap.analysis import AnalysisError
    from phasemap.executor import ClusterConnectError, ResourceError
    from phasemap.jobs import ClusterError
    from phasemap.store import StoreError
    from phasemap.summary import ResultsError

    if isinstance(err, (SpecError, AnalysisError, ResultsError, ResourceError)):
        return 2
    if isinstance(err, (StoreError, ClusterError, ClusterConnectError, OSError)):
        return 1
    return None


_show_other_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """phasemap's own warnings (a damaged file skipped, ...) as one line on stderr."""
    if category.__module__.startswith("phasemap"):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _show_other_warning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> None:
    """The console script: every error a user can cause is one line and an exit code, never a
    traceback (`phasemap --debug ...` shows it)."""
    warnings.showwarning = _show_warning
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[bold red]error:[/] interrupted", highlight=False)
        code = 130
    except Exception as err:                  # noqa: BLE001 - the last line of defence
        if hasattr(err, "show") and hasattr(err, "exit_code"):   # usage: click's (or typer's own click's)
            err.show()
            code = err.exit_code
        elif _STATE["debug"]:
            raise
        else:
            code = _user_error_code(err)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if code is None:
                code = 1
                reason = (f"internal error: {type(err).__name__}: {reason} (a bug in phasemap: please report "
                          "it; `phasemap --debug ...` shows the traceback)")
            err_console.print(f"[bold red]error:[/] {escape(reason)}", highlight=False, soft_wrap=True)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
