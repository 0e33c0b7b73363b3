"""What a run has to do: the sweep's configs, minus those already in the results folder, in chunks.

A sweep is planned as its grid (`grid.Grid`) and the indices of the configs still to run, never
as a list of configs: each chunk is a few index ranges that its trial resolves itself, so the
driver's memory and a trial's do not grow with the sweep (a million configs: about 8 MB of
indices). Plain Python and numpy (no torch, no Ray), so `run --dry-run` and the driver plan a
sweep in the same way and quickly:

    todo = pending(load_spec("sweeps/quickstart.yaml"), "results/quickstart")
    print(f"{todo.total} configs, {todo.count} to run")
    for chunk in todo.chunks(size=None, slots=2):
        configs = chunk.resolve(todo.grid)

Explicit config lists (refine's points) are planned the same way: `Pending.of_configs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from phasemap import store
from phasemap.grid import DEFAULT_MAX_CONFIGS, Grid, ids_array
from phasemap.shapes import shape_order, work
from phasemap.spec import SweepSpec

TRIALS_PER_SLOT = 4      # enough trials to balance load and show progress, few enough to stay cheap
MAX_CHUNK = 1024         # configs per chunk, unless they are known to be light:
LIGHT_CHUNK_WORK = 1e11  # up to this much shapes.work per chunk (about 1,300 ref-mlp configs, ~10 s here),
MAX_LIGHT_CHUNK = 16384  # and at most this many configs: a million trivial configs make ~60 trials, not ~1,000


@dataclass
class Chunk:
    """One trial's configs: index ranges (start, stop, step) of a grid, or explicit configs."""

    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    configs: list[dict] | None = None

    def __len__(self) -> int:
        if self.configs is not None:
            return len(self.configs)
        return sum(len(range(*r)) for r in self.ranges)

    def indices(self) -> np.ndarray:
        return np.concatenate([np.arange(*r, dtype=np.int64) for r in self.ranges]) if self.ranges else \
            np.zeros(0, dtype=np.int64)

    def resolve(self, grid: Grid | None) -> list[dict]:
        """The chunk's resolved configs (a trial calls this: the driver never holds them all)."""
        return self.configs if self.configs is not None else grid.configs(self.indices())


def ranges_of(indices: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of constant step covering `indices` in order (range() arguments): a chunk of a sorted
    grid is a few of them, whatever its size."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    if n < 2:
        return [(int(i), int(i) + 1, 1) for i in idx]
    steps = np.diff(idx)
    starts = np.flatnonzero(np.r_[True, steps[1:] != steps[:-1]])     # where a run of equal steps begins
    ends = np.r_[starts[1:], len(steps)] - 1
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < n:
        if i == n - 1:
            out.append((int(idx[i]), int(idx[i]) + 1, 1))
            break
        last = int(ends[np.searchsorted(starts, i, side="right") - 1])   # steps[i..last] are equal
        step = int(steps[i])
        out.append((int(idx[i]), int(idx[last + 1]) + step, step))
        i = last + 2
    return out


@dataclass
class Pending:
    """The configs of a sweep not yet finished in `out_dir`: grid indices in shape order, or
    explicit configs; `total` is the sweep's size."""

    total: int
    out_dir: str
    grid: Grid | None = None
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    configs: list[dict] | None = None
    heaviest: float | None = None           # the largest shapes.work of one config of the grid
    spec_yaml: str | None = None            # the sweep file as validated, stored with every results file

    @classmethod
    def of_configs(cls, configs: list[dict], total: int, out_dir: str, spec_yaml: str | None = None) -> "Pending":
        return cls(total=total, out_dir=out_dir, configs=sorted(configs, key=shape_order), spec_yaml=spec_yaml)

    @property
    def count(self) -> int:
        return len(self.configs) if self.configs is not None else len(self.indices)

    @property
    def done(self) -> int:
        return self.total - self.count

    def run_ids(self) -> np.ndarray:
        """The run_ids of the configs to run, as grid.ids_array (about a second per million)."""
        if self.configs is not None:
            return ids_array(c["run_id"] for c in self.configs)
        return self.grid.run_ids(self.indices)

    def missing(self, finished: np.ndarray) -> int:
        """How many of the configs to run are not among `finished` (store.finished_ids)."""
        return int((~self.finished_in(store.IdIndex(finished))).sum())

    def finished_in(self, done: store.IdIndex) -> np.ndarray:
        """Per config to run, whether `done` holds its run_id (a grid's run_ids are computed 65,536
        at a time: 2 MB each, not 32 MB per million)."""
        if self.configs is not None:
            return done.among(self.run_ids())
        blocks = [self.indices[i:i + 65536] for i in range(0, len(self.indices), 65536)]
        return np.concatenate([done.among(self.grid.run_ids(b)) for b in blocks]) if blocks else np.zeros(0, bool)

    def chunks(self, size: int | None, slots: int) -> list[Chunk]:
        """Chunks of `size` configs (default: about TRIALS_PER_SLOT per slot, at most MAX_CHUNK),
        in shape order, so that a chunk's configs share a batch where they can."""
        n = self.count
        if not n:
            return []
        size = size or min(self._max_chunk(), max(1, math.ceil(n / (slots * TRIALS_PER_SLOT))))
        if self.configs is not None:
            return [Chunk(configs=self.configs[i:i + size]) for i in range(0, n, size)]
        return [Chunk(ranges=ranges_of(self.indices[i:i + size])) for i in range(0, n, size)]

    def _max_chunk(self) -> int:
        """MAX_CHUNK, or more configs when every shape's are light enough (shapes.work)."""
        heaviest = self.heaviest if self.configs is None else max(work(c) for c in self.configs)
        if not heaviest or heaviest <= 0:      # unknown (e.g. a transformer)
            return MAX_CHUNK
        return int(min(MAX_LIGHT_CHUNK, max(MAX_CHUNK, LIGHT_CHUNK_WORK // heaviest)))

    def first(self, size: int) -> Chunk:
        """One chunk of the first `size` configs to run."""
        if self.configs is not None:
            return Chunk(configs=self.configs[:size])
        return Chunk(ranges=ranges_of(self.indices[:size]))

    def skip(self, count: int) -> "Pending":
        """The same plan without its first `count` configs (those trained already)."""
        if self.configs is not None:
            return Pending(self.total, self.out_dir, configs=self.configs[count:], spec_yaml=self.spec_yaml)
        return Pending(self.total, self.out_dir, self.grid, self.indices[count:], heaviest=self.heaviest,
                       spec_yaml=self.spec_yaml)


def shape_sorted(grid: Grid, indices: np.ndarray) -> tuple[np.ndarray, float]:
    """`indices` in shape order, then grid order, and the largest shapes.work of one config.
    Configs differing only in seed share a shape, so one config per seedless point is resolved
    (which also checks every grid point: SpecError)."""
    combos = grid.seedless(indices)
    unique, inverse = np.unique(combos, return_inverse=True)
    configs = grid.configs(unique, hashed=False)
    orders = [shape_order(c) for c in configs]
    rank = np.empty(len(unique), dtype=np.int64)
    for r, u in enumerate(sorted(range(len(unique)), key=orders.__getitem__)):
        rank[u] = r
    return indices[np.lexsort((indices, rank[inverse]))], max((work(c) for c in configs), default=0.0)


def pending(spec: SweepSpec, out_dir: str, max_configs: int = DEFAULT_MAX_CONFIGS,
            set_aside: bool = False) -> Pending:
    """Plan the sweep (refused above max_configs; SpecError at a bad grid point) and drop the
    configs already done in out_dir (their run_ids are computed only when the folder has runs).

    set_aside=True renames damaged result files out of the way, so that their configs run again.
    """
    grid = Grid.of(spec, max_configs)
    out_dir = store.normalize(out_dir)
    indices, heaviest = shape_sorted(grid, np.arange(grid.size, dtype=np.int64))
    todo = Pending(total=grid.size, out_dir=out_dir, grid=grid, indices=indices, heaviest=heaviest,
                   spec_yaml=spec_yaml(spec))
    done = store.finished(out_dir, set_aside=set_aside)
    if len(done):
        todo.indices = indices[~todo.finished_in(store.IdIndex(done))]
    return todo


def spec_yaml(spec: SweepSpec) -> str:
    """The sweep as its file would say it, after validation and --set (keys at their defaults left out)."""
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def plan_chunks(configs: list[dict], chunk: int | None, slots: int) -> list[list[dict]]:
    """Split explicit configs into chunks of equal shape where possible (sorted by shape, then order)."""
    return [c.configs for c in Pending.of_configs(configs, len(configs), "").chunks(chunk, slots)]
