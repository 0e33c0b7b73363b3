"""Who proposes the next points: phasemap's boundary sampler, or one of Optuna's for comparison.

Every sampler implements Optuna's sampler interface and reads the study it serves: one trial per
evaluated point, with the refined axis and the group's other axes as params and, as user
attributes, the point's seed-mean metric (`mean`) and order parameter (`order`, a list).

    sampler = BoundarySampler("gamma", groups=["sigma"], precision=0.01, log=True)
    sampler.proposals(study)           # [{"gamma": 0.249, "sigma": 0.0}, ...]; [] once done
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from phasemap.refine.boundary import Bracket, brackets, midpoint, relative_width

NAMES = ("boundary", "qmc", "tpe", "gp", "random")


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


class BoundarySampler(optuna.samplers.BaseSampler):
    """Proposes the points of `refine.boundary` inside every bracket wider than `precision`, for
    each group of the other axes, widest brackets first; proposes nothing once all are done.

    With a second refined axis (`rows`, e.g. temperature), every sampled value of it is a row
    refined along `axis` as above, and a new row goes between two neighbouring rows (at their
    midpoint, geometric when `rows_log`) wherever a level change the two share sits more than
    `precision` apart in `axis` and the rows are more than `precision` apart: the boundary line
    is followed through the plane, densest where it bends. A new row starts with the two points
    that enclose both rows' brackets.
    """

    def __init__(self, axis: str, groups: list[str], precision: float, log: bool, rows: str | None = None,
                 rows_log: bool = False):
        self.axis, self.precision, self.log = axis, precision, log
        self.rows, self.rows_log = rows, rows_log
        self.groups = [*groups, rows] if rows else list(groups)      # a row is one more group of the 1-D search
        self._fallback = optuna.samplers.RandomSampler(seed=0)

    def curves(self, study: optuna.Study) -> dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Per group (its values, in `groups` order): sorted axis values, seed-mean metric, order parameter."""
        points: dict[tuple, list[FrozenTrial]] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("mean") is None:
                continue                                    # no seed finished ok there
            points.setdefault(tuple(t.params[g] for g in self.groups), []).append(t)
        out = {}
        for key, trials in points.items():
            trials.sort(key=lambda t: t.params[self.axis])
            xs = np.array([t.params[self.axis] for t in trials], dtype=float)
            means = np.array([t.user_attrs["mean"] for t in trials], dtype=float)
            orders = [t.user_attrs.get("order") or [] for t in trials]
            width = max(len(o) for o in orders)
            order = (np.array([list(o) + [np.nan] * (width - len(o)) for o in orders], dtype=float)
                     if width else None)
            out[key] = (xs, means, order)
        return out

    def brackets(self, study: optuna.Study) -> dict[tuple, list[Bracket]]:
        return {key: brackets(xs, means, self.precision, self.log, order)
                for key, (xs, means, order) in self.curves(study).items()}

    def new_rows(self, found: dict[tuple, list[Bracket]]) -> list[tuple[float, dict]]:
        """(priority, params) of the first points of new rows between neighbouring rows."""
        if not self.rows:
            return []
        by_group: dict[tuple, list[tuple[float, list[Bracket]]]] = {}
        for key, group in found.items():
            by_group.setdefault(key[:-1], []).append((key[-1], group))
        out = []
        for outer, rows in by_group.items():
            rows.sort(key=lambda r: r[0])
            for (b1, lower), (b2, upper) in zip(rows, rows[1:]):
                if relative_width(b1, b2, self.rows_log) <= self.precision:
                    continue
                pairs = {(b.level_from, b.level_to): b for b in upper}
                for b in lower:
                    other = pairs.get((b.level_from, b.level_to))
                    if other is None:
                        continue
                    # The rows' brackets, as intervals: where they overlap, or sit within the precision
                    # of each other, the line between the rows is known as well as the rows themselves.
                    near, far = min(b.hi, other.hi), max(b.lo, other.lo)
                    if far <= near or relative_width(near, far, self.log) <= self.precision:
                        continue
                    row = midpoint(b1, b2, self.rows_log)
                    for x in (min(b.lo, other.lo), max(b.hi, other.hi)):
                        out.append((-relative_width(near, far, self.log),
                                    {self.axis: x, **dict(zip(self.groups, (*outer, row)))}))
        return out

    def proposals(self, study: optuna.Study) -> list[dict]:
        """The points still to sample, widest brackets first, without those already asked for."""
        taken = [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE,
                                                                              TrialState.WAITING, TrialState.FAIL))]
        found = self.brackets(study)
        candidates = [(-b.width, {self.axis: x, **dict(zip(self.groups, key))})
                      for key, group in found.items() for b in group for x in b.proposals]
        out, seen = [], []
        for priority, params in sorted(candidates + self.new_rows(found), key=lambda item: item[0]):
            if not any(self._same_point(p, params) for p in taken + seen):
                out.append(params)
                seen.append(params)
        return out

    def _same_point(self, a: dict, b: dict) -> bool:
        if a.get(self.axis) is None or not _same(a[self.axis], b[self.axis]):
            return False
        return all(_same(a.get(g), b[g]) if isinstance(b[g], float) and isinstance(a.get(g), float)
                   else a.get(g) == b[g] for g in self.groups)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False,
                                                                              states=(TrialState.COMPLETE,)))

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict:
        found = self.proposals(study)
        return found[0] if found and set(found[0]) <= set(search_space) else {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution):
        # Reached only when nothing is left to propose, and refine asks no trial then.
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(name: str, axis: str, groups: list[str], precision: float, log: bool, rows: str | None = None,
                 rows_log: bool = False, seed: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (NAMES); Optuna's are seeded, so a comparison is repeatable."""
    if name == "boundary":
        return BoundarySampler(axis, groups, precision, log, rows, rows_log)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(NAMES)}")
