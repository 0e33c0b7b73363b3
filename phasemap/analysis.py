"""Phase boundaries and scaling laws from a results folder, as polars DataFrames.

    critical("results/lin", metric="weight_rank", axis="gamma")   # where the metric changes level
    scaling("results/pl", metric="weight_rank", axis="gamma")     # fit m <= C gamma^(-beta)

Critical points. Within each group (the other varying axes; seeds pooled), the metric is
averaged over seeds at every grid value of the axis. Between two neighbouring grid values the
level boundary L - 1/2 is crossed once for every level L that the average passes; each crossing
is located by linear interpolation of the average (in log space when every axis value is > 0 and
the grid spans more than a factor 10), so several levels changing between two grid points give
several critical points. The precision is at best a fraction of the grid step: put a dense grid
where the boundary is. The confidence interval is the 2.5-97.5% range over bootstrap resamples
of the seeds (a resample that lacks the crossing is left out).

Scaling. The points (gamma_m, m) at which the metric drops from m to m-1 lie on the envelope
m = C gamma^(-beta); a least-squares line through log m against log gamma_m gives beta and C
("transitions", recommended: a fit over every run is biased by the floor of the counts). The
"quantile" method fits the q-quantile of the metric at each gamma instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from phasemap.summary import NOT_AXES, scan

SEED = "seed"
DERIVED = {"temperature_effective", "spectrum_c", "spectrum_alpha", "run_id", "sweep"}


class AnalysisError(ValueError):
    """A question the data cannot answer as asked (unknown metric or axis, too few points)."""


def _frame(results: str | Path | pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    if isinstance(results, pl.DataFrame):
        return results
    if isinstance(results, pl.LazyFrame):
        return results.collect()
    return scan(results).filter(pl.col("status") == "ok").collect()


def varying_axes(frame: pl.DataFrame) -> list[str]:
    """Scalar config columns that take more than one value."""
    out = []
    for name, dtype in frame.schema.items():
        if name in NOT_AXES or name in DERIVED or isinstance(dtype, pl.List):
            continue
        if frame[name].n_unique() > 1:
            out.append(name)
    return out


def group_columns(frame: pl.DataFrame, axis: str, by: list[str] | None = None) -> list[str]:
    """The columns that define a group: the other varying axes, minus seeds and minus columns
    that are a function of `axis` (e.g. batch_size when temperature is the axis)."""
    if by is not None:
        return by
    out = []
    for col in varying_axes(frame):
        if col in (axis, SEED):
            continue
        per_value = frame.group_by(axis).agg(pl.col(col).n_unique().alias("n"))["n"].max()
        if per_value > 1:
            out.append(col)
    return out


def _check(frame: pl.DataFrame, metric: str, axis: str) -> None:
    if frame.height == 0:
        raise AnalysisError("no runs with status ok in these results")
    for what, col in (("metric", metric), ("axis", axis)):
        if col not in frame.columns:
            raise AnalysisError(f"{what} {col!r} is not a column of these results")
    if frame[axis].n_unique() < 2:
        raise AnalysisError(f"axis {axis!r} has a single value; nothing changes along it")


def _use_log(values: np.ndarray) -> bool:
    return bool((values > 0).all() and values.max() / values.min() > 10)


def crossings(x: np.ndarray, mean: np.ndarray, log: bool) -> list[tuple[int, int, float]]:
    """(from, to, x) for each level boundary L -+ 1/2 that the curve mean(x) crosses between grid points.

    A boundary met exactly at a grid point is counted once, in the pair that leaves it.
    """
    out = []
    u = np.log(x) if log else x
    for i in range(len(x) - 1):
        a, b = float(mean[i]), float(mean[i + 1])
        if b < a:    # L -> L-1 at L - 1/2, for boundaries in (b, a]
            levels = range(math.floor(a + 0.5), math.floor(b + 0.5), -1)
            pairs = [(level, level - 1, level - 0.5) for level in levels]
        elif b > a:  # L -> L+1 at L + 1/2, for boundaries in [a, b)
            levels = range(math.ceil(a - 0.5), math.ceil(b - 0.5))
            pairs = [(level, level + 1, level + 0.5) for level in levels]
        else:
            continue
        for level_from, level_to, boundary in pairs:
            point = u[i] + (a - boundary) / (a - b) * (u[i + 1] - u[i])
            out.append((level_from, level_to, float(np.exp(point) if log else point)))
    return out


def _curve(group: pl.DataFrame, metric: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    curve = group.group_by(axis).agg(pl.col(metric).cast(pl.Float64).mean()).sort(axis)
    return curve[axis].to_numpy().astype(float), curve[metric].to_numpy()


def _bootstrap(group: pl.DataFrame, metric: str, axis: str, log: bool, n_boot: int,
               rng: np.random.Generator) -> list[list[tuple[int, int, float]]]:
    if SEED not in group.columns or group[SEED].n_unique() < 2:
        return []
    seeds = group[SEED].unique().to_numpy()
    by_seed = {s: group.filter(pl.col(SEED) == s) for s in seeds}
    out = []
    for _ in range(n_boot):
        pick = rng.choice(seeds, size=len(seeds), replace=True)
        sample = pl.concat([by_seed[s] for s in pick])
        out.append(crossings(*_curve(sample, metric, axis), log))
    return out


def critical(results, metric: str, axis: str, by: list[str] | None = None, n_boot: int = 200,
             seed: int = 0) -> pl.DataFrame:
    """Every point along `axis` where `metric` changes level, per group, with bootstrap CIs.

    Columns: the group's values, `from`, `to`, `critical`, `ci_low`, `ci_high`, `n_runs`.
    """
    frame = _frame(results)
    _check(frame, metric, axis)
    groups = group_columns(frame, axis, by)
    log = _use_log(frame[axis].unique().to_numpy().astype(float))
    rng = np.random.default_rng(seed)
    rows = []
    parts = frame.partition_by(groups, as_dict=True) if groups else {(): frame}
    for key, group in parts.items():
        found = crossings(*_curve(group, metric, axis), log)
        boots = _bootstrap(group, metric, axis, log, n_boot, rng) if found else []
        for level_from, level_to, point in found:
            samples = [p for b in boots for f, t, p in b if (f, t) == (level_from, level_to)]
            low, high = (np.percentile(samples, [2.5, 97.5]) if samples else (point, point))
            rows.append({**dict(zip(groups, key)), "from": level_from, "to": level_to, "critical": point,
                         "ci_low": float(low), "ci_high": float(high), "n_runs": group.height})
    schema = {g: frame.schema[g] for g in groups} | {
        "from": pl.Int64, "to": pl.Int64, "critical": pl.Float64, "ci_low": pl.Float64,
        "ci_high": pl.Float64, "n_runs": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort([*groups, "critical"])


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """beta, C of y = C x^(-beta) by least squares in log-log."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return -float(slope), float(np.exp(intercept))


def _envelope_points(frame: pl.DataFrame, metric: str, axis: str, n_boot: int, rng) -> tuple:
    """(gamma_m, m) points where the seed-mean metric drops from m to m-1, and bootstrap copies."""
    log = _use_log(frame[axis].unique().to_numpy().astype(float))
    found = [(p, f) for f, t, p in crossings(*_curve(frame, metric, axis), log) if t == f - 1 and f > 0]
    boots = [[(p, f) for f, t, p in b if t == f - 1 and f > 0]
             for b in _bootstrap(frame, metric, axis, log, n_boot, rng)]
    return found, boots


def scaling_fit(results, metric: str = "n_distinct", axis: str = "gamma", method: str = "transitions",
                quantile: float = 0.9, n_boot: int = 200, seed: int = 0):
    """(frame, beta, C, fitted points (x, y), bootstrap fits [(beta, C)]) for the bound metric <= C axis^(-beta)."""
    frame = _frame(results)
    _check(frame, metric, axis)
    if (frame[axis] <= 0).any():
        raise AnalysisError(f"axis {axis!r} has values <= 0; a power law needs positive values")
    rng = np.random.default_rng(seed)
    # with several widths the envelope is that of the widest students
    fit_frame = frame.filter(pl.col("width") == frame["width"].max()) if "width" in frame.columns else frame
    if method == "transitions":
        points, boots = _envelope_points(fit_frame, metric, axis, n_boot, rng)
        if len(points) < 2:
            raise AnalysisError(f"{metric} changes level fewer than twice along {axis}: no line to fit")
        xs, ys = np.array([p for p, _ in points]), np.array([m for _, m in points], dtype=float)
        fits = [_fit_line(np.array([p for p, _ in b]), np.array([m for _, m in b], float))
                for b in boots if len(b) >= 2]
    elif method == "quantile":
        q = fit_frame.group_by(axis).agg(pl.col(metric).cast(pl.Float64).quantile(quantile)).sort(axis)
        q = q.filter(pl.col(metric) > 0)
        if q.height < 2:
            raise AnalysisError(f"fewer than two {axis} values with {metric} > 0")
        xs, ys = q[axis].to_numpy(), q[metric].to_numpy()
        fits = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(xs), len(xs))
            if len(set(idx)) >= 2:
                fits.append(_fit_line(xs[idx], ys[idx]))
    else:
        raise AnalysisError(f"unknown method {method!r}; use transitions or quantile")
    beta, c = _fit_line(xs, ys)
    return frame, beta, c, (xs, ys), fits


def scaling(results, metric: str = "n_distinct", axis: str = "gamma", method: str = "transitions",
            quantile: float = 0.9, n_boot: int = 200, seed: int = 0) -> dict:
    """Fit the bound metric <= C axis^(-beta); count runs above it; test saturation in width."""
    frame, beta, c, (xs, ys), fits = scaling_fit(results, metric, axis, method, quantile, n_boot, seed)
    betas, cs = np.array([f[0] for f in fits]), np.array([f[1] for f in fits])
    bound = c * frame[axis].to_numpy().astype(float) ** (-beta)
    violations = int((frame[metric].to_numpy() > bound * (1 + 1e-9) + 1e-9).sum())
    return {
        "metric": metric, "axis": axis, "method": method, "beta": beta, "C": c,
        "beta_ci": [float(np.percentile(betas, 2.5)), float(np.percentile(betas, 97.5))] if len(fits) else [beta, beta],
        "C_ci": [float(np.percentile(cs, 2.5)), float(np.percentile(cs, 97.5))] if len(fits) else [c, c],
        "points": [[float(x), float(y)] for x, y in zip(xs, ys)],
        "n_runs": frame.height, "violations": violations,
        "width_saturation": width_saturation(frame, metric, axis),
    }


def width_saturation(frame: pl.DataFrame, metric: str, axis: str, tolerance: float = 0.1) -> dict | None:
    """At each axis value, does the seed-mean metric stop growing between the two largest widths?"""
    if "width" not in frame.columns or frame["width"].n_unique() < 2:
        return None
    widths = sorted(frame["width"].unique().to_list())[-2:]
    table = (frame.filter(pl.col("width").is_in(widths))
             .group_by(axis, "width").agg(pl.col(metric).cast(pl.Float64).mean())
             .pivot(on="width", index=axis, values=metric).sort(axis))
    small, large = table[str(widths[0])].to_numpy(), table[str(widths[1])].to_numpy()
    growth = (large - small) / np.maximum(small, 1.0)
    return {"widths": widths, "tolerance": tolerance,
            "saturated": bool((growth <= tolerance).all()),
            "max_relative_growth": float(growth.max())}
