"""`phasemap critical`, `trend`, `scaling`, `plot` and `validate`: questions asked of a results folder.

    phasemap critical results/linear-rank --metric weight_rank --axis gamma
    phasemap trend results/noise --metric n_dos --axis sigma
    phasemap scaling results/power-law
    phasemap plot results/quickstart --kind phase -o phase.png
    phasemap dynamics results/fig2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from phasemap.cli.common import analysis_call, app, console, err_console
from phasemap.cli.sweeps import report, stopped
from phasemap.grid import DEFAULT_MAX_CONFIGS


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

    table = analysis_call(find, results, metric, axis, by=by.split(",") if by else None,
                          min_seed_share=min_seed_share)
    if as_json:
        sys.stdout.write(json.dumps(table.to_dicts(), indent=2) + "\n")
        return
    if table.height == 0:
        console.print(f"{metric} does not change level along {axis}")
        return
    _print_table(table)


def _columns(by: list[str] | None) -> list[str] | None:
    """--by given as "a,b", as --by a --by b, or not at all (None: the default groups)."""
    return [c for part in by for c in part.split(",") if c] if by else None


def _print_table(table) -> None:
    """A polars frame as a table: 4 significant digits, a dash for null."""
    from rich.table import Table

    view = Table(*table.columns)
    for row in table.iter_rows():
        view.add_row(*(f"{v:.4g}" if isinstance(v, float) else "—" if v is None else escape(str(v)) for v in row))
    console.print(view)


@app.command()
def trend(
    results: str = typer.Argument(..., help="Results folder or URI."),
    metric: Optional[str] = typer.Option(None, "--metric", help="e.g. n_dos, rep_rank, n_distinct (default: "
                                         "weight_rank for linear students, else n_distinct)."),
    axis: str = typer.Option(..., "--axis", help="e.g. sigma, width, gamma."),
    by: Optional[list[str]] = typer.Option(None, "--by", help="Group columns, comma-separated or repeated "
                                           "(default: the other axes; --by '' pools them)."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    tolerance: float = typer.Option(0.1, "--tolerance", min=0.0,
                                    help="Relative distance from the widest mean that counts as saturated (width)."),
    min_seed_share: float = typer.Option(0.5, "--min-seed-share", min=0.0, max=1.0,
                                         help="Axis values where fewer seeds finished ok are not used."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """Trend of a metric along an axis: slope (per decade on a log axis), Spearman rho, seed-bootstrap CIs."""
    from phasemap.analysis import trend as fit

    table = analysis_call(fit, results, metric, axis, by=_columns(by), n_boot=n_boot, seed=seed,
                          min_seed_share=min_seed_share, tolerance=tolerance)
    if as_json:
        sys.stdout.write(json.dumps(table.to_dicts(), indent=2) + "\n")
        return
    _print_table(table)


def parse_where(where: list[str] | None) -> dict[str, object]:
    """--where KEY=VALUE options as {key: value}, the value read as a number where it is one."""
    out: dict[str, object] = {}
    for item in where or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. gamma=0.01", param_hint="--where")
        try:
            value: object = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = text
        out[key.strip()] = value
    return out


@app.command()
def dynamics(
    results: str = typer.Argument(..., help="Results folder or URI."),
    run: Optional[str] = typer.Option(None, "--run", help="One run: its run_id (or a prefix)."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="KEY=VALUE, repeatable: only matching runs."),
    window: float = typer.Option(0.1, "--window", min=0.0, help="Decades within which a break and a drop "
                                 "coincide (never less than the record spacing there)."),
    min_rate: float = typer.Option(1.0, "--min-rate", min=0.0, help="Least log-log rate of fall "
                                   "(-d ln L / d ln t) of a loss drop."),
    min_fall: float = typer.Option(2.0, "--min-fall", min=1.0, help="Least factor by which the loss falls "
                                   "over a drop."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per run."),
) -> None:
    """Symmetry-breaking times, loss drops and how often they coincide, for runs with train.record."""
    from phasemap.analysis import DYNAMICS_SCHEMA
    from phasemap.analysis import dynamics as find

    table = analysis_call(find, results, run=run, where=parse_where(where), window=window, min_rate=min_rate,
                          min_fall=min_fall)
    if as_json:
        for row in table.to_dicts():
            sys.stdout.write(json.dumps(row) + "\n")
        return
    first = ["run", *[c for c in table.columns if c not in DYNAMICS_SCHEMA and c != "status"], "status"]
    view = table.with_columns(pl_short_id(), _steps_text("breaks"), _steps_text("drops"))
    _print_table(view.select(*first, *[c for c in DYNAMICS_SCHEMA if c != "run_id"]))
    n_breaks, n_drops = int(table["n_breaks"].sum()), int(table["n_drops"].sum())
    hit = sum((r["coincident"] or 0) * r["n_breaks"] for r in table.iter_rows(named=True))
    explained = sum((r["explained"] or 0) * r["n_drops"] for r in table.iter_rows(named=True))
    by_chance = [r["chance"] for r in table.iter_rows(named=True) if r["chance"] is not None]
    chance_text = (f" (breaks placed at random: {min(by_chance):.0%}-{max(by_chance):.0%}, column chance)"
                   if by_chance else "")
    console.print(f"{table.height} runs: {round(hit)} of {n_breaks} symmetry breakings within {window} decades of a "
                  f"loss drop{chance_text}; {round(explained)} of {n_drops} loss drops within {window} decades of "
                  "a breaking", highlight=False)
    unsettled = table.filter(pl_col_false("settled")).height
    if unsettled:
        console.print(f"{unsettled} run(s) had not settled: their class changed over the last 10% of training",
                      highlight=False)


def pl_short_id():
    import polars as pl

    return pl.col("run_id").str.slice(0, 8).alias("run")


def pl_col_false(name: str):
    import polars as pl

    return pl.col(name) == False  # noqa: E712 - polars expression, null stays out


def _steps_text(column: str):
    import polars as pl

    return pl.col(column).list.eval(pl.element().cast(pl.String)).list.join(" ").alias(column)


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

    out = analysis_call(fit, results, metric, axis, method=method, quantile=quantile, min_seed_share=min_seed_share)
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
    kind: str = typer.Option("phase", "--kind", help="phase, scaling, width, loss, trend; from runs with "
                             "train.record: dynamics (one run's Δ and loss over training, breaks and drops "
                             "marked) or trajectories (a metric over training, every recorded run)."),
    x: Optional[str] = typer.Option(None, "--x", help="Horizontal axis (default: gamma; step for dynamics and "
                                    "trajectories)."),
    y: Optional[str] = typer.Option(None, "--y", help="Vertical axis (phase), the series (loss), or the color "
                                    "axis (trajectories; default: the first varying axis)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="What the figure measures (default: weight_rank "
                                         "for linear students, else n_distinct); phase also takes symmetry_class; "
                                         "trajectories: n_distinct, n_dos, weight_rank, train_loss or test_loss."),
    color: Optional[str] = typer.Option(None, "--color", help="Alias of --metric for the phase diagram's color."),
    facet: Optional[str] = typer.Option(None, "--facet", help="A third axis: one panel per value (phase)."),
    by: Optional[list[str]] = typer.Option(None, "--by", help="Group columns, one color each (trend; "
                                           "comma-separated or repeated; default: the other axes)."),
    run: Optional[str] = typer.Option(None, "--run", help="The run of a dynamics plot: its run_id (or a prefix; "
                                      "default: the first that `phasemap dynamics` lists)."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="KEY=VALUE, repeatable: only matching "
                                              "recorded runs (dynamics, trajectories)."),
    out: Path = typer.Option(..., "-o", "--out", help="Figure file: .png, .svg or .pdf."),
) -> None:
    """Draw a phase diagram, a scaling plot, a width-saturation plot, loss curves, a trend, or training dynamics."""
    from phasemap.plots import plot as draw

    path = analysis_call(draw, results, kind, out, x=x, y=y, color=color, facet=facet, metric=metric,
                         by=_columns(by), run=run, where=parse_where(where))
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
            stopped(sweep, str(results), err.signum, DEFAULT_MAX_CONFIGS)
        report(sweep.name, str(results), summary)

    rows = analysis_call(run_checks, out, quick, run=run_complete)
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
