"""What a run has to do: the sweep's configs, minus those already in the results folder, in chunks.

Plain Python over the resolved configs (no torch, no Ray), so `run --dry-run` and the driver
plan a sweep in the same way and quickly:

    todo = pending(load_spec("sweeps/quickstart.yaml"), "results/quickstart")
    print(f"{todo.total} configs, {len(todo.configs)} to run")
    chunks = plan_chunks(todo.configs, chunk=None, slots=2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from phasemap import store
from phasemap.grid import DEFAULT_MAX_CONFIGS, expand
from phasemap.shapes import shape_order
from phasemap.spec import SweepSpec

TRIALS_PER_SLOT = 4      # enough trials to balance load and show progress, few enough to stay cheap
MAX_CHUNK = 1024


@dataclass
class Pending:
    """The configs of a sweep not yet finished in `out_dir`, and the sweep's size."""

    configs: list[dict]
    total: int
    out_dir: str

    @property
    def done(self) -> int:
        return self.total - len(self.configs)


def pending(spec: SweepSpec, out_dir: str, max_configs: int = DEFAULT_MAX_CONFIGS,
            set_aside: bool = False) -> Pending:
    """Expand the sweep (refused above max_configs) and drop the configs already done in out_dir.

    set_aside=True renames damaged result files out of the way, so that their configs run again.
    """
    configs = expand(spec, max_configs=max_configs)
    out_dir = store.normalize(out_dir)
    done = store.run_ids(out_dir, set_aside=set_aside)
    return Pending([c for c in configs if c["run_id"] not in done], len(configs), out_dir)


def plan_chunks(configs: list[dict], chunk: int | None, slots: int) -> list[list[dict]]:
    """Split configs into chunks of equal shape where possible (sorted by shape, then grid order)."""
    if not configs:
        return []
    size = chunk or min(MAX_CHUNK, max(1, math.ceil(len(configs) / (slots * TRIALS_PER_SLOT))))
    ordered = sorted(configs, key=shape_order)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]
