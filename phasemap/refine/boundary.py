"""Where to sample next along one axis: inside every bracket of a level change wider than the precision.

A group's seed-mean curve is known at its sampled axis values x_1 < ... < x_n. Its level changes
are `analysis.crossings` (the same brackets `critical` reports): between x_p and x_q the mean
passes a level boundary L - 1/2. A bracket is done when its relative width is at most the
precision P: x_q / x_p - 1 <= P on a log axis, (x_q - x_p) / max(|x_p|, |x_q|) <= P otherwise.

Each bracket wider than P gets new points:
- With a continuous order parameter (for weight_rank: the seed-mean of the m-th singular value of
  the weight product, m the rank that is lost, which falls to 0 at the boundary, linearly in gamma
  for a linear student), the secant through the two sampled points nearest the bracket on the side
  that still has rank m estimates where it reaches 0; the two points at the estimate times
  (1 -+ P/3) are proposed, so that an accurate estimate closes the bracket to 2P/3 in one round.
  The secant needs the order parameter to fall towards the bracket on that side.
- Otherwise (no order parameter, or an estimate outside the bracket) the bracket is bisected:
  its geometric midpoint on a log axis, the arithmetic one otherwise. A bracket that holds sampled
  points itself (where seeds split evenly, the mean sits on the level boundary and the bracket
  spans the points around it) has each of its sub-intervals wider than P bisected, and no secant.
  A bracket whose sub-intervals are all within P is done for sampling even if it is wider: the
  seeds disagree across it, and only more seeds narrow it.
A level count alone halves a bracket per round; the secant uses how far the order parameter
still is from 0, which a count throws away, and for a linear order parameter lands on the root.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phasemap.analysis.critical import crossings


@dataclass(frozen=True)
class Bracket:
    """A level change between two sampled axis values, and where the next points go."""

    lo: float
    hi: float
    level_from: int
    level_to: int
    width: float                 # relative (see the module docstring)
    proposals: tuple[float, ...]
    method: str                  # "secant", "bisect" or "done"
    estimate: float | None = None   # where the order parameter's secant reaches 0, if it can say


def relative_width(lo: float, hi: float, log: bool) -> float:
    """hi / lo - 1 on a log axis, (hi - lo) / max(|lo|, |hi|) otherwise."""
    if log:
        return hi / lo - 1
    scale = max(abs(lo), abs(hi))
    return (hi - lo) / scale if scale > 0 else math.inf


def midpoint(lo: float, hi: float, log: bool) -> float:
    return math.sqrt(lo * hi) if log else (lo + hi) / 2


def secant_root(xs: np.ndarray, order: np.ndarray, p: int, q: int, high_on_left: bool) -> float | None:
    """Where the order parameter reaches 0 by the secant through the two sampled points nearest the
    bracket xs[p]..xs[q] on its high-level side; None unless it falls towards the bracket there."""
    side = [p, p - 1] if high_on_left else [q, q + 1]
    if min(side) < 0 or max(side) >= len(xs):
        return None
    (x1, x2), (y1, y2) = xs[side], order[side]
    if not (np.isfinite(y1) and np.isfinite(y2)) or y1 <= 0 or y2 <= y1:
        return None                      # it must be positive and fall towards the bracket
    return float(x1 - y1 * (x2 - x1) / (y2 - y1))


def brackets(xs: np.ndarray, means: np.ndarray, precision: float, log: bool,
             order: np.ndarray | None = None) -> list[Bracket]:
    """The level changes of one curve and the points proposed inside each (none once done).

    xs (n,) sorted axis values; means (n,) the seed-mean metric there; order None, or (n, K): the
    seed-mean order parameter, column m - 1 falling to 0 where level m is lost (weight_svals).
    """
    found: dict[tuple[int, int], list] = {}
    for level_from, level_to, _, p, q in crossings(xs, means, log):
        found.setdefault((p, q), []).append((level_from, level_to))
    out = []
    for (p, q), changes in sorted(found.items()):
        lo, hi = float(xs[p]), float(xs[q])
        level_from, level_to = changes[0][0], changes[-1][1]
        width = relative_width(lo, hi, log)
        lost = max(level_from, level_to)
        root = None
        if order is not None and 1 <= lost <= order.shape[1] and len(changes) == 1:
            root = secant_root(xs, order[:, lost - 1], p, q, high_on_left=level_from > level_to)
        if width <= precision:
            out.append(Bracket(lo, hi, level_from, level_to, width, (), "done", root))
            continue
        inner = [(float(a), float(b)) for a, b in zip(xs[p:q], xs[p + 1:q + 1]) if relative_width(a, b, log) > precision]
        halves = tuple(midpoint(a, b, log) for a, b in inner)
        if root is not None and lo < root < hi and q - p == 1:
            step = precision / 3
            pair = (root * (1 - step), root * (1 + step)) if log else (root - step * abs(root), root + step * abs(root))
            inside = tuple(x for x in pair if lo < x < hi)
            if inside:
                out.append(Bracket(lo, hi, level_from, level_to, width, inside, "secant", root))
                continue
        out.append(Bracket(lo, hi, level_from, level_to, width, halves, "bisect", root))
    return out
