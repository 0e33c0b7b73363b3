"""Trends: how a metric moves along an axis, per group: a least-squares slope (per decade on a log
axis), Spearman's rho, bootstrap CIs over whole seeds, and where the metric saturates in width.

The method is described in `phasemap.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from phasemap.analysis.critical import fmt, seed_mean, seed_notes
from phasemap.analysis.runs import (MIN_SEED_SHARE, OK, SEED, AnalysisError, Curve, Results, load, seed_curves, source,
                                    use_log)

MIN_VALUES = 3         # axis values below which a slope or a rank correlation says only "two points differ"
MIN_BOOT_SEEDS = 3     # with fewer seeds a seed bootstrap has too few distinct resamples: resample runs
BOOT_ROWS = 2_000_000  # resampled runs held at once (the bootstrap runs in chunks of this many)

TREND_SCHEMA = {"x_scale": pl.String, "slope": pl.Float64, "slope_ci_low": pl.Float64, "slope_ci_high": pl.Float64,
                "intercept": pl.Float64, "rho": pl.Float64, "rho_ci_low": pl.Float64, "rho_ci_high": pl.Float64,
                "ci_method": pl.String, "n_values": pl.Int64, "n_seeds": pl.Int64, "n_runs": pl.Int64,
                "n_excluded": pl.Int64, "n_controls": pl.Int64}


@dataclass
class TrendFit:
    """`trend`'s table and what a figure draws beside it."""
    table: pl.DataFrame             # one row per group, as `trend` returns it
    data: pl.DataFrame              # the runs read, every status: group columns, seed, axis, metric, status
    fits: dict[tuple, np.ndarray]   # per group key: (n_boot, 2) slope, intercept of the bootstrap fits
    metric: str
    axis: str
    groups: list[str]
    log: bool                       # x is log10(axis) in the fits


def _fits(b: np.ndarray, x: np.ndarray, y: np.ndarray) -> pl.DataFrame:
    """Per resample b: least-squares slope and intercept of y on x, and Spearman's rho (ties get
    their average rank); NaN where a resample has one x value or a constant metric."""
    slope = pl.cov("x", "y") / pl.col("x").var()
    return (pl.DataFrame({"b": b, "x": x, "y": y}).group_by("b")
            .agg(slope.alias("slope"), (pl.col("y").mean() - slope * pl.col("x").mean()).alias("intercept"),
                 pl.corr("x", "y", method="spearman").alias("rho"))
            .sort("b").fill_nan(None))


def _bootstrap(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, n_boot: int, rng) -> tuple[pl.DataFrame, str]:
    """The fits of n_boot resamples: of whole seeds (every run of a seed drawn together) when
    there are MIN_BOOT_SEEDS or more, else of single runs; and which of the two."""
    codes, members = np.unique(seeds, return_inverse=True)
    by_seed = len(codes) >= MIN_BOOT_SEEDS
    rows = [np.flatnonzero(members == k) for k in range(len(codes))]
    per_chunk = max(1, BOOT_ROWS // len(x))
    parts = []
    for start in range(0, n_boot, per_chunk):
        size = min(per_chunk, n_boot - start)
        if by_seed:
            picks = rng.integers(0, len(codes), (size, len(codes)))
            idx = [np.concatenate([rows[k] for k in pick]) for pick in picks]
        else:
            idx = list(rng.integers(0, len(x), (size, len(x))))
        b = np.repeat(np.arange(start, start + size), [len(i) for i in idx])
        flat = np.concatenate(idx)
        parts.append(_fits(b, x[flat], y[flat]))
    fits = pl.concat(parts) if parts else pl.DataFrame(schema={c: pl.Float64 for c in ("slope", "intercept", "rho")})
    return fits, "seeds" if by_seed else "runs"


def _interval(values: pl.Series) -> tuple[float | None, float | None]:
    """The 2.5-97.5% range of the resamples that have a value."""
    values = values.drop_nulls().to_numpy()
    if not len(values):
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _saturation(widths: np.ndarray, means: np.ndarray, tolerance: float, metric: str):
    """(saturation width, growth between the two largest widths, note). The saturation width is
    the smallest width from which on every seed-mean is within `tolerance` (relative) of the
    widest's; None when only the widest is."""
    if len(widths) < 2:
        return None, None, ""
    ref = means[-1]
    far = np.flatnonzero(np.abs(means - ref) > tolerance * abs(ref))
    start = far[-1] + 1 if len(far) else 0
    growth = float((means[-1] - means[-2]) / abs(means[-2])) if means[-2] != 0 else None
    if start < len(widths) - 1:
        return float(widths[start]), growth, ""
    return None, growth, (f"not saturated in the widths swept: mean {metric} {fmt(means[-2])} at width "
                          f"{fmt(widths[-2])}, {fmt(ref)} at {fmt(widths[-1])} (tolerance {tolerance:.0%})")


def group_trend(runs: pl.DataFrame, curve: Curve, metric: str, axis: str, log: bool, n_boot: int, rng,
                min_seed_share: float = MIN_SEED_SHARE, tolerance: float = 0.1) -> tuple[dict, np.ndarray]:
    """One group's row (without its group values and n_controls) and its (n_boot, 2) bootstrap
    slopes and intercepts. `runs` holds the group's runs, every status; `curve` their seed curve."""
    n_seeds_all = curve.values.shape[0]
    kept = np.flatnonzero((curve.share >= min_seed_share) & (curve.share > 0))
    used = (runs.filter((pl.col("status") == OK) & pl.col(metric).is_not_null()
                        & pl.col(axis).cast(pl.Float64).is_in(curve.xs[kept].tolist()))
            .sort([c for c in (SEED, axis, metric) if c in runs.columns]))   # resamples need not follow file order
    x = used[axis].cast(pl.Float64).to_numpy()
    x = np.log10(x) if log else x
    y = used[metric].cast(pl.Float64).to_numpy()
    seeds = used[SEED].to_numpy() if SEED in used.columns else np.zeros(used.height)
    notes = [seed_notes(axis, curve, range(len(curve.xs)), n_seeds_all, min_seed_share)]
    row = {"x_scale": "log10" if log else "linear", "ci_method": None, "n_values": len(kept),
           "n_seeds": len(np.unique(seeds)), "n_runs": used.height, "n_excluded": curve.n_excluded}
    empty = dict.fromkeys(("slope", "slope_ci_low", "slope_ci_high", "intercept", "rho", "rho_ci_low", "rho_ci_high"))
    boots = np.empty((0, 2))
    if len(kept) < MIN_VALUES:
        notes.append(f"{len(kept)} {axis} values with enough seeds ok; a slope and rho need {MIN_VALUES}")
        row |= empty
    else:
        point = _fits(np.zeros(len(x), int), x, y).row(0, named=True)
        fits, row["ci_method"] = _bootstrap(x, y, seeds, n_boot, rng)
        boots = fits.select("slope", "intercept").to_numpy()
        row |= {"slope": point["slope"], "intercept": point["intercept"], "rho": point["rho"]}
        row["slope_ci_low"], row["slope_ci_high"] = _interval(fits["slope"])
        row["rho_ci_low"], row["rho_ci_high"] = _interval(fits["rho"]) if point["rho"] is not None else (None, None)
        if point["rho"] is None:
            notes.append(f"{metric} is the same in every run: rho is undefined")
    if axis == "width":
        sat, growth, note = _saturation(curve.xs[kept], seed_mean(curve.values[:, kept]), tolerance, metric)
        row |= {"saturation_width": sat, "growth_last": growth}
        notes.append(note)
    row["note"] = "; ".join(n for n in notes if n)
    return row, boots


def _controls(results: Results, axis: str, groups: list[str], total: int) -> dict[tuple, int]:
    """Runs at axis <= 0 left out of a log axis, per group key."""
    if not total:
        return {}
    if not groups:
        return {(): total}
    counts = source(results).filter(pl.col(axis) <= 0).group_by(groups).len().collect()
    return {tuple(r[:-1]): r[-1] for r in counts.iter_rows()}


def trend_fit(results: Results, metric: str | None = None, axis: str = "gamma", by: list[str] | None = None,
              n_boot: int = 200, seed: int = 0, min_seed_share: float = MIN_SEED_SHARE, tolerance: float = 0.1,
              max_groups: int | None = None) -> TrendFit:
    """`trend`'s table with the runs and the bootstrap fits behind it (for figures); more groups
    than `max_groups` are refused before any fit."""
    data, metric, groups, controls = load(results, metric, axis, by)   # controls left out: warned
    n_groups = data.select(groups).n_unique() if groups else 1
    if max_groups is not None and n_groups > max_groups:
        raise AnalysisError(f"{n_groups} groups of {', '.join(groups)}, more than the {max_groups} that one figure "
                            "tells apart; choose the group columns (--by) or plot a subset of the runs")
    log = use_log(data[axis].unique().drop_nulls().to_numpy().astype(float))
    rng = np.random.default_rng(seed)
    parts = data.partition_by(groups, as_dict=True) if groups else {(): data}
    left_out = _controls(results, axis, groups, controls)
    curves = seed_curves(data, metric, axis, groups)
    rows, fits = [], {}
    for key in data.select(groups).unique().sort(groups).iter_rows() if groups else [()]:   # rng use in a fixed order
        row, fits[key] = group_trend(parts[key], curves[key], metric, axis, log, n_boot, rng, min_seed_share,
                                     tolerance)
        rows.append({**dict(zip(groups, key)), **row, "n_controls": left_out.get(key, 0)})
    schema = {g: data.schema[g] for g in groups} | TREND_SCHEMA
    if axis == "width":
        schema |= {"saturation_width": pl.Float64, "growth_last": pl.Float64}
    table = pl.DataFrame(rows, schema=schema | {"note": pl.String})
    if axis == "width":      # a width as the results write it (an integer)
        table = table.with_columns(pl.col("saturation_width").cast(data.schema[axis]))
    return TrendFit(table, data, fits, metric, axis, groups, log)


def trend(results: Results, metric: str | None = None, axis: str = "gamma", by: list[str] | None = None,
          n_boot: int = 200, seed: int = 0, min_seed_share: float = MIN_SEED_SHARE,
          tolerance: float = 0.1) -> pl.DataFrame:
    """Does `metric` grow or shrink along `axis`? One row per group, with bootstrap CIs.

    Columns: the group's values, `x_scale` (log10 or linear), `slope` (per decade on a log axis),
    `slope_ci_low`, `slope_ci_high`, `intercept` (the line at axis 0, or at axis 1 on a log axis),
    `rho` (Spearman), `rho_ci_low`, `rho_ci_high`,
    `ci_method` (seeds or runs), `n_values`, `n_seeds`, `n_runs` (ok runs fitted), `n_excluded`
    (diverged, failed or without the metric), `n_controls` (runs at axis <= 0 left out of a log
    axis), with axis width `saturation_width` and `growth_last`, and `note`.

        trend("results/noise", "n_dos", "sigma").select("slope", "slope_ci_low", "slope_ci_high", "rho")
    """
    return trend_fit(results, metric, axis, by, n_boot, seed, min_seed_share, tolerance).table
