"""Training dynamics from the traces of runs with train.record: when symmetry breaks, when the loss
drops, and whether the two coincide (the paper's symmetry-to-symmetry learning).

    dynamics("results/fig2")                       # one row per recorded run
    dynamics("results/fig2", where={"gamma": 0.0})

Breaks. deltas[j] at a record step is the distance between the j-th and (j+1)-th neurons of the
first hidden layer sorted by norm (for attention, head 0's Δ_i of the first layer), as the runs
table's `deltas`. Pair j breaks at the first record step where deltas[j] >= the run's
delta_threshold after a record step where it was below: a pair that starts above the threshold
never broke from a symmetric state and gives no break. `breaks` lists one step per breaking pair
(several pairs can break at one step), in order.

Drops. Between consecutive record steps t_k < t_(k+1) (t > 0) the loss falls at the rate
r_k = -(ln L_(k+1) - ln L_k) / (ln t_(k+1) - ln t_k), the slope of the loss curve on log-log
axes (a power law L ~ t^-a falls at rate a everywhere; a plateau has rate 0). A drop is a maximal
run of consecutive intervals with r_k >= `min_rate` that takes the loss to a new low, at least
a factor `min_fall` below the lowest loss recorded before it (so the recovery from a spike is no
drop), placed at the end t_(k+1) of its steepest interval, the first record step that sees it. Runs of a few noisy intervals whose losses
barely move are no drop, and one long fall is one drop. The train loss is used: it is what the
optimizer descends. A diverged run is read up to its last finite loss.

Coincidence. A break at step b and a drop at step d coincide when |log10(b / d)| is at most
`window` decades, or the record spacing there (log10(t_(k+1) / t_k), the finest a step can be
placed) when that is wider. `coincident` is the fraction of breaks that coincide with some drop,
`explained` the fraction of drops that coincide with some break; either is null when there is
nothing to count. `chance` is what `coincident` would be for breaks placed at random: the share
of the recorded log-step range (from the first recorded step > 0 to the last) that lies within
`window` decades of a drop. Coincidence means something only well above chance.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from phasemap import store
from phasemap.analysis.runs import AnalysisError, Results, frame, independent_axes

WINDOW = 0.1        # decades
MIN_RATE = 1.0      # log-log slope of the loss at a drop
MIN_FALL = 2.0      # factor by which the loss falls over a drop

DYNAMICS_SCHEMA = {
    "run_id": pl.String, "breaks": pl.List(pl.Int64), "drops": pl.List(pl.Int64), "n_breaks": pl.Int64,
    "n_drops": pl.Int64, "coincident": pl.Float64, "explained": pl.Float64, "chance": pl.Float64,
    "settled": pl.Boolean,
}


def breaking_times(steps: np.ndarray, deltas: np.ndarray, threshold: float) -> list[int]:
    """Steps at which each norm-neighbour pair first rises to `threshold` from below, sorted.

    steps (S,) increasing; deltas (S, P), NaN where not measured (a diverged model).
    """
    out = []
    below = deltas < threshold                                  # NaN compares False: not below
    above = deltas >= threshold
    for j in range(deltas.shape[1]):
        was_below = np.logical_or.accumulate(below[:, j])
        rise = np.flatnonzero(above[1:, j] & was_below[:-1]) + 1
        if rise.size:
            out.append(int(steps[rise[0]]))
    return sorted(out)


def loss_rates(steps: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(S - 1,) -d ln L / d ln t between consecutive record steps (NaN where L or t is not > 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t, log_l = np.log(steps.astype(float)), np.log(loss)
        rate = -np.diff(log_l) / np.diff(log_t)
    return np.where(np.isfinite(rate), rate, np.nan)


def drop_times(steps: np.ndarray, loss: np.ndarray, min_rate: float = MIN_RATE, min_fall: float = MIN_FALL) -> list[int]:
    """The steps of the loss drops: runs of intervals falling at a log-log rate >= min_rate to a new
    low, min_fall below the lowest loss before them, each placed at the end of its steepest interval."""
    rate = loss_rates(steps, loss)
    fast = np.nan_to_num(rate, nan=-np.inf) >= min_rate
    out = []
    k = 0
    while k < len(rate):
        if not fast[k]:
            k += 1
            continue
        end = k
        while end + 1 < len(rate) and fast[end + 1]:
            end += 1
        if np.nanmin(loss[:k + 1]) / loss[end + 1] >= min_fall:
            steepest = k + int(np.argmax(rate[k:end + 1]))
            out.append(int(steps[steepest + 1]))
        k = end + 1
    return out


def chance(drops: list[int], steps: np.ndarray, window: float = WINDOW) -> float | None:
    """The share of the log-step range (first recorded step > 0 to the last) within `window`
    decades of a drop: the coincidence of breaks placed at random."""
    positive = steps[steps > 0]
    if len(positive) < 2:
        return None
    lo, hi = math.log10(positive[0]), math.log10(positive[-1])
    if hi <= lo:
        return None
    spans = sorted((max(lo, math.log10(d) - window), min(hi, math.log10(d) + window)) for d in drops)
    covered, reach = 0.0, lo
    for a, b in spans:
        a = max(a, reach)
        if b > a:
            covered += b - a
            reach = b
    return covered / (hi - lo)


def _spacing(steps: np.ndarray, step: int) -> float:
    """Decades between `step` and the record step before it (0 for the first)."""
    k = int(np.searchsorted(steps, step))
    return math.log10(steps[k] / steps[k - 1]) if 0 < k < len(steps) and steps[k - 1] > 0 else 0.0


def coincidence(events: list[int], others: list[int], steps: np.ndarray, window: float = WINDOW) -> float | None:
    """The fraction of `events` within max(window, record spacing) decades of one of `others`."""
    if not events:
        return None
    if not others:
        return 0.0
    near = 0
    for e in events:
        reach = max(window, _spacing(steps, e))
        near += any(abs(math.log10(e / o)) <= reach + 1e-12 for o in others)
    return near / len(events)


def _where(data: pl.DataFrame, where: dict[str, object]) -> pl.DataFrame:
    for key, value in where.items():
        if key not in data.columns:
            raise AnalysisError(f"--where {key}: no such column")
        column = pl.col(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and data.schema[key].is_numeric():
            data = data.filter((column - value).abs() <= 1e-9 * max(abs(value), 1e-300))
        else:
            data = data.filter(column.cast(pl.String) == str(value))
    return data


def recorded_runs(results: Results, run: str | None = None, where: dict[str, object] | None = None) -> pl.DataFrame:
    """The runs (any status) that have traces, after --run / --where; an AnalysisError if none."""
    runs = frame(results, ok_only=False)
    if "record" not in runs.columns or runs["record"].null_count() == runs.height:
        raise AnalysisError(f"{results}: no run recorded its training; set train.record ({{log: N}} or "
                            "{every: K}) in the sweep file and run it again")
    runs = runs.filter(pl.col("record").is_not_null())
    if run is not None:
        runs = runs.filter(pl.col("run_id").str.starts_with(run))
        if runs.height == 0:
            raise AnalysisError(f"--run {run}: no recorded run has that run_id")
    runs = _where(runs, where or {})
    if runs.height == 0:
        raise AnalysisError("no recorded run matches --where " + ", ".join(f"{k}={v}" for k, v in (where or {}).items()))
    return runs


def traces(results: Results, runs: pl.DataFrame) -> pl.DataFrame:
    """The trace rows of these runs, sorted by run_id and step."""
    if isinstance(results, (pl.DataFrame, pl.LazyFrame)):
        raise AnalysisError("traces are read from a results folder, not a frame")
    return store.read_traces(results, set(runs["run_id"].to_list()))


def run_dynamics(trace: pl.DataFrame, threshold: float, window: float = WINDOW, min_rate: float = MIN_RATE,
                 min_fall: float = MIN_FALL) -> dict:
    """Breaks, drops, their coincidence and its chance level for one run's trace rows (sorted by
    step), read up to the last row before the loss stops being finite (a diverged run)."""
    loss = trace["train_loss"].fill_null(np.nan).to_numpy()
    finite = np.isfinite(loss)
    last = len(loss) if finite.all() else int(np.argmin(finite))
    trace, loss = trace.head(last), loss[:last]
    steps = trace["step"].to_numpy()
    width = max((len(d) for d in trace["deltas"].to_list() if d is not None), default=0)
    deltas = np.array([d if d is not None else [np.nan] * width for d in trace["deltas"].to_list()], dtype=float)
    breaks = breaking_times(steps, deltas.reshape(len(steps), width), threshold) if width else []
    drops = drop_times(steps, loss, min_rate, min_fall)
    return {"breaks": breaks, "drops": drops, "n_breaks": len(breaks), "n_drops": len(drops),
            "coincident": coincidence(breaks, drops, steps, window),
            "explained": coincidence(drops, breaks, steps, window), "chance": chance(drops, steps, window)}


def dynamics(results: Results, run: str | None = None, where: dict[str, object] | None = None,
             window: float = WINDOW, min_rate: float = MIN_RATE, min_fall: float = MIN_FALL) -> pl.DataFrame:
    """One row per recorded run: its varying axes, breaks, drops, coincident, explained, chance, settled."""
    if window < 0 or min_rate <= 0 or min_fall < 1:
        raise AnalysisError("--window must be >= 0, --min-rate > 0 and --min-fall >= 1")
    runs = recorded_runs(results, run, where)
    steps = traces(results, runs)
    axes = [a for a in independent_axes(runs) if a in runs.columns]
    if "seed" in runs.columns and "seed" not in axes and runs["seed"].n_unique() > 1:
        axes.append("seed")
    by_run = {key[0]: part for key, part in steps.group_by("run_id")}
    out = []
    for row in runs.sort(axes or "run_id").iter_rows(named=True):
        part = by_run.get(row["run_id"])
        if part is None:                     # a failed run: nothing was recorded
            continue
        found = run_dynamics(part.sort("step"), row["delta_threshold"], window, min_rate, min_fall)
        out.append({"run_id": row["run_id"], **{a: row[a] for a in axes}, "status": row["status"], **found,
                    "settled": row.get("settled")})
    schema = {"run_id": pl.String, **{a: runs.schema[a] for a in axes}, "status": pl.String,
              **{k: v for k, v in DYNAMICS_SCHEMA.items() if k != "run_id"}}
    return pl.DataFrame(out, schema=schema)
