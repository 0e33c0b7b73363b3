"""The space-quantization bound metric <= C axis^(-beta): fitted through the resolved transitions
(or a per-value quantile), with bootstrap CIs that carry the seeds and the grid, and the width test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from phasemap.analysis.critical import fmt, group_transitions, resample_seeds, resampled_crossing
from phasemap.analysis.runs import MIN_SEED_SHARE, OK, AnalysisError, Curve, Results, load, seed_curves


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
    n_controls: int = 0     # runs at axis <= 0 (gamma = 0 controls) left out of the log axis

    def interval(self, column: int) -> list[float]:
        """The 95% bootstrap interval of beta (column 0) or C (1); the estimate twice without fits."""
        if not len(self.fits):
            estimate = self.beta if column == 0 else self.C
            return [estimate, estimate]
        return [float(np.percentile(self.fits[:, column], 2.5)), float(np.percentile(self.fits[:, column], 97.5))]


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
    boots = resample_seeds(values, n_boot, rng)
    draws = np.empty((n_boot, len(points)))
    for i, r in enumerate(points):
        lo, hi = np.full(n_boot, math.log(r["ci_low"])), np.full(n_boot, math.log(r["ci_high"]))
        if boots is not None:    # the bracket in each resample, where the resample has the crossing
            _, b_lo, b_hi = resampled_crossing(u, boots, r["from"] - 0.5, -1, math.log(r["critical"]))
            has = ~np.isnan(b_lo)
            lo[has], hi[has] = b_lo[has], b_hi[has]
        draws[:, i] = np.exp(rng.uniform(lo, hi))
    return points, unresolved, draws


def scaling_fit(results: Results, metric: str | None = None, axis: str = "gamma", method: str = "transitions",
                quantile: float = 0.9, n_boot: int = 200, seed: int = 0,
                min_seed_share: float = MIN_SEED_SHARE) -> ScalingFit:
    """Fit the bound metric <= C axis^(-beta) (metric: `default_metric` when None)."""
    data, metric, _, controls = load(results, metric, axis, [], extra=("width",))
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
            left = "; ".join(f"{r['from']}->{r['to']} between {fmt(r['ci_low'])} and {fmt(r['ci_high'])}"
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
                      np.array(fits).reshape(-1, 2), ok.drop("status"), data.height - ok.height, unresolved,
                      controls)


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

    return {
        "metric": fit.metric, "axis": axis, "method": fit.method, "beta": fit.beta, "C": fit.C,
        "beta_ci": fit.interval(0), "C_ci": fit.interval(1),
        "points": fit.points.tolist(), "points_ci": fit.points_ci.tolist(), "unresolved": fit.unresolved,
        "n_runs": runs.height, "n_excluded": fit.n_excluded, "n_controls": fit.n_controls,
        "violations": violations,
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
