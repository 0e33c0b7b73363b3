"""`phasemap refine`: locate phase boundaries adaptively, starting from a sweep file's grid.

    phasemap refine sweeps/validation/linear-rank.yaml --metric weight_rank --axis gamma --precision 0.01
    phasemap refine sweeps/validation/scalar-noise.yaml --metric weight_rank --axis gamma --axis temperature
    phasemap critical results/linear-rank --metric weight_rank --axis gamma
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from phasemap.cli.common import app, check_device, console, fail, spec_fail
from phasemap.spec import SpecError, load_spec


@app.command()
def refine(
    spec: Path = typer.Argument(..., help="Sweep file (YAML): its grid is the coarse start and the refined axis's range."),
    metric: str = typer.Option(..., "--metric", help="The count whose level changes are the boundaries, e.g. weight_rank."),
    axis: list[str] = typer.Option(..., "--axis", help="The axis to refine (a float key of the grid, e.g. gamma); "
                                   "a second --axis (e.g. temperature) follows the boundary line through the plane."),
    precision: float = typer.Option(0.01, "--precision", help="Relative width at which a bracket is done "
                                    "(x_hi / x_lo - 1 on a log axis)."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Most runs for the study, coarse grid included "
                                         "(default: 4 x the coarse grid)."),
    per_round: Optional[int] = typer.Option(None, "--per-round", help="Most points per round (default: every "
                                            "proposal of the boundary sampler; one per group for Optuna's)."),
    sampler: str = typer.Option("boundary", "--sampler", help="boundary (phasemap's), or Optuna's qmc, tpe, gp, random."),
    storage: Optional[str] = typer.Option(None, "--storage", help="SQLAlchemy URL of the Optuna storage "
                                          "(default: sqlite in the results folder)."),
    out: Optional[str] = typer.Option(None, "--out", help="Results folder (default: results/NAME)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the sweep file (repeatable)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster instead of starting one."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the embedded Ray (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Refine the boundaries of a metric along an axis: rounds of new points inside every level change
    until each is bracketed to the precision or the budget is spent (Optuna holds the search)."""
    from phasemap.refine import refine as run_refine

    check_device(device, local=not address)
    try:
        sweep = load_spec(spec, set_)
    except SpecError as err:
        spec_fail(spec, err)
    results = out or str(Path("results") / sweep.name)

    def progress(round_: int, points: int, runs: int) -> None:
        if not as_json:
            console.print(f"round {round_}: {points} points, {runs} runs", highlight=False)

    from phasemap.executor import ClusterConnectError, SweepInterrupted
    from phasemap.store import StoreError

    try:
        result = run_refine(sweep, metric, axis, results, precision=precision, budget=budget, per_round=per_round,
                            sampler=sampler, storage=storage, address=address, device=device, num_cpus=num_cpus,
                            on_round=progress)
    except SpecError as err:
        fail(str(err))
    except (StoreError, ClusterConnectError) as err:
        fail(f"{err}; the study keeps every point told so far", 1)
    except SweepInterrupted as err:
        fail(f"refine stopped by {signal.Signals(err.signum).name}; the study keeps every point told so far and "
             "the round in flight is trained again: run the same command to resume", 128 + err.signum)
    if as_json:
        sys.stdout.write(json.dumps(result.__dict__, indent=2, default=str) + "\n")
        raise typer.Exit(0 if result.stopped == "done" else 1)
    open_brackets = [b for b in result.brackets if not b["done"]]
    console.print(f"{result.study}: {result.points} points, {result.runs} runs of a budget of {result.budget} "
                  f"({result.coarse_runs} in the coarse grid), {result.rounds} rounds, {result.seconds:.0f} s; "
                  + ("every boundary bracketed within the precision" if result.stopped == "done" else
                     f"budget spent with {len(open_brackets)} of {len(result.brackets)} brackets wider than "
                     f"{precision:g}" if result.stopped == "budget" else
                     f"{len(open_brackets)} of {len(result.brackets)} brackets are wider than {precision:g} and "
                     "nothing is left to sample in them: the seeds disagree across the bracket (a boundary wider "
                     "than the precision); more seeds narrow it"), highlight=False)
    for b in result.brackets:
        group = ", ".join(f"{k}={v}" for k, v in b.items() if k not in ("lo", "hi", "from", "to", "width", "done",
                                                                         "estimate"))
        estimate = f"; order-parameter estimate {b['estimate']:.5g}" if b.get("estimate") is not None else ""
        console.print(f"  {group + ': ' if group else ''}{b['from']} -> {b['to']} in [{b['lo']:.5g}, {b['hi']:.5g}] "
                      f"(width {b['width']:.2%}{'' if b['done'] else ', open'}){estimate}", highlight=False)
    outside = [b for b in result.brackets if b.get("estimate") is not None and not b["lo"] <= b["estimate"] <= b["hi"]]
    if outside:
        console.print(f"[yellow]warning:[/] {len(outside)} boundary(ies) change level outside the bracket where their "
                      "order parameter reaches 0: finite training moves the observed boundary there (critical "
                      "slowing down); the estimate is the converged one, or train longer (--set train.steps=...)",
                      highlight=False)
    console.print(f"next: phasemap critical {results} --metric {metric} --axis {axis[0]}", highlight=False)
    if result.stopped != "done":
        raise typer.Exit(1)
