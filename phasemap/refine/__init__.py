"""Adaptive refinement of phase boundaries: the same boundary precision for a fraction of the runs.

The sweep file's grid is the coarse start. Along the refined axis every group of the other axes
(seeds pooled, as `critical` pools them) gets rounds of new axis values inside the brackets where
its seed-mean metric changes level, until every bracket is narrower than the relative precision
or the run budget is spent. A point is the group's values and one axis value, trained for every
seed of the grid. Where the new points go is `refine.boundary`'s method (a secant on a continuous
order parameter where there is one, bisection otherwise).

Optuna holds the search: one study per (sweep, metric, axis, sampler) in an RDB storage (a SQLite
file in the results folder unless --storage names another SQLAlchemy URL), one trial per point
with the axis and the group as params, and as user attributes the seed-mean metric (`mean`), the
order parameter (`order`) and the point's `run_ids`; its value is the `objective` below, which
Optuna's own samplers minimise. A killed refine resumes from the study: points asked for but not
told are trained (what is already in the results folder is not trained again) and told.

Runs go through the same path as `phasemap run`: ordinary configs and run_ids, the same results
folder; a small round trains in this process, a bigger one on Ray Tune, and a Ray started for one
round is kept for the next. Each trial records its round (0: the coarse grid).

    out = refine(load_spec("sweeps/validation/linear-rank.yaml"), "weight_rank", "gamma",
                 "results/linear-rank-refined", precision=0.01, budget=200)
    out.brackets      # per group: [lo, hi], the levels, the width, done or not
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from phasemap import store
from phasemap.analysis.runs import use_log
from phasemap.grid import axes, base_flat, canonical, resolve
from phasemap.refine.samplers import NAMES, BoundarySampler, make_sampler
from phasemap.spec import FIELDS, SpecError, SweepSpec

__all__ = ["NAMES", "RefineResult", "objective", "refine"]

ORDER_PARAMETERS = {"weight_rank": "weight_svals"}     # metric -> its continuous order parameter
METRICS = ("weight_rank", "n_distinct", "n_dos", "n_dosb", "n_dead", "rep_rank")


@dataclass
class RefineResult:
    study: str
    storage: str
    sampler: str
    coarse_runs: int
    runs: int                                   # distinct runs trained for the study, coarse grid included
    budget: int
    rounds: int
    points: int                                 # evaluated points (trials)
    stopped: str                                # "done" (every bracket within the precision), "budget", or
                                                # "stuck" (brackets still open, nothing left to propose)
    brackets: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def objective(mean: float, order: list[float] | None) -> float:
    """What Optuna's samplers minimise, small near a level boundary: for a rank with singular values,
    the smallest surviving one relative to the largest; otherwise how far the seed mean is from a
    half-integer (0 where the seeds split evenly between two levels, 0.5 where they agree)."""
    rank = int(round(mean))
    if order and rank >= 1 and order[0] > 0:
        return float(order[min(rank, len(order)) - 1] / order[0])
    return float(0.5 - abs(mean - round(mean)))


def _check(spec: SweepSpec, metric: str, refined: list[str], precision: float, sampler: str) -> dict[str, list]:
    grid = axes(spec)
    if not 1 <= len(refined) <= 2 or len(set(refined)) != len(refined):
        raise SpecError(f"--axis: give one axis, or two different ones (got {', '.join(refined) or 'none'})", key="axis")
    for axis in refined:
        _check_axis(grid, axis)
    if metric not in METRICS:
        raise SpecError(f"--metric {metric}: refine follows level changes of a count ({', '.join(METRICS)})",
                        key="metric")
    if not precision > 0:
        raise SpecError(f"--precision {precision}: must be > 0 (relative, e.g. 0.01)", key="precision")
    if sampler not in NAMES:
        raise SpecError(f"--sampler {sampler}: use one of {', '.join(NAMES)}", key="sampler")
    return grid


def _check_axis(grid: dict[str, list], axis: str) -> None:
    if axis not in grid:
        raise SpecError(f"--axis {axis}: not an axis of the sweep's grid (its axes: {', '.join(grid) or 'none'}); "
                        "the grid gives the refined axis's range", key="axis")
    if store.python_type(FIELDS[axis].annotation) is not float:
        raise SpecError(f"--axis {axis}: refine needs a continuous axis (a float key such as gamma, temperature, "
                        "sigma or lr)", key="axis")
    if len(grid[axis]) < 2:
        raise SpecError(f"--axis {axis}: the grid gives it one value; the coarse start needs at least two", key="axis")


def _storage(out: str, storage: str | None) -> str:
    if storage:
        return storage
    if "://" in out:
        raise SpecError(f"--out {out}: the study's default SQLite file needs a local folder; give --storage "
                        "(an SQLAlchemy URL, e.g. postgresql://...)", key="storage")
    Path(out).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(out).resolve() / 'refine.db'}"


def _open_study(name: str, storage: str, sampler):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize",
                                   load_if_exists=True)
    except Exception as err:  # noqa: BLE001 - any driver or connection error: one line, exit 2
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"--storage {storage}: cannot open the study ({reason})", key="storage") from None


def _point_stats(rows: pl.DataFrame, metric: str) -> tuple[float | None, list[float] | None]:
    """Seed-mean metric and order parameter of one point's ok runs (None when none finished ok)."""
    ok = rows.filter((pl.col("status") == "ok") & pl.col(metric).is_not_null())
    if ok.height == 0:
        return None, None
    mean = float(ok[metric].mean())
    column = ORDER_PARAMETERS.get(metric)
    if column is None or column not in ok.columns:
        return mean, None
    lists = [v for v in ok[column].to_list() if v]
    if not lists:
        return mean, None
    width = max(len(v) for v in lists)
    return mean, np.nanmean([list(v) + [np.nan] * (width - len(v)) for v in lists], axis=0).tolist()


def refine(spec: SweepSpec, metric: str, axis: str | list[str], out: str | Path, *, precision: float = 0.01,
           budget: int | None = None, per_round: int | None = None, sampler: str = "boundary",
           storage: str | None = None, address: str | None = None, device: str = "auto",
           num_cpus: int | None = None, chunk: int | None = None,
           on_round: Callable[[int, int, int], None] | None = None) -> RefineResult:
    """Refine the boundaries of `metric` along `axis` (see the module docstring); return what was done.

    axis: one axis, or two: [A, B] refines along A in rows of B and adds rows of B where the
    boundary moves (BoundarySampler); Optuna's samplers refine A on the grid's rows of B.

    budget: the most runs (configs, seeds counted) for the study, coarse grid included (default:
    four times the coarse grid); per_round: the most points per round (default: as many as the
    boundary sampler proposes, or one per group for Optuna's samplers); on_round(round, points,
    runs) is called after each round.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from phasemap.executor import ray_session, run_configs
    from phasemap.plan import Pending, pending, spec_yaml

    refined = [axis] if isinstance(axis, str) else list(axis)
    grid = _check(spec, metric, refined, precision, sampler)
    axis, rows = refined[0], (refined[1] if len(refined) == 2 else None)
    out = store.normalize(out)
    values = grid[axis]
    log = use_log(np.array(values, dtype=float))
    rows_log = rows is not None and use_log(np.array(grid[rows], dtype=float))
    seeds = grid.get("seed", [spec.train.seed])
    group_keys = [k for k in grid if k not in (*refined, "seed")]
    coarse_runs = math.prod(len(v) for v in grid.values())
    budget = budget if budget is not None else 4 * coarse_runs
    if budget < coarse_runs:
        raise SpecError(f"--budget {budget}: smaller than the coarse grid ({coarse_runs} runs), which refine "
                        "trains first", key="budget")
    if per_round is not None and per_round < 1:
        raise SpecError(f"--per-round {per_round}: must be at least 1", key="per_round")
    storage = _storage(out, storage)
    # The study belongs to this exact sweep: another train.steps (or any other value) is another study.
    digest = hashlib.blake2b(json.dumps([base_flat(spec), grid], sort_keys=True, default=str).encode(),
                             digest_size=4).hexdigest()
    name = f"{spec.name}:{metric}:{'+'.join(refined)}:{sampler}:{digest}"
    chosen = make_sampler(sampler, axis, group_keys, precision, log, rows, rows_log)
    study = _open_study(name, storage, chosen)
    boundary = (chosen if isinstance(chosen, BoundarySampler)
                else BoundarySampler(axis, group_keys, precision, log, rows, rows_log))
    # Only the boundary sampler adds rows; Optuna's samplers refine along `axis` on the grid's rows, so
    # that their brackets are comparable (a row sampled once has no bracket to report).
    floating = refined if chosen is boundary else [axis]
    choices = [*group_keys, *(a for a in refined if a not in floating)]
    distributions = {a: FloatDistribution(min(grid[a]), max(grid[a]), log=use_log(np.array(grid[a], dtype=float)))
                     for a in floating} | {g: CategoricalDistribution(tuple(grid[g])) for g in choices}
    base, explicit = base_flat(spec), spec.explicit_keys()
    run_kw = dict(address=address, device=device, chunk=chunk)

    def configs_of(params: dict) -> list[dict]:
        point = {**{k: params[k] for k in group_keys}, **{a: params[a] for a in refined}}
        return [resolve(base, {**point, "seed": s} if "seed" in grid else point, explicit) for s in seeds]

    def read(run_ids: set[str]) -> pl.DataFrame:
        from phasemap.summary import scan

        wanted = [c for c in ("run_id", "status", metric, ORDER_PARAMETERS.get(metric)) if c]
        lazy = scan(out)
        have = lazy.collect_schema().names()
        return lazy.select([c for c in wanted if c in have]).filter(pl.col("run_id").is_in(list(run_ids))).collect()

    def train(configs: list[dict]) -> None:
        todo = [c for c in {c["run_id"]: c for c in configs}.values()]
        done = store.run_ids(out, set_aside=True)
        summary = run_configs(spec.name, Pending.of_configs([c for c in todo if c["run_id"] not in done], len(todo), out,
                                                            spec_yaml(spec)),
                              **run_kw)
        if summary.fatal or summary.interrupted:
            raise store.StoreError(summary.fatal or "refine was interrupted; run it again to resume", retryable=False)

    def told(params_list: list[dict], trials: list | None = None, round_: int = 0) -> None:
        runs = {i: [c["run_id"] for c in configs_of(p)] for i, p in enumerate(params_list)}
        rows = read({r for ids in runs.values() for r in ids})
        for i, params in enumerate(params_list):
            mean, order = _point_stats(rows.filter(pl.col("run_id").is_in(runs[i])), metric)
            attrs = {"mean": mean, "order": order, "run_ids": runs[i], "round": round_}
            if trials is None:       # a coarse grid point
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=distributions, user_attrs=attrs,
                    value=objective(mean, order) if mean is not None else None,
                    state=optuna.trial.TrialState.COMPLETE if mean is not None else optuna.trial.TrialState.FAIL))
                continue
            for key, value in attrs.items():
                trials[i].set_user_attr(key, value)
            if mean is None:
                study.tell(trials[i].number, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trials[i].number, objective(mean, order))

    started = time.perf_counter()
    rounds = 0
    with ray_session(address, num_cpus):
        coarse = pending(spec, out, set_aside=True)
        if coarse.count:
            summary = run_configs(spec.name, coarse, **run_kw)
            if summary.fatal or summary.interrupted or summary.missing:
                raise store.StoreError(f"the coarse grid did not finish ({summary.missing} runs missing"
                                       f"{': ' + summary.fatal if summary.fatal else ''}); run refine again",
                                       retryable=False)
        known = [t.params for t in study.get_trials(deepcopy=False)]
        fresh = [p for p in (dict(zip([*refined, *group_keys], combo)) for combo in
                             itertools.product(*(grid[a] for a in refined), *(grid[g] for g in group_keys)))
                 if p not in known]
        if fresh:
            told(fresh)
        stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if stale:                                    # a killed refine's last round: finish it
            train([c for t in stale for c in configs_of(t.params)])
            told([t.params for t in stale], [optuna.trial.Trial(study, t._trial_id) for t in stale])
        stopped = "budget"
        while True:
            used = len({r for t in study.get_trials(deepcopy=False) for r in t.user_attrs.get("run_ids", [])})
            left = (budget - used) // len(seeds)
            want = (len(boundary.proposals(study)) if chosen is boundary
                    else per_round or max(1, _n_groups(grid, [*group_keys, *refined[1:]])))
            if want == 0:
                stopped = "done"
                break
            n = min(want, per_round or want, left)
            if n <= 0:
                break
            trials = [study.ask() for _ in range(n)]
            params = []
            for trial in trials:
                point = {a: canonical(trial.suggest_float(a, d.low, d.high, log=d.log))
                         for a, d in distributions.items() if a in floating}
                group = {g: trial.suggest_categorical(g, tuple(grid[g])) for g in choices}
                params.append({**point, **group})
            train([c for p in params for c in configs_of(p)])
            told(params, trials, round_=len({t.user_attrs.get("round", 0) for t in study.get_trials(deepcopy=False)}))
            rounds += 1
            if on_round:
                on_round(rounds, len(study.get_trials(deepcopy=False)), used + n * len(seeds))
    used = len({r for t in study.get_trials(deepcopy=False) for r in t.user_attrs.get("run_ids", [])})
    report = [{**dict(zip(boundary.groups, key)), "lo": b.lo, "hi": b.hi, "from": b.level_from, "to": b.level_to,
               "width": b.width, "done": b.method == "done", "estimate": b.estimate}
              for key, found in boundary.brackets(study).items() for b in found]
    if report and all(r["done"] for r in report) and not (chosen is boundary and boundary.proposals(study)):
        stopped = "done"
    elif stopped == "done":         # nothing left to propose, yet brackets are open
        stopped = "stuck"
    return RefineResult(study=name, storage=storage, sampler=sampler, coarse_runs=coarse_runs, runs=used,
                        budget=budget, rounds=rounds, points=len(study.get_trials(deepcopy=False)), stopped=stopped,
                        brackets=report, seconds=time.perf_counter() - started)


def _n_groups(grid: dict[str, list], group_keys: list[str]) -> int:
    return math.prod(len(grid[g]) for g in group_keys)

