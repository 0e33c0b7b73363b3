"""`phasemap submit`, `status`, `logs` and `stop`: sweeps as Ray Jobs on a cluster.

    phasemap submit sweeps/quickstart.yaml --address http://127.0.0.1:8265 --out /shared/results/qs --wait
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from phasemap.cli.common import MAX_CONFIGS_OPTION, app, check_device, console, err_console, fail
from phasemap.spec import SpecError


_ADDRESS = typer.Option(None, "--address", help="Jobs API, e.g. http://127.0.0.1:8265 (default: "
                        "RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265).")
_TOKEN_FILE = typer.Option(None, "--token-file", help="File holding the cluster's auth token (default: "
                           "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).")


def _cluster(address: Optional[str], token_file: Optional[Path]):
    from phasemap.jobs import Cluster, ClusterError

    try:
        return Cluster(address, token_file)
    except ClusterError as err:
        fail(str(err), 1)


def _cluster_call(fn, *args, **kwargs):
    from phasemap.jobs import ClusterError

    try:
        return fn(*args, **kwargs)
    except ClusterError as err:
        fail(str(err), 1)


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
    max_configs: int = MAX_CONFIGS_OPTION,
    token_file: Optional[Path] = _TOKEN_FILE,
) -> None:
    """Submit a sweep to a Ray cluster as a Ray Job; print the job id (the laptop may disconnect)."""
    check_device(device, local=False)    # the cluster's nodes, not this machine, need the GPU
    run_args = ["--device", device, "--cpus-per-trial", str(cpus_per_trial), "--gpus-per-trial", str(gpus_per_trial),
                "--max-configs", str(max_configs)]
    if chunk:
        run_args += ["--chunk", str(chunk)]
    cluster = _cluster(address, token_file)
    try:
        submitted = _cluster_call(cluster.submit, spec, set_, out, run_args=run_args, submission_id=job_id,
                                  max_configs=max_configs)
    except SpecError as err:
        fail(str(err))
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
