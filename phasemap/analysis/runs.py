"""The runs an analysis reads: one lazy source per results folder or frame, its checks, its groups,
and each group's per-seed curve along the axis (ok runs averaged, the others counted)."""

from __future__ import annotations

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
    n_dos for transformers (their attention layers have no neurons to count), n_distinct
    (distinct neurons) otherwise."""
    lazy = source(results)
    names = lazy.collect_schema().names()
    if "family" in names:
        families = lazy.select(pl.col("family").unique()).collect()["family"].to_list()
        if families == ["transformer"]:
            return "n_dos"
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
    parts = agg.partition_by(groups, as_dict=True) if groups else {(): agg}
    # in a fixed order (polars' group order is not), so that bootstrap draws do not vary run to run
    for key, part in sorted(parts.items(), key=lambda item: tuple((v is None, v) for v in item[0])):
        xs, x_idx = np.unique(part[axis].to_numpy().astype(float), return_inverse=True)
        _, s_idx = np.unique(part[SEED].to_numpy() if seed else np.zeros(part.height), return_inverse=True)
        values = np.full((s_idx.max() + 1, len(xs)), np.nan)
        values[s_idx, x_idx] = part["m"].to_numpy().astype(float)
        n_ok, n = int(part["n_ok"].sum()), int(part["n"].sum())
        out[key] = Curve(xs, values, n_ok, n - n_ok, (~np.isnan(values)).mean(axis=0))
    return out


class ControlsLeftOut(UserWarning):
    """Runs at axis value <= 0 (e.g. gamma = 0 controls) left out of a log axis."""


def _spread(steps: np.ndarray) -> float:
    """Relative spread of grid steps (0 for an evenly spaced grid)."""
    return float(np.std(steps) / np.mean(steps))


def drop_log_controls(data: pl.DataFrame, axis: str) -> tuple[pl.DataFrame, int]:
    """Leave out runs at axis <= 0 when the positive values span more than a factor 10 and are
    spaced more evenly in log than in linear scale (gamma in logspace plus gamma = 0 controls);
    return the rest and how many were left out."""
    values = data[axis].unique().drop_nulls().sort().to_numpy().astype(float)
    positive = values[values > 0]
    if not (values <= 0).any() or len(positive) < 2 or not use_log(positive):
        return data, 0
    if len(positive) >= 3 and _spread(np.diff(np.log(positive))) >= _spread(np.diff(positive)):
        return data, 0      # evenly spaced, e.g. linspace from 0: a linear axis that includes its zero
    kept = data.filter(pl.col(axis) > 0)
    dropped = data.height - kept.height
    warnings.warn(f"{dropped} runs at {axis} <= 0 (controls) left out: {axis} is read on a log axis "
                  f"from {positive.min():.4g} to {positive.max():.4g}", ControlsLeftOut, stacklevel=3)
    return kept, dropped


def load(results: Results, metric: str | None, axis: str, by: list[str] | None = None,
         extra: tuple[str, ...] = ()) -> tuple[pl.DataFrame, str, list[str], int]:
    """One read of the columns needed (every status); checked metric and axis; the group columns;
    how many runs at axis <= 0 were left out of a log axis (`drop_log_controls`)."""
    lazy = source(results)
    schema = lazy.collect_schema()
    metric = metric or default_metric(lazy)
    require_columns(schema, metric, (axis,), by)
    others = by if by is not None else [c for c in varying_axes(lazy) if c not in (axis, SEED, metric)]
    columns = [c for c in dict.fromkeys([*others, SEED, axis, metric, "status", *extra]) if c in schema.names()]
    data, controls = drop_log_controls(lazy.select(columns).collect(), axis)
    groups = by if by is not None else (
        _knobs(data.select(axis, *others).unique(), others, (axis,)) if others else [])
    ok = data.filter((pl.col("status") == OK) & pl.col(metric).is_not_null())
    if ok.height == 0:
        raise AnalysisError(f"no runs with status ok and a value of {metric} in these results")
    if data[axis].n_unique() < 2:
        raise AnalysisError(f"axis {axis!r} has a single value; nothing changes along it")
    return data.drop([c for c in others if c not in groups and c not in extra]), metric, groups, controls
