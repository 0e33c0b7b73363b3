"""Training dynamics: the steps a run is measured at, and what is measured there.

With `train.record`, a run's models are measured at its record steps: the data loss on the whole
train and test sets and the family's trace metrics (columns.TRACE). Every run is also measured
once at SETTLE_FRACTION of its steps, so that the runner can say whether its class had settled.
The engine stops at those steps (engine.fit's `observe`) and hands the parameters to a Recorder,
which keeps a copy; copies are measured in blocks, batched over steps and models, which costs a
fraction of measuring at every stop.

    recorder = Recorder(batch, th, schedule(cfg.get("record"), cfg["steps"]))
    result = engine.fit(batch, observe=recorder)
    rows = recorder.rows()             # per model: [{"step": ..., "train_loss": ..., ...}, ...]
    recorder.at_settle                 # per model: the trace metrics at the settle step
"""

from __future__ import annotations

import math

import numpy as np
import torch

from phasemap import backends, columns, models

Tensor = torch.Tensor

SETTLE_FRACTION = 0.9   # `settled` compares the class here with the class at the end
BLOCK = 16              # stops measured at once (memory: BLOCK copies of a batch's parameters)


def schedule(record: str | None, steps: int) -> list[int]:
    """The record steps of a resolved config's `record` ("every:K" or "log:N"; None: none).

    every:K gives K, 2K, ... and the last step; log:N gives N steps evenly spaced in log(step)
    from 1 to `steps`, rounded to integers (steps that round alike are one, so short runs get
    fewer than N). Step 0, the initial state, comes first, and the last step is always recorded:
    a trace runs from the initialisation to the run's final state.
    """
    if not record:
        return []
    kind, _, value = record.partition(":")
    n = int(value)              # a ValueError for anything but an integer
    if n < 1:
        raise ValueError(f"record schedule {record!r}: needs a positive number")
    if kind == "every":
        return sorted(set(range(n, steps + 1, n)) | {0, steps})
    if kind == "log":
        return sorted({int(round(s)) for s in np.geomspace(1, steps, n)} | {0, steps})
    raise ValueError(f"unknown record schedule {record!r}")


def settle_step(steps: int) -> int:
    """The step at which every run is measured for `settled`: SETTLE_FRACTION of its training."""
    return max(1, math.floor(SETTLE_FRACTION * steps))


class Recorder:
    """engine.fit's observer: copies the parameters at its steps and measures the copies.

    batch: the engine.Batch being trained; th: (M,) metric thresholds (columns.THRESHOLDS);
    record: the record steps (schedule); the settle step is added to them.
    """

    def __init__(self, batch, th: dict[str, Tensor], record: list[int]):
        self.batch = batch
        self.family = models.get(batch.family)
        self.th = th
        self.record = set(record)
        self.settle = settle_step(batch.steps)
        self.steps = sorted(self.record | {self.settle})
        self._pending: list[tuple[int, list[Tensor], Tensor]] = []
        self._rows: list[list[dict]] = [[] for _ in range(batch.n_models)]
        self.at_settle: list[dict] = [{} for _ in range(batch.n_models)]

    def __call__(self, step: int, params: list[Tensor], diverged_step: Tensor) -> None:
        """Keep a copy of the parameters at `step` (one of self.steps)."""
        alive = diverged_step < 0
        for p in params:
            alive &= torch.isfinite(p).flatten(1).all(dim=1)
        self._pending.append((step, [p.detach().clone() for p in params], alive))
        if len(self._pending) >= BLOCK:
            self._measure()

    def rows(self) -> list[list[dict]]:
        """Per model, its trace rows in step order (record steps only; run_id not yet set)."""
        self._measure()
        return self._rows

    def finish(self) -> "Recorder":
        """Measure what is still pending; return self."""
        self._measure()
        return self

    def _measure(self) -> None:
        if not self._pending:
            return
        steps = [step for step, _, _ in self._pending]
        n_stops, m = len(steps), self.batch.n_models
        alive = torch.cat([a for _, _, a in self._pending])                         # (R M,)
        params = [torch.cat([snap[i] for _, snap, _ in self._pending]) for i in range(len(self._pending[0][1]))]
        # A model that went non-finite is measured on zeros (kept out of the SVDs) and reported as None.
        params = [torch.where(alive.view(-1, *[1] * (p.dim() - 1)), p, torch.zeros((), dtype=p.dtype)) for p in params]
        self._pending = []
        th = {k: v.repeat(n_stops) for k, v in self.th.items()}
        b = self.batch
        with torch.no_grad():
            losses = {name: self._loss(params, x, y, n_stops).tolist()
                      for name, x, y in (("train_loss", b.x, b.y), ("test_loss", b.x_test, b.y_test))}
            metrics = self.family.trace(params, th, **b.arch)
        alive = alive.tolist()
        measured = {**losses, **metrics}
        for r, step in enumerate(steps):
            for i in range(m):
                k = r * m + i
                values = {name: (col[k] if alive[k] else None) for name, col in measured.items()}
                if step in self.record:
                    self._rows[i].append({"step": step, **{c: values.get(c) for c in columns.TRACE if c in values}})
                if step == self.settle:
                    self.at_settle[i] = values

    def _loss(self, params: list[Tensor], x: Tensor, y: Tensor, n_stops: int) -> Tensor:
        """(R M,) data loss (1/N) sum_n ||y_n - f(x_n)||^2 of every copy on one data set, a stop at a
        time (the data are the batch's M models', not copied R times)."""
        m, b = self.batch.n_models, self.batch
        return torch.cat([backends.data_loss(b.family, b.arch, [p[r * m:(r + 1) * m] for p in params], x, y)
                          for r in range(n_stops)])


def settle_change(final: dict, at_settle: dict) -> float | None:
    """The largest relative change |final - earlier| / max(|final|, 1) of the class metrics
    (n_distinct, or n_dos where there are no neurons, and weight_rank) over the last
    1 - SETTLE_FRACTION of training; None when either end is missing (diverged)."""
    first = "n_distinct" if final.get("n_distinct") is not None else "n_dos"
    changes = []
    for key in (first, "weight_rank"):
        a, b = final.get(key), at_settle.get(key)
        if a is None or b is None:
            return None
        changes.append(abs(a - b) / max(abs(a), 1))
    return max(changes)
