"""Phase boundaries and scaling laws from a results folder (or a polars frame), as polars DataFrames.

    critical("results/lin", metric="weight_rank", axis="gamma")   # where the metric changes level
    scaling("results/pl", metric="weight_rank", axis="gamma")     # fit m <= C gamma^(-beta)

Runs. Only runs of status ok with the metric measured are averaged (`n_runs`); the others
(diverged, failed) are counted per group (`n_excluded`), never silently dropped. A frame without a
`status` column is all ok. A grid value at which fewer than `min_seed_share` of the group's seeds
finished ok is not used to locate boundaries: the bracket of a crossing spans over it (its `note`
says so), and where no crossing spans it a row with `critical` null and `resolved` False says
that no boundary was located there.

Critical points. Within each group (the other varying axes; seeds pooled), the metric is
averaged over seeds at every grid value of the axis. A level boundary L - 1/2 is crossed where the
seed-mean passes from one side of it to the other; the bracket of the crossing is the last grid
value strictly on the old side and the first strictly on the new side. A mean exactly on the
boundary at a grid value (with 2 seeds, one at L and one at L - 1) is a point of the boundary:
the critical point is that grid value and the bracket reaches the neighbouring grid values on
either side; a curve that touches L - 1/2 and returns crosses nothing. One level boundary in a
bracket is a resolved critical point (`resolved` True), located by linear interpolation (in log
space when every axis value is > 0 and the grid spans more than a factor 10). Several levels
changing within one bracket (or overlapping brackets) are one unresolved row (`resolved` False):
`from` and `to` are the levels on either side, `critical` is the bracket's midpoint (geometric
on a log axis) and the CI is the bracket: the grid cannot say where, or in which order, the
levels change; use a denser grid there.

Confidence intervals. The CI of a resolved point is the hull of its bracket (the grid cannot
place it more precisely) and the 2.5-97.5% range of the crossing over bootstrap resamples of the
seeds (a resample that lacks the crossing is left out). With seeds that agree it is the bracket.

Scaling. The resolved points (gamma_m, m) at which the metric drops from m to m-1 lie on the
envelope m = C gamma^(-beta); a least-squares line through log m against log gamma_m gives beta
and C ("transitions", recommended: a fit over every run is biased by the floor of the counts).
Each bootstrap fit resamples the seeds and draws every transition point uniformly (log-uniformly
on a log axis) inside its bracket in that resample, so the CI of beta and C carries both the seed
and the grid uncertainty. The "quantile" method fits the q-quantile of the metric at each gamma
instead. `default_metric` picks the metric when none is given: weight_rank for linear students,
n_distinct otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from phasemap import summary
from phasemap.summary import scan

SEED = "seed"
OK = "ok"
MIN_SEED_SHARE = 0.5
# Priority of the knobs when several varying columns are functions of each other (e.g. with
# `temperature` swept and lr held, batch_size follows temperature): the earlier one is the axis.
PRIMARY_AXES = ("gamma", "temperature", "sigma", "lr", "width", "depth", "teacher_rank", "input_scale",
                "init_scale", "n_train", "steps", "batch_size")
Results = str | Path | pl.DataFrame | pl.LazyFrame


class AnalysisError(ValueError):
    """A question the data cannot answer as asked (unknown metric or axis, too few points)."""


def source(results: Results) -> pl.LazyFrame:
    """Every run of a results folder, URI or frame (any status), lazily; frames without a
    `status` column are all ok."""
    if isinstance(results, pl.DataFrame):
        lazy = results.lazy()
    elif isinstance(results, pl.LazyFrame):
        lazy = results
    else:
        lazy = scan(results)
    if "status" not in lazy.collect_schema().names():
        lazy = lazy.with_columns(pl.lit(OK).alias("status"))
    return lazy


def frame(results: Results, columns: list[str] | None = None, ok_only: bool = True) -> pl.DataFrame:
    """The runs (by default only those of status ok) as a DataFrame, optionally only some columns."""
    lazy = source(results)
    if ok_only:
        lazy = lazy.filter(pl.col("status") == OK)
    return (lazy.select(columns) if columns else lazy).collect()


def use_log(values: np.ndarray) -> bool:
    """Whether an axis with these values is read on a log scale: all > 0, spanning over 10x."""
    values = np.asarray(values, dtype=float)
    return bool(len(values) and (values > 0).all() and values.max() / values.min() > 10)


def varying_axes(results: Results) -> list[str]:
    """Scalar config columns that take more than one value."""
    return summary.varying_axes(source(results))


def _is_function_of(combos: pl.DataFrame, column: str, of: str) -> bool:
    """Whether `column` takes one value per value of `of` in these (distinct) rows."""
    return bool(combos.group_by(of).agg(pl.col(column).n_unique()).select(pl.col(column).max()).item() <= 1)


def _knobs(combos: pl.DataFrame, candidates: list[str], given: tuple[str, ...] = ()) -> list[str]:
    """The candidates that are not a function of a `given` column nor of a candidate kept before
    them (candidates in PRIMARY_AXES order: with lr held, temperature is kept, batch_size not)."""
    rank = {name: i for i, name in enumerate(PRIMARY_AXES)}
    kept: list[str] = []
    for c in sorted(candidates, key=lambda c: rank.get(c, len(rank))):
        if not any(_is_function_of(combos, c, a) for a in (*given, *kept)):
            kept.append(c)
    return kept


def group_columns(results: Results, axis: str, by: list[str] | None = None) -> list[str]:
    """The columns that define a group: the other varying axes, minus seeds and minus columns
    that are a function of `axis` or of another group column (e.g. batch_size when temperature
    is the axis, lr beside temperature when batch_size is held)."""
    if by is not None:
        return by
    lazy = source(results)
    others = [c for c in varying_axes(lazy) if c not in (axis, SEED)]
    if not others:
        return []
    return _knobs(lazy.select(axis, *others).unique().collect(), others, (axis,))


def independent_axes(results: Results) -> list[str]:
    """Varying axes that are not seeds and not a function of another axis, knobs first
    (gamma, temperature, sigma, ...): the default axes of a figure."""
    lazy = source(results)
    candidates = [c for c in varying_axes(lazy) if c != SEED]
    return _knobs(lazy.select(candidates).unique().collect(), candidates) if candidates else []


def default_metric(results: Results) -> str:
    """weight_rank for linear students (where rank is the symmetry that weight decay breaks),
    n_distinct (distinct neurons) otherwise."""
    lazy = source(results)
    names = lazy.collect_schema().names()
    if "activation" in names and "weight_rank" in names:
        acts = lazy.select(pl.col("activation").unique()).collect()["activation"].drop_nulls().to_list()
        if acts == ["linear"]:
            return "weight_rank"
    return "n_distinct"


def require_columns(schema: pl.Schema, metric: str | None = None, axes: tuple[str, ...] = (),
                    by: list[str] | None = None, numeric_metric: bool = True) -> None:
    """One clear AnalysisError for a metric, axis or group column that cannot be used."""
    names = schema.names()
    if metric is not None:
        if metric not in names:
            raise AnalysisError(f"metric {metric!r} is not a column of these results")
        if numeric_metric and not (schema[metric].is_numeric() or schema[metric] == pl.Boolean):
            raise AnalysisError(f"metric {metric!r} is not numeric ({schema[metric]}); use a numeric "
                                "column such as weight_rank, n_distinct or n_dead")
    for axis in axes:
        if axis == SEED:
            raise AnalysisError("seed cannot be an axis: runs that differ only in seed are pooled; "
                                "choose gamma, temperature, sigma or another swept column")
        if axis not in names:
            raise AnalysisError(f"axis {axis!r} is not a column of these results")
        if not schema[axis].is_numeric():
            raise AnalysisError(f"axis {axis!r} is not numeric ({schema[axis]}); an axis needs numbers")
    for col in by or []:
        if col not in names:
            raise AnalysisError(f"group column {col!r} (by) is not a column of these results")
        if col in axes:
            raise AnalysisError(f"{col!r} is the axis; it cannot also be a group column (by)")


@dataclass
class Curve:
    """One group's runs along the axis."""
    xs: np.ndarray        # (K,) every grid value of the group, any status
    values: np.ndarray    # (S, K) per-seed metric means over ok runs, NaN where a seed has none
    n_runs: int           # ok runs with the metric: the runs averaged
    n_excluded: int       # runs not averaged: diverged, failed, or without the metric
    share: np.ndarray     # (K,) share of the group's seeds with an ok value at each grid value


def seed_curves(data: pl.DataFrame, metric: str, axis: str, groups: list[str]) -> dict[tuple, Curve]:
    """Per group key: its Curve. `data` holds every run (a `status` column; others are excluded)."""
    seed = [SEED] if SEED in data.columns else []
    used = (pl.col("status") == OK) & pl.col(metric).is_not_null()
    agg = (data.group_by([*groups, *seed, axis])
           .agg(pl.col(metric).cast(pl.Float64).filter(used).mean().alias("m"),
                used.sum().alias("n_ok"), pl.len().alias("n")))
    out = {}
    for key, part in (agg.partition_by(groups, as_dict=True) if groups else {(): agg}).items():
        xs, x_idx = np.unique(part[axis].to_numpy().astype(float), return_inverse=True)
        _, s_idx = np.unique(part[SEED].to_numpy() if seed else np.zeros(part.height), return_inverse=True)
        values = np.full((s_idx.max() + 1, len(xs)), np.nan)
        values[s_idx, x_idx] = part["m"].to_numpy().astype(float)
        n_ok, n = int(part["n_ok"].sum()), int(part["n"].sum())
        out[key] = Curve(xs, values, n_ok, n - n_ok, (~np.isnan(values)).mean(axis=0))
    return out


def _mean(values: np.ndarray) -> np.ndarray:
    """Seed means (over axis -2), NaN where no seed has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-2)


def _boundary_crossings(u: np.ndarray, curves: np.ndarray, boundary: float):
    """Where curves (B, K) cross `boundary`, indexed by the first grid value past it:
    direction (B, K) (+1 upward, -1 downward, 0 none), bracket start p (B, K) (the last grid value
    strictly on the other side) and the crossing point in u (B, K). Values on the boundary (or
    NaN) belong to neither side, so a crossing through them has a wider bracket."""
    s = np.nan_to_num(np.sign(curves - boundary))
    k = np.arange(s.shape[1])
    last = np.maximum.accumulate(np.where(s != 0, k, -1), axis=1)
    p = np.concatenate([np.full((len(s), 1), -1), last[:, :-1]], axis=1)
    pc = np.maximum(p, 0)
    direction = np.where((p >= 0) & (s != 0) & (np.take_along_axis(s, pc, 1) == -s), s, 0).astype(int)
    d = curves - boundary
    dp = np.take_along_axis(d, pc, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        interp = u[pc] + dp / (dp - d) * (u[k] - u[pc])
    between = (u[np.minimum(pc + 1, len(k) - 1)] + u[np.maximum(k - 1, 0)]) / 2   # mid of the on-boundary run
    return direction, p, np.where(p == k - 1, interp, between)


def crossings(x: np.ndarray, mean: np.ndarray, log: bool) -> list[tuple[int, int, float, int, int]]:
    """(from, to, x, p, q) for each level boundary L -+ 1/2 that the curve mean(x) crosses:
    the crossing point x and its bracket x[p] .. x[q] (p < q), sorted by bracket."""
    u = np.log(x) if log else np.asarray(x, float)
    mean = np.asarray(mean, float)
    out = []
    if len(mean) < 2:
        return out
    for level in range(math.ceil(mean.min() - 0.5), math.floor(mean.max() - 0.5) + 1):
        direction, p, point = (a[0] for a in _boundary_crossings(u, mean[None, :], level + 0.5))
        for q in np.flatnonzero(direction):
            up = direction[q] > 0
            value = float(np.exp(point[q]) if log else point[q])
            out.append((level if up else level + 1, level + 1 if up else level, value, int(p[q]), int(q)))
    return sorted(out, key=lambda c: (c[3], c[4], -c[0] if c[1] < c[0] else c[0]))


def _clusters(found: list[tuple]) -> list[list[tuple]]:
    """Crossings whose brackets overlap (by more than a shared end) belong together."""
    clusters: list[list[tuple]] = []
    for c in found:
        if clusters and c[3] < max(o[4] for o in clusters[-1]):
            clusters[-1].append(c)
        else:
            clusters.append([c])
    return clusters


def _resampled(u: np.ndarray, boots: np.ndarray, boundary: float, direction: int, near: float):
    """Per resample (B, K): the crossing of `boundary` in `direction` nearest to `near` (in u),
    as (point, bracket start, bracket end) in u; NaN where a resample lacks the crossing."""
    dirs, p, point = _boundary_crossings(u, boots, boundary)
    hit = dirs == direction
    dist = np.where(hit, np.abs(point - near), np.inf)
    q = dist.argmin(axis=1)
    rows = np.arange(len(boots))
    found = hit[rows, q]
    nan = np.full(len(boots), np.nan)
    return (np.where(found, point[rows, q], nan), np.where(found, u[np.maximum(p[rows, q], 0)], nan),
            np.where(found, u[q], nan))


def _resample(values: np.ndarray, n_boot: int, rng) -> np.ndarray | None:
    """(n_boot, K) seed-mean curves over bootstrap resamples of the seeds (None with one seed),
    NaN where a resample has no seed with a value."""
    n_seeds = values.shape[0]
    if n_seeds < 2 or not n_boot:
        return None
    picks = rng.integers(0, n_seeds, (n_boot, n_seeds))
    counts = np.zeros((n_boot, n_seeds))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_seeds), picks.ravel()), 1.0)   # times each seed drawn
    have = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.where(have, values, 0.0)) / (counts @ have)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _notes(axis: str, curve: Curve, indices, n_seeds: int, min_seed_share: float) -> str:
    """What the reader must know about these grid values: seeds missing, values not used."""
    parts = []
    for i in indices:
        k = round(curve.share[i] * n_seeds)
        if k < n_seeds:
            unused = f", not used (under {min_seed_share:.0%})" if curve.share[i] < min_seed_share or k == 0 else ""
            parts.append(f"{axis}={_fmt(curve.xs[i])}: {k}/{n_seeds} seeds ok{unused}")
    return "; ".join(parts)


def _level(value: float) -> int:
    return math.floor(value + 0.5)


def group_transitions(curve: Curve, axis: str, log: bool, n_boot: int, rng,
                      min_seed_share: float = MIN_SEED_SHARE) -> list[dict]:
    """Rows (from, to, critical, ci_low, ci_high, resolved, note) of one group's curve."""
    n_seeds = curve.values.shape[0]
    kept = np.flatnonzero((curve.share >= min_seed_share) & (curve.share > 0))
    xs, values = curve.xs[kept], curve.values[:, kept]
    mean = _mean(values)
    u = np.log(xs) if log else xs
    boots = _resample(values, n_boot, rng)
    back = (lambda v: np.exp(v)) if log else (lambda v: v)
    rows, covered = [], np.zeros(len(curve.xs), bool)
    for cluster in _clusters(crossings(xs, mean, log)):
        p, q = min(c[3] for c in cluster), max(c[4] for c in cluster)
        lo, hi = float(xs[p]), float(xs[q])
        if len(cluster) == 1:
            level_from, level_to, point, _, _ = cluster[0]
            low, high = lo, hi
            if boots is not None:
                near = math.log(point) if log else point
                sample = _resampled(u, boots, (level_from + level_to) / 2, 1 if level_to > level_from else -1, near)[0]
                sample = back(sample[~np.isnan(sample)])
                if len(sample):
                    low, high = np.percentile(sample, [2.5, 97.5])
            row = {"from": level_from, "to": level_to, "critical": point,
                   "ci_low": min(float(low), lo), "ci_high": max(float(high), hi), "resolved": True}
        else:
            down = mean[q] < mean[p]
            level_from = max(c[0] for c in cluster) if down else min(c[0] for c in cluster)
            level_to = min(c[1] for c in cluster) if down else max(c[1] for c in cluster)
            row = {"from": level_from, "to": level_to, "critical": float(back((u[p] + u[q]) / 2)),
                   "ci_low": lo, "ci_high": hi, "resolved": False}
        covered[kept[p] + 1:kept[q]] = True
        row["note"] = _notes(axis, curve, range(kept[p], kept[q] + 1), n_seeds, min_seed_share)
        rows.append(row)
    # grid values not used, where no bracket spans them: say that no boundary was located there
    skipped = np.setdiff1d(np.arange(len(curve.xs)), kept)
    for run in np.split(skipped, np.flatnonzero(np.diff(skipped) > 1) + 1) if len(skipped) else []:
        if covered[run].all():
            continue
        before, after = kept[kept < run[0]], kept[kept > run[-1]]
        level_from = _level(mean[len(before) - 1]) if len(before) else None
        level_to = _level(mean[len(before)]) if len(after) else None
        rows.append({"from": level_from, "to": level_to, "critical": None,
                     "ci_low": float(curve.xs[before[-1] if len(before) else run[0]]),
                     "ci_high": float(curve.xs[after[0] if len(after) else run[-1]]), "resolved": False,
                     "note": _notes(axis, curve, run, n_seeds, min_seed_share)
                     + "; no boundary located here"})
    return rows


def _load(results: Results, metric: str | None, axis: str, by: list[str] | None = None,
          extra: tuple[str, ...] = ()) -> tuple[pl.DataFrame, str, list[str]]:
    """One read of the columns needed (every status); checked metric and axis; the group columns."""
    lazy = source(results)
    schema = lazy.collect_schema()
    metric = metric or default_metric(lazy)
    require_columns(schema, metric, (axis,), by)
    others = by if by is not None else [c for c in varying_axes(lazy) if c not in (axis, SEED)]
    columns = [c for c in dict.fromkeys([*others, SEED, axis, metric, "status", *extra]) if c in schema.names()]
    data = lazy.select(columns).collect()
    groups = by if by is not None else (
        _knobs(data.select(axis, *others).unique(), others, (axis,)) if others else [])
    ok = data.filter((pl.col("status") == OK) & pl.col(metric).is_not_null())
    if ok.height == 0:
        raise AnalysisError(f"no runs with status ok and a value of {metric} in these results")
    if data[axis].n_unique() < 2:
        raise AnalysisError(f"axis {axis!r} has a single value; nothing changes along it")
    return data.drop([c for c in others if c not in groups and c not in extra]), metric, groups


CRITICAL_SCHEMA = {"from": pl.Int64, "to": pl.Int64, "critical": pl.Float64, "ci_low": pl.Float64,
                   "ci_high": pl.Float64, "resolved": pl.Boolean, "n_runs": pl.Int64,
                   "n_excluded": pl.Int64, "note": pl.String}


def critical(results: Results, metric: str, axis: str, by: list[str] | None = None, n_boot: int = 200,
             seed: int = 0, min_seed_share: float = MIN_SEED_SHARE) -> pl.DataFrame:
    """Every point along `axis` where `metric` changes level, per group, with honest CIs.

    Columns: the group's values, `from`, `to`, `critical`, `ci_low`, `ci_high`, `resolved`,
    `n_runs` (ok runs averaged), `n_excluded` (diverged or failed runs of the group), `note`.

        critical("results/linear-rank", "weight_rank", "gamma").filter(pl.col("resolved"))
    """
    data, metric, groups = _load(results, metric, axis, by)
    log = use_log(data[axis].unique().to_numpy().astype(float))
    rng = np.random.default_rng(seed)
    rows = []
    for key, curve in seed_curves(data, metric, axis, groups).items():
        for row in group_transitions(curve, axis, log, n_boot, rng, min_seed_share):
            rows.append({**dict(zip(groups, key)), **row, "n_runs": curve.n_runs, "n_excluded": curve.n_excluded})
    schema = {g: data.schema[g] for g in groups} | CRITICAL_SCHEMA
    return pl.DataFrame(rows, schema=schema).sort([*groups, "critical", "ci_low"], nulls_last=True)


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """beta, C of y = C x^(-beta) by least squares in log-log."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return -float(slope), float(np.exp(intercept))


@dataclass
class ScalingFit:
    """The bound metric <= C axis^(-beta) fitted to the runs, with bootstrap fits."""
    metric: str
    axis: str
    method: str
    beta: float
    C: float
    points: np.ndarray      # (n, 2) the fitted points (axis value, metric)
    points_ci: np.ndarray   # (n, 2) each point's CI along the axis (transitions) or its own value
    fits: np.ndarray        # (n_fits, 2) (beta, C) of the bootstrap fits
    runs: pl.DataFrame      # the ok runs: axis, metric (and seed, width)
    n_excluded: int         # runs not used: diverged, failed or without the metric
    unresolved: list[dict]  # transitions left out of the fit: several levels in one bracket


def _envelope(curve: Curve, axis: str, n_boot: int, rng, min_seed_share: float):
    """Points (gamma_m, m) of resolved m -> m-1 drops, their CIs, the unresolved rows, and
    per-bootstrap copies of the gamma_m (n_boot, n) drawn within each resample's bracket."""
    rows = group_transitions(curve, axis, True, n_boot, rng, min_seed_share)
    points = [r for r in rows if r["resolved"] and r["to"] == r["from"] - 1 and r["from"] > 0]
    unresolved = [{k: r[k] for k in ("from", "to", "ci_low", "ci_high", "note")} for r in rows if not r["resolved"]]
    if len(points) < 2:
        return points, unresolved, None
    kept = np.flatnonzero((curve.share >= min_seed_share) & (curve.share > 0))
    u, values = np.log(curve.xs[kept]), curve.values[:, kept]
    boots = _resample(values, n_boot, rng)
    draws = np.empty((n_boot, len(points)))
    for i, r in enumerate(points):
        lo, hi = np.full(n_boot, math.log(r["ci_low"])), np.full(n_boot, math.log(r["ci_high"]))
        if boots is not None:    # the bracket in each resample, where the resample has the crossing
            _, b_lo, b_hi = _resampled(u, boots, r["from"] - 0.5, -1, math.log(r["critical"]))
            has = ~np.isnan(b_lo)
            lo[has], hi[has] = b_lo[has], b_hi[has]
        draws[:, i] = np.exp(rng.uniform(lo, hi))
    return points, unresolved, draws


def scaling_fit(results: Results, metric: str | None = None, axis: str = "gamma", method: str = "transitions",
                quantile: float = 0.9, n_boot: int = 200, seed: int = 0,
                min_seed_share: float = MIN_SEED_SHARE) -> ScalingFit:
    """Fit the bound metric <= C axis^(-beta) (metric: `default_metric` when None)."""
    data, metric, _ = _load(results, metric, axis, [], extra=("width",))
    ok = data.filter((pl.col("status") == OK) & pl.col(metric).is_not_null())
    if (data[axis] <= 0).any():
        raise AnalysisError(f"axis {axis!r} has values <= 0; a power law needs positive values")
    rng = np.random.default_rng(seed)
    # with several widths the envelope is that of the widest students
    fit_data = data.filter(pl.col("width") == data["width"].max()) if "width" in data.columns else data
    (curve,) = seed_curves(fit_data, metric, axis, []).values()
    unresolved: list[dict] = []
    if method == "transitions":
        points, unresolved, draws = _envelope(curve, axis, n_boot, rng, min_seed_share)
        if len(points) < 2:
            left = "; ".join(f"{r['from']}->{r['to']} between {_fmt(r['ci_low'])} and {_fmt(r['ci_high'])}"
                             for r in unresolved)
            raise AnalysisError(f"{metric} has {len(points)} resolved single-level drops along {axis}, "
                                f"fewer than the two a line needs" + (f" (unresolved: {left})" if left else "")
                                + f"; use a denser {axis} grid where the level changes")
        xs = np.array([r["critical"] for r in points])
        ys = np.array([r["from"] for r in points], dtype=float)
        points_ci = np.array([[r["ci_low"], r["ci_high"]] for r in points])
        fits = [_fit_line(d, ys) for d in draws]
    elif method == "quantile":
        kept = curve.xs[(curve.share >= min_seed_share) & (curve.share > 0)]
        q = (fit_data.filter((pl.col("status") == OK) & pl.col(metric).is_not_null() & pl.col(axis).is_in(kept))
             .group_by(axis).agg(pl.col(metric).cast(pl.Float64).quantile(quantile)).sort(axis)
             .filter(pl.col(metric) > 0))
        if q.height < 2:
            raise AnalysisError(f"fewer than two {axis} values with {metric} > 0")
        xs, ys = q[axis].to_numpy().astype(float), q[metric].to_numpy()
        points_ci = np.stack([xs, xs], axis=1)
        fits = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(xs), len(xs))
            if len(set(idx)) >= 2:
                fits.append(_fit_line(xs[idx], ys[idx]))
    else:
        raise AnalysisError(f"unknown method {method!r}; use transitions or quantile")
    beta, c = _fit_line(xs, ys)
    return ScalingFit(metric, axis, method, beta, c, np.stack([xs, ys], axis=1), points_ci,
                      np.array(fits).reshape(-1, 2), ok.drop("status"), data.height - ok.height, unresolved)


def scaling(results: Results, metric: str | None = None, axis: str = "gamma", method: str = "transitions",
            quantile: float = 0.9, n_boot: int = 200, seed: int = 0,
            min_seed_share: float = MIN_SEED_SHARE) -> dict:
    """Fit the bound metric <= C axis^(-beta); count runs above it; test saturation in width.

        scaling("results/power-law")["beta_ci"]   # weight_rank for linear students
    """
    fit = scaling_fit(results, metric, axis, method, quantile, n_boot, seed, min_seed_share)
    runs = fit.runs
    bound = fit.C * runs[axis].to_numpy().astype(float) ** (-fit.beta)
    violations = int((runs[fit.metric].to_numpy() > bound * (1 + 1e-9) + 1e-9).sum())

    def interval(values: np.ndarray, estimate: float) -> list[float]:
        if not len(values):
            return [estimate, estimate]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    return {
        "metric": fit.metric, "axis": axis, "method": fit.method, "beta": fit.beta, "C": fit.C,
        "beta_ci": interval(fit.fits[:, 0], fit.beta), "C_ci": interval(fit.fits[:, 1], fit.C),
        "points": fit.points.tolist(), "points_ci": fit.points_ci.tolist(), "unresolved": fit.unresolved,
        "n_runs": runs.height, "n_excluded": fit.n_excluded, "violations": violations,
        "width_saturation": width_saturation(runs, fit.metric, axis),
    }


def width_saturation(runs: pl.DataFrame, metric: str, axis: str, tolerance: float = 0.1) -> dict | None:
    """At each axis value, does the seed-mean metric stop growing between the two largest widths?"""
    if "width" not in runs.columns or runs["width"].n_unique() < 2:
        return None
    widths = sorted(runs["width"].unique().to_list())[-2:]
    table = (runs.filter(pl.col("width").is_in(widths))
             .group_by(axis, "width").agg(pl.col(metric).cast(pl.Float64).mean())
             .pivot(on="width", index=axis, values=metric).sort(axis))
    small, large = table[str(widths[0])].to_numpy(), table[str(widths[1])].to_numpy()
    growth = (large - small) / np.maximum(small, 1.0)
    return {"widths": widths, "tolerance": tolerance,
            "saturated": bool(np.nanmax(growth) <= tolerance),
            "max_relative_growth": float(np.nanmax(growth))}
