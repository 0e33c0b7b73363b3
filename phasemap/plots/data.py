"""The data behind each figure, as plain polars frames and dicts (tests check these, not pixels)."""

from __future__ import annotations

import numpy as np
import polars as pl

from phasemap import store
from phasemap.analysis import (MIN_SEED_SHARE, OK, SEED, AnalysisError, critical, frame, independent_axes,
                               recorded_runs, require_columns, run_dynamics, scaling_fit, trend_fit, use_log)
from phasemap.analysis.dynamics import traces

MAX_CLASSES = 9  # the most frequent symmetry classes get their own color, the rest are "other"
MAX_GROUPS = 8   # lines in a trend plot: more colors than this cannot be told apart
TRAJECTORY_METRICS = ("n_distinct", "n_dos", "weight_rank", "train_loss", "test_loss")  # scalar trace columns

def _run_counts(value: str | None = None) -> list[pl.Expr]:
    """Per group: all runs, runs usable (ok with a value), diverged and failed runs."""
    used = pl.col("status") == OK
    if value is not None:
        used = used & pl.col(value).is_not_null()
    return [pl.len().alias("n"), used.sum().alias("n_ok"), (pl.col("status") == "diverged").sum().alias("n_diverged"),
            (pl.col("status") == "failed").sum().alias("n_failed")]


def _check_color(schema: pl.Schema, color: str) -> bool:
    """Whether the color column is categorical (a class); raises for a column that is neither."""
    if color not in schema.names():
        raise AnalysisError(f"color {color!r} is not a column of these results")
    if schema[color] == pl.String:
        if color != "symmetry_class" and color in store.RESULT_TYPES:
            raise AnalysisError(f"color {color!r} is not a metric; use a numeric metric or symmetry_class")
        return True
    require_columns(schema, color)
    return False


def _modal(data: pl.DataFrame, keys: list[str], color: str) -> pl.DataFrame:
    """Per cell the most common class; ties go to the class most common in the whole sweep, then
    alphabetical. `agreement` is the share of the cell's runs in that class."""
    used = data.filter((pl.col("status") == OK) & pl.col(color).is_not_null())
    overall = used[color].value_counts(name="overall")
    counts = (used.group_by([*keys, color]).len("n_modal").join(overall, on=color)
              .sort([*keys, "n_modal", "overall", color], descending=[False] * len(keys) + [True, True, False]))
    modal = counts.group_by(keys, maintain_order=True).first().rename({color: "value"}).drop("overall")
    total = used.group_by(keys).len("n_used")
    return modal.join(total, on=keys).with_columns((pl.col("n_modal") / pl.col("n_used")).alias("agreement"))


def _is_grid(cells: pl.DataFrame, keys: list[str]) -> bool:
    """Whether the sampled points fill every combination of the keys' unique values (a sweep's
    grid); a refined folder (its own x values per y) does not."""
    size = 1
    for k in keys:
        size *= cells[k].n_unique()
    return cells.height == size


def phase_data(results, x: str, y: str, color: str, facet: str | None = None,
               min_seed_share: float = MIN_SEED_SHARE) -> dict:
    """Cells {x, y[, facet], value, n, n_ok, n_diverged, n_failed} (seed-mean of a metric, or the
    modal symmetry class with its `agreement`), the critical points of the metric along x for
    each y, and the run counts. A cell where fewer than `min_seed_share` of the runs finished ok
    has value null.

    `grid` says whether the cells fill every (x, y[, facet]) combination of the values swept;
    where they do not (a `phasemap refine` folder: its own x values per y, dense near the
    boundaries) each row of `cells` is one sampled point, drawn as a marker at its (x, y), and
    `n_points` counts them."""
    data = frame(results, ok_only=False)
    require_columns(data.schema, None, (x, y))
    if facet in (SEED, x, y) or (facet and facet not in data.columns):
        raise AnalysisError(f"facet {facet!r} must be a column other than seed and the two axes")
    categorical = _check_color(data.schema, color)
    keys = [x, y] + ([facet] if facet else [])
    counts = data.group_by(keys).agg(_run_counts(color))
    if categorical:
        modal = _modal(data, keys, color)
        top = data[color].drop_nulls().value_counts(sort=True)[color].head(MAX_CLASSES).to_list()
        cells = counts.join(modal, on=keys, how="left").with_columns(
            pl.when(pl.col("value").is_in(top) | pl.col("value").is_null()).then(pl.col("value"))
            .otherwise(pl.lit("other")).alias("value"))
        lines = None
    else:
        used = (pl.col("status") == OK) & pl.col(color).is_not_null()
        means = data.group_by(keys).agg(pl.col(color).cast(pl.Float64).filter(used).mean().alias("value"))
        cells = counts.join(means, on=keys)
        by = [y] + ([facet] if facet else [])
        lines = critical(data, color, x, by=by, n_boot=50, min_seed_share=min_seed_share)
    cells = cells.with_columns(pl.when(pl.col("n_ok") >= min_seed_share * pl.col("n")).then(pl.col("value"))
                               .otherwise(None).alias("value")).sort(keys)
    return {"cells": cells, "critical": lines, "x": x, "y": y, "color": color, "facet": facet,
            "categorical": categorical, "grid": _is_grid(cells, keys), "n_points": cells.height,
            "n_runs": data.height,
            "n_diverged": int((data["status"] == "diverged").sum()), "n_failed": int((data["status"] == "failed").sum()),
            "log_x": use_log(data[x].unique().to_numpy().astype(float)),
            "log_y": use_log(data[y].unique().to_numpy().astype(float))}


def scaling_data(results, metric: str | None = None, axis: str = "gamma", method: str = "transitions") -> dict:
    """Runs, transition points with their CIs, the fitted bound and a 95% band over bootstrap fits."""
    fit = scaling_fit(results, metric, axis, method)
    runs = fit.runs
    grid = np.geomspace(runs[axis].min(), runs[axis].max(), 100)
    curves = (np.array([cb * grid ** (-b) for b, cb in fit.fits]) if len(fit.fits)
              else np.array([fit.C * grid ** (-fit.beta)]))
    return {"runs": runs.select(axis, fit.metric, *(["width"] if "width" in runs.columns else [])),
            "points": (fit.points[:, 0], fit.points[:, 1]), "points_ci": fit.points_ci,
            "unresolved": fit.unresolved, "beta": fit.beta, "C": fit.C, "grid": grid, "fit": fit.C * grid ** (-fit.beta),
            "band": (np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)),
            "metric": fit.metric, "axis": axis, "n_runs": runs.height + fit.n_excluded, "n_excluded": fit.n_excluded,
            "beta_ci": fit.interval(0), "C_ci": fit.interval(1)}


def width_data(results, metric: str, axis: str = "gamma", min_seed_share: float = MIN_SEED_SHARE) -> pl.DataFrame:
    """Seed-mean metric (and standard error) over ok runs for each width and axis value, with the
    run counts; null where fewer than `min_seed_share` of the runs finished."""
    data = frame(results, ok_only=False)
    require_columns(data.schema, metric, (axis,))
    if "width" not in data.columns or data["width"].n_unique() < 2:
        raise AnalysisError("width takes a single value in these results; sweep width to see saturation")
    used = (pl.col("status") == OK) & pl.col(metric).is_not_null()
    value = pl.col(metric).cast(pl.Float64).filter(used)
    return (data.group_by("width", axis)
            .agg(value.mean().alias("mean"), (value.std() / used.sum().sqrt()).fill_null(0.0).alias("sem"),
                 *_run_counts(metric))
            .with_columns(pl.when(pl.col("n_ok") >= min_seed_share * pl.col("n")).then(pl.col("mean"))
                          .otherwise(None).alias("mean"))
            .sort(axis, "width"))


def loss_data(results, x: str, hue: str | None = None, min_seed_share: float = MIN_SEED_SHARE) -> pl.DataFrame:
    """Train and test loss along x (one series per hue value), averaged over the runs that finished
    ok, with the counts n, n_ok, n_diverged, n_failed; null where fewer than `min_seed_share` of
    the runs finished (a mean over one survivor of four is not the loss at that value)."""
    data = frame(results, ok_only=False)
    require_columns(data.schema, None, (x,) + ((hue,) if hue else ()))
    if not {"train_loss", "test_loss"} <= set(data.columns):
        raise AnalysisError("these results have no train_loss and test_loss columns to plot")
    keys = [x] + ([hue] if hue else [])
    ok = pl.col("status") == OK
    enough = pl.col("n_ok") >= min_seed_share * pl.col("n")
    return (data.group_by(keys)
            .agg(pl.col("train_loss").filter(ok).mean(), pl.col("test_loss").filter(ok).mean(), *_run_counts())
            .with_columns(pl.when(enough).then(pl.col(c)).otherwise(None) for c in ("train_loss", "test_loss"))
            .sort(keys))


def _seed_means(data: pl.DataFrame, keys: list[str], metric: str, min_seed_share: float) -> pl.DataFrame:
    """Per key: the mean over seeds of each seed's mean over its ok runs, its standard error over
    seeds, the run counts; mean null where fewer than `min_seed_share` of the group's seeds
    (`keys[:-1]`, every status) have an ok run."""
    seed = [SEED] if SEED in data.columns else []
    groups = keys[:-1]
    used = (pl.col("status") == OK) & pl.col(metric).is_not_null()
    per_seed = data.group_by([*keys, *seed]).agg(pl.col(metric).cast(pl.Float64).filter(used).mean().alias("m"),
                                                 *_run_counts(metric))
    seeds = pl.col(SEED).n_unique() if seed else pl.lit(1, pl.UInt32)
    return (per_seed.with_columns((seeds.over(groups) if groups else seeds).alias("n_seeds"))
            .group_by(keys)
            .agg(pl.col("m").mean().alias("mean"), (pl.col("m").std() / pl.col("m").count().sqrt()).alias("sem"),
                 pl.col("m").count().alias("n_seeds_ok"), pl.col("n_seeds").first(),
                 *(pl.col(c).sum() for c in ("n", "n_ok", "n_diverged", "n_failed")))
            .with_columns(pl.col("sem").fill_null(0.0),
                          pl.when(pl.col("n_seeds_ok") >= min_seed_share * pl.col("n_seeds")).then(pl.col("mean"))
                          .otherwise(None).alias("mean"))
            .sort(keys))


def trend_data(results, x: str, metric: str | None = None, by: list[str] | None = None, n_boot: int = 200,
               seed: int = 0, min_seed_share: float = MIN_SEED_SHARE) -> dict:
    """Runs, per group the seed means (with their standard error) at every x, the least-squares
    line with a 95% band over the bootstrap fits, the `trend` table and the run counts. At most
    MAX_GROUPS groups (choose them with `by`)."""
    fit = trend_fit(results, metric, x, by, n_boot, seed, min_seed_share, max_groups=MAX_GROUPS)
    data, groups, metric = fit.data, fit.groups, fit.metric
    means = _seed_means(data, [*groups, x], metric, min_seed_share)
    lines = []
    for row in fit.table.iter_rows(named=True):
        key = tuple(row[g] for g in groups)
        if row["slope"] is None:
            continue
        shown = means.filter(pl.col("mean").is_not_null(), *(pl.col(g).eq_missing(v) for g, v in zip(groups, key)))
        lo, hi = float(shown[x].min()), float(shown[x].max())
        grid = np.geomspace(lo, hi, 100) if fit.log else np.linspace(lo, hi, 100)
        u = np.log10(grid) if fit.log else grid
        boots = fit.fits[key][~np.isnan(fit.fits[key]).any(axis=1)]
        curves = boots[:, 1:2] + boots[:, 0:1] * u
        band = (np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)) if len(boots) else None
        lines.append({"group": dict(zip(groups, key)), "x": grid, "fit": row["intercept"] + row["slope"] * u,
                      "band": band})
    return {"runs": data, "means": means, "lines": lines, "table": fit.table, "groups": groups, "x": x,
            "metric": metric, "log_x": fit.log, "n_runs": data.height,
            "n_diverged": int((data["status"] == "diverged").sum()),
            "n_failed": int((data["status"] == "failed").sum())}


def _run_axes(runs: pl.DataFrame) -> list[str]:
    """The columns that tell these runs apart, as `phasemap dynamics` lists them: the varying
    knobs, then seed."""
    axes = [a for a in independent_axes(runs) if a in runs.columns]
    if SEED in runs.columns and SEED not in axes and runs[SEED].n_unique() > 1:
        axes.append(SEED)
    return axes


def _diverged_at(steps: np.ndarray, loss: np.ndarray) -> int | None:
    """The first record step whose loss is not finite (inf, or null once the weights are)."""
    lost = np.flatnonzero(~np.isfinite(loss))
    return int(steps[lost[0]]) if lost.size else None


def dynamics_data(results, run: str | None = None, where: dict[str, object] | None = None) -> dict:
    """One recorded run's trace: steps (S,), deltas (S, P) (NaN where not measured), train and
    test loss (S,), its delta_threshold, and run_dynamics' breaks (one step per breaking pair),
    `break_steps` (the distinct ones) and drops.

    When --run / --where match several runs, the first with a trace as `phasemap dynamics` lists
    them (by the varying axes, then seed) is shown and `n_matched` says how many matched (a
    failed run recorded nothing).
    """
    runs = recorded_runs(results, run, where)
    axes = _run_axes(frame(results, ok_only=False).filter(pl.col("record").is_not_null()))
    rows = traces(results, runs)
    traced = runs.filter(pl.col("run_id").is_in(rows["run_id"].unique().to_list()))
    if traced.height == 0:
        raise AnalysisError(f"the {runs.height} matching run(s) recorded nothing (status "
                            f"{', '.join(sorted(set(runs['status'].to_list())))}); choose another with --run")
    row = traced.sort([*axes, "run_id"]).row(0, named=True)
    full = rows.filter(pl.col("run_id") == row["run_id"]).sort("step")
    found = run_dynamics(full, row["delta_threshold"])
    trace = full.filter(pl.col("step") > 0)          # step 0 (the initialisation) has no place on a log axis
    steps = trace["step"].to_numpy()
    width = max((len(d) for d in trace["deltas"].to_list() if d is not None), default=0)
    deltas = np.array([d if d is not None else [np.nan] * width for d in trace["deltas"].to_list()],
                      dtype=float).reshape(len(steps), width)
    loss = {c: trace[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in ("train_loss", "test_loss")}
    return {"run_id": row["run_id"], "status": row["status"], "axes": {a: row[a] for a in axes},
            "n_matched": runs.height, "steps": steps, "deltas": deltas, **loss, "threshold": row["delta_threshold"],
            "breaks": found["breaks"], "break_steps": sorted(set(found["breaks"])), "drops": found["drops"],
            "coincident": found["coincident"], "explained": found["explained"],
            "diverged_at": _diverged_at(steps, loss["train_loss"]) if row["status"] == "diverged" else None}


def trajectories_data(results, metric: str | None = None, hue: str | None = None,
                      where: dict[str, object] | None = None) -> dict:
    """A trace metric over training for every recorded run (after --where): `lines`, one row per
    run with its hue value, seed, status and the lists `step` and `value` (record steps where the
    metric was measured and finite). The metric defaults to n_distinct, or n_dos where no run
    has neurons (transformers); the hue to the first varying axis (gamma first), none when only
    seeds vary."""
    runs = recorded_runs(results, None, where)
    if metric is not None and metric not in TRAJECTORY_METRICS:
        raise AnalysisError(f"metric {metric!r} is not traced over training; use one of "
                            + ", ".join(TRAJECTORY_METRICS))
    if hue is not None and (hue not in runs.columns or hue in ("run_id", "status")):
        raise AnalysisError(f"color axis {hue!r} (--y) is not a config column of these results")
    axes = _run_axes(runs)
    hue = hue or next((a for a in sorted(axes, key=lambda a: a != "gamma") if a != SEED), None)
    rows = traces(results, runs)
    if metric is None:
        metric = "n_distinct" if rows["n_distinct"].null_count() < rows.height else "n_dos"
    if rows.height == 0 or rows[metric].null_count() == rows.height:
        raise AnalysisError(f"no recorded run measured {metric} over training")
    keep = list(dict.fromkeys(["run_id", *([hue] if hue else []), *([SEED] if SEED in runs.columns else []), "status"]))
    lines = (rows.filter(pl.col(metric).cast(pl.Float64).is_finite() & (pl.col("step") > 0))   # log x; inf: diverging
             .group_by("run_id", maintain_order=True)
             .agg(pl.col("step"), pl.col(metric).cast(pl.Float64).alias("value"))
             .join(runs.select(keep), on="run_id")
             .sort([c for c in (hue, SEED, "run_id") if c]))
    log_y = metric in ("train_loss", "test_loss")
    if log_y:
        lines = lines.with_columns(pl.col("value").list.eval(pl.when(pl.element() > 0).then(pl.element())))
    return {"lines": lines, "metric": metric, "hue": hue, "log_y": log_y,
            "log_hue": hue is not None and runs.schema[hue].is_numeric() and use_log(runs[hue].unique().to_numpy()),
            "n_runs": runs.height, "n_diverged": int((runs["status"] == "diverged").sum()),
            "n_failed": int((runs["status"] == "failed").sum())}
