"""What a results folder holds: run count, status counts, and the axes (config keys that vary).

    info = summarize("results/quickstart")
    info["axes"]["gamma"]  # sorted distinct values
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from phasemap import store

NOT_AXES = set(store.RESULT_TYPES) | {"temperature_effective", "spectrum_c", "spectrum_alpha"}


class ResultsError(ValueError):
    """A results path that does not hold a phasemap dataset."""


def scan(results: str | Path) -> pl.LazyFrame:
    """A lazy polars frame over every Parquet file of a results folder."""
    results = Path(results)
    if not store.files(results):
        raise ResultsError(f"{results}: no phasemap results here (no .parquet files)")
    return pl.scan_parquet(str(results / "**" / "*.parquet"))


def summarize(results: str | Path) -> dict:
    """Runs, status counts, sweeps and varying axes with their values."""
    frame = scan(results)
    names = frame.collect_schema().names()
    scalar = [c for c in names if c not in NOT_AXES
              and not isinstance(frame.collect_schema()[c], pl.List)]
    counts = frame.select([pl.len().alias("runs"), *[pl.col(c).n_unique().alias(c) for c in scalar]]).collect()
    varying = [c for c in scalar if counts[c][0] > 1]
    axes = {c: frame.select(pl.col(c).unique().sort()).collect()[c].to_list() for c in varying}
    status = frame.group_by("status").len().collect()
    sweeps = frame.select(pl.col("sweep").unique().sort()).collect()["sweep"].to_list()
    return {
        "path": str(results),
        "runs": int(counts["runs"][0]),
        "status": {row["status"]: int(row["len"]) for row in status.iter_rows(named=True)},
        "sweeps": sweeps,
        "files": len(store.files(results)),
        "axes": axes,
    }
