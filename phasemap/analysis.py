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

from phasemap import summary
from phasemap.summary import scan

SEED = "seed"


class AnalysisError(ValueError):
    """A question the data cannot answer as asked (unknown metric or axis, too few points)."""


def _lazy(results: str | Path | pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The ok runs of a results folder (or a frame), lazily: only the columns asked for are read."""
    if isinstance(results, pl.DataFrame):
        return results.lazy()
    if isinstance(results, pl.LazyFrame):
        return results
    return scan(results).filter(pl.col("status") == "ok")


def _frame(results, columns: list[str] | None = None) -> pl.DataFrame:
    lazy = _lazy(results)
    return (lazy.select(columns) if columns else lazy).collect()


def varying_axes(results) -> list[str]:
    """Scalar config columns that take more than one value."""
    return summary.varying_axes(_lazy(results))


def group_columns(results, axis: str, by: list[str] | None = None) -> list[str]:
    """The columns that define a group: the other varying axes, minus seeds and minus columns
    that are a function of `axis` (e.g. batch_size when temperature is the axis)."""
    if by is not None:
        return by
    others = [c for c in varying_axes(results) if c not in (axis, SEED)]
    if not others:
        return []
    per_value = (_lazy(results).group_by(axis).agg([pl.col(c).n_unique() for c in others])
                 .select([pl.col(c).max() for c in others]).collect().row(0))
    return [c for c, k in zip(others, per_value) if k > 1]


def _check(results, metric: str, axis: str) -> None:
    lazy = _lazy(results)
    names = lazy.collect_schema().names()
    for what, col in (("metric", metric), ("axis", axis)):
        if col not in names:
            raise AnalysisError(f"{what} {col!r} is not a column of these results")
    n_rows, n_axis = lazy.select(pl.len(), pl.col(axis).n_unique()).collect().row(0)
    if n_rows == 0:
        raise AnalysisError("no runs with status ok in these results")
    if n_axis < 2:
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


def seed_curves(results, metric: str, axis: str, groups: list[str]) -> dict[tuple, tuple]:
    """Per group: (axis values (K,), per-seed metric means (n_seeds, K) with NaN where a seed lacks
    a value, number of runs)."""
    lazy = _lazy(results)
    seed = [SEED] if SEED in lazy.collect_schema().names() else []
    agg = (lazy.group_by([*groups, *seed, axis])
           .agg(pl.col(metric).cast(pl.Float64).mean().alias("m"), pl.len().alias("n")).collect())
    out = {}
    for key, part in (agg.partition_by(groups, as_dict=True) if groups else {(): agg}).items():
        xs, x_idx = np.unique(part[axis].to_numpy().astype(float), return_inverse=True)
        seeds = part[SEED].to_numpy() if seed else np.zeros(part.height)
        _, s_idx = np.unique(seeds, return_inverse=True)
        matrix = np.full((s_idx.max() + 1, len(xs)), np.nan)
        matrix[s_idx, x_idx] = part["m"].to_numpy()
        out[key] = (xs, matrix, int(part["n"].sum()))
    return out


def _mean(matrix: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        return np.nanmean(matrix, axis=-2)


def _resampled_crossings(u: np.ndarray, curves: np.ndarray, level_from: int, level_to: int,
                         near: float) -> np.ndarray:
    """For each curve (B, K), the crossing of this transition's boundary nearest to `near` (in u)."""
    boundary = (level_from + level_to) / 2
    d = curves - boundary
    a, b = d[:, :-1], d[:, 1:]
    hit = (a >= 0) & (b < 0) if level_to < level_from else (a <= 0) & (b > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        points = u[:-1] + a / (a - b) * (u[1:] - u[:-1])
    points = np.where(hit, points, np.nan)
    pick = np.abs(np.where(np.isnan(points), np.inf, points - near)).argmin(axis=1)
    return points[np.arange(len(points)), pick]      # NaN where a resample lacks the crossing


def _valid_curve(xs: np.ndarray, matrix: np.ndarray):
    """Drop axis values that no seed reached; return xs, matrix and the seed-mean curve."""
    curve = _mean(matrix)
    keep = ~np.isnan(curve)
    return xs[keep], matrix[:, keep], curve[keep]


def _resample(matrix: np.ndarray, n_boot: int, rng) -> np.ndarray | None:
    """(n_boot, K) seed-mean curves over bootstrap resamples of the seeds (None with one seed)."""
    if matrix.shape[0] < 2 or not n_boot:
        return None
    return _mean(matrix[rng.integers(0, matrix.shape[0], (n_boot, matrix.shape[0]))])


def _transitions(xs: np.ndarray, matrix: np.ndarray, log: bool, n_boot: int, rng) -> list[dict]:
    """Critical points of one group's seed-mean curve, each with a bootstrap CI over seeds."""
    xs, matrix, curve = _valid_curve(xs, matrix)
    found = crossings(xs, curve, log)
    if not found:
        return []
    u = np.log(xs) if log else xs
    boots = _resample(matrix, n_boot, rng)
    rows = []
    for level_from, level_to, point in found:
        low = high = point
        if boots is not None:
            samples = _resampled_crossings(u, boots, level_from, level_to, np.log(point) if log else point)
            samples = samples[~np.isnan(samples)]
            if len(samples):
                low, high = np.percentile(np.exp(samples) if log else samples, [2.5, 97.5])
        rows.append({"from": level_from, "to": level_to, "critical": point,
                     "ci_low": float(low), "ci_high": float(high)})
    return rows


def critical(results, metric: str, axis: str, by: list[str] | None = None, n_boot: int = 200,
             seed: int = 0) -> pl.DataFrame:
    """Every point along `axis` where `metric` changes level, per group, with bootstrap CIs.

    Columns: the group's values, `from`, `to`, `critical`, `ci_low`, `ci_high`, `n_runs`.
    """
    _check(results, metric, axis)
    groups = group_columns(results, axis, by)
    lazy = _lazy(results)
    log = _use_log(lazy.select(pl.col(axis).unique()).collect()[axis].to_numpy().astype(float))
    rng = np.random.default_rng(seed)
    rows = []
    for key, (xs, matrix, n_runs) in seed_curves(results, metric, axis, groups).items():
        for row in _transitions(xs, matrix, log, n_boot, rng):
            rows.append({**dict(zip(groups, key)), **row, "n_runs": n_runs})
    schema = {g: lazy.collect_schema()[g] for g in groups} | {
        "from": pl.Int64, "to": pl.Int64, "critical": pl.Float64, "ci_low": pl.Float64,
        "ci_high": pl.Float64, "n_runs": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort([*groups, "critical"])


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """beta, C of y = C x^(-beta) by least squares in log-log."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return -float(slope), float(np.exp(intercept))


def _envelope_points(frame, metric: str, axis: str, n_boot: int, rng) -> tuple[list, list]:
    """(gamma_m, m) where the seed-mean metric drops from m to m-1, and per-bootstrap copies."""
    (xs, matrix, _), = seed_curves(frame, metric, axis, []).values()
    log = _use_log(xs)
    xs, matrix, curve = _valid_curve(xs, matrix)
    found = [(p, f) for f, t, p in crossings(xs, curve, log) if t == f - 1 and f > 0]
    boots = _resample(matrix, n_boot, rng) if found else None
    if boots is None:
        return found, []
    u = np.log(xs) if log else xs
    per_point = np.array([_resampled_crossings(u, boots, m, m - 1, np.log(p) if log else p) for p, m in found])
    per_point = np.exp(per_point) if log else per_point     # (points, n_boot), NaN where absent
    return found, [[(per_point[i, j], found[i][1]) for i in range(len(found)) if not np.isnan(per_point[i, j])]
                   for j in range(n_boot)]


def scaling_fit(results, metric: str = "n_distinct", axis: str = "gamma", method: str = "transitions",
                quantile: float = 0.9, n_boot: int = 200, seed: int = 0):
    """(frame, beta, C, fitted points (x, y), bootstrap fits [(beta, C)]) for the bound metric <= C axis^(-beta)."""
    _check(results, metric, axis)
    names = _lazy(results).collect_schema().names()
    frame = _frame(results, [c for c in dict.fromkeys([axis, metric, SEED, "width"]) if c in names])
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
