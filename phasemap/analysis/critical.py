"""Critical points: where a group's seed-mean curve crosses a level boundary, with a bracket and a CI.

The method is described in `phasemap.analysis`; `group_transitions` is also the scaling fit's
source of transition points.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl

from phasemap.analysis.runs import MIN_SEED_SHARE, Curve, Results, load, seed_curves, use_log


def seed_mean(values: np.ndarray) -> np.ndarray:
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


def resampled_crossing(u: np.ndarray, boots: np.ndarray, boundary: float, direction: int, near: float):
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


def resample_seeds(values: np.ndarray, n_boot: int, rng) -> np.ndarray | None:
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


def fmt(v: float) -> str:
    return f"{v:.4g}"


def seed_notes(axis: str, curve: Curve, indices, n_seeds: int, min_seed_share: float) -> str:
    """What the reader must know about these grid values: seeds missing, values not used."""
    parts = []
    for i in indices:
        k = round(curve.share[i] * n_seeds)
        if k < n_seeds:
            unused = f", not used (under {min_seed_share:.0%})" if curve.share[i] < min_seed_share or k == 0 else ""
            parts.append(f"{axis}={fmt(curve.xs[i])}: {k}/{n_seeds} seeds ok{unused}")
    return "; ".join(parts)


def _level(value: float) -> int:
    return math.floor(value + 0.5)


def group_transitions(curve: Curve, axis: str, log: bool, n_boot: int, rng,
                      min_seed_share: float = MIN_SEED_SHARE) -> list[dict]:
    """Rows (from, to, critical, ci_low, ci_high, resolved, note) of one group's curve."""
    n_seeds = curve.values.shape[0]
    kept = np.flatnonzero((curve.share >= min_seed_share) & (curve.share > 0))
    xs, values = curve.xs[kept], curve.values[:, kept]
    mean = seed_mean(values)
    u = np.log(xs) if log else xs
    boots = resample_seeds(values, n_boot, rng)
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
                sample = resampled_crossing(u, boots, (level_from + level_to) / 2, 1 if level_to > level_from else -1, near)[0]
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
        row["note"] = seed_notes(axis, curve, range(kept[p], kept[q] + 1), n_seeds, min_seed_share)
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
                     "note": seed_notes(axis, curve, run, n_seeds, min_seed_share)
                     + "; no boundary located here"})
    return rows


def _flat(curve: Curve, metric: str) -> dict:
    """The row of a group whose seed mean never changes level: said, not left out."""
    mean = seed_mean(curve.values)
    levels = sorted({_level(v) for v in mean[~np.isnan(mean)]})
    level = levels[0] if len(levels) == 1 else None
    stays = f"stays at {level}" if level is not None else "has no usable values"
    return {"from": level, "to": level, "critical": None, "ci_low": float(curve.xs.min()),
            "ci_high": float(curve.xs.max()), "resolved": False,
            "note": f"no transition: the seed mean of {metric} {stays} from {fmt(curve.xs.min())} to {fmt(curve.xs.max())}"}


CRITICAL_SCHEMA = {"from": pl.Int64, "to": pl.Int64, "critical": pl.Float64, "ci_low": pl.Float64,
                   "ci_high": pl.Float64, "resolved": pl.Boolean, "n_runs": pl.Int64,
                   "n_excluded": pl.Int64, "n_unsettled": pl.Int64, "note": pl.String}


class UnsettledRuns(UserWarning):
    """Runs in a critical point's bracket whose class was still changing when training ended."""


def _unsettled(data: pl.DataFrame, groups: list[str], axis: str, row: dict) -> int | None:
    """Runs of the row's group with the axis in its CI whose class changed over the last 10% of
    training (settled false); None for results written before phasemap measured `settled`."""
    if "settled" not in data.columns or row["ci_low"] is None:
        return None
    near = data.filter(pl.col(axis).is_between(row["ci_low"], row["ci_high"]) & (pl.col("settled") == False))  # noqa: E712
    for g in groups:
        near = near.filter(pl.col(g).is_null() if row[g] is None else pl.col(g) == row[g])
    return near.height


def critical(results: Results, metric: str, axis: str, by: list[str] | None = None, n_boot: int = 200,
             seed: int = 0, min_seed_share: float = MIN_SEED_SHARE) -> pl.DataFrame:
    """Every point along `axis` where `metric` changes level, per group, with honest CIs.

    Columns: the group's values, `from`, `to`, `critical`, `ci_low`, `ci_high`, `resolved`,
    `n_runs` (ok runs averaged), `n_excluded` (diverged or failed runs of the group),
    `n_unsettled` (runs in the CI whose class was still changing over the last 10% of training:
    critical slowing down biases a boundary they sit on; null for results without `settled`),
    `note`. An UnsettledRuns warning names how many rows have such runs.

        critical("results/linear-rank", "weight_rank", "gamma").filter(pl.col("resolved"))
    """
    data, metric, groups, _ = load(results, metric, axis, by, extra=("settled",))   # controls left out: warned
    log = use_log(data[axis].unique().to_numpy().astype(float))
    rng = np.random.default_rng(seed)
    rows = []
    for key, curve in seed_curves(data, metric, axis, groups).items():
        for row in group_transitions(curve, axis, log, n_boot, rng, min_seed_share) or [_flat(curve, metric)]:
            row = {**dict(zip(groups, key)), **row, "n_runs": curve.n_runs, "n_excluded": curve.n_excluded}
            rows.append({**row, "n_unsettled": _unsettled(data, groups, axis, row)})
    unsettled = [r for r in rows if r["n_unsettled"]]
    if unsettled:
        warnings.warn(f"{len(unsettled)} critical point(s) have runs in their CI whose class was still changing over "
                      f"the last 10% of training ({sum(r['n_unsettled'] for r in unsettled)} runs, column "
                      "n_unsettled): train longer before trusting those boundaries", UnsettledRuns, stacklevel=2)
    schema = {g: data.schema[g] for g in groups} | CRITICAL_SCHEMA
    return pl.DataFrame(rows, schema=schema).sort([*groups, "critical", "ci_low"], nulls_last=True)
