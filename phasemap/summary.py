"""What a results folder holds: run count, status counts, and the axes (config keys that vary).

    info = summarize("results/quickstart")
    info["axes"]["gamma"]  # sorted distinct values
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from phasemap import columns, store

# Result columns and values derived from the axes are never axes themselves.


class ResultsError(ValueError):
    """A results path that does not hold a phasemap dataset."""


def readable(results: str | Path) -> list[list[str]]:
    """The readable Parquet files of a results folder or URI, grouped by schema; damaged ones are
    named in a warning."""
    try:
        found = store.readable_files(results)
        if not found:     # list the folder again only to say why nothing is readable
            damaged = bool(store.files(results))
    except store.StoreError as err:
        raise ResultsError(str(err)) from err
    if not found:
        raise ResultsError(f"{results}: no readable phasemap results here (every .parquet file is damaged)"
                           if damaged else f"{results}: no phasemap results here (no .parquet files)")
    return found


def scan(results: str | Path, groups: list[list[str]] | None = None) -> pl.LazyFrame:
    """A lazy polars frame over every Parquet file of a results folder or URI (s3://, gs://, ...).

    Files written by other phasemap versions may lack columns added since (or hold ones since
    dropped): the frame has the union of the columns, null where a file has none. Files of one
    schema are scanned together (one scan per phasemap version, not per file). A damaged file is
    named in a store.DamagedFileWarning and left out.
    """
    groups = groups if groups is not None else readable(results)
    frames = [pl.scan_parquet([store.uri(results, path) for path in paths]) for paths in groups]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


def varying_axes(frame: pl.LazyFrame) -> list[str]:
    """Scalar config columns that take more than one value."""
    schema = frame.collect_schema()
    names = [n for n, t in schema.items() if n not in columns.NOT_AXES and not isinstance(t, pl.List)]
    if not names:
        return []
    counts = frame.select([pl.col(n).n_unique() for n in names]).collect().row(0)
    return [n for n, k in zip(names, counts) if k > 1]


def summarize(results: str | Path) -> dict:
    """Runs, status counts, sweeps, varying axes with their values, and damaged files set aside."""
    found = readable(results)
    frame = scan(results, found)
    axes = {c: frame.select(pl.col(c).unique().sort()).collect()[c].to_list() for c in varying_axes(frame)}
    status = frame.group_by("status").len().collect()
    sweeps = frame.select(pl.col("sweep").unique().sort()).collect()["sweep"].to_list()
    return {
        "path": str(results),
        "runs": int(frame.select(pl.len()).collect().item()),
        "status": {row["status"]: int(row["len"]) for row in status.iter_rows(named=True)},
        "sweeps": sweeps,
        "files": sum(map(len, found)),
        "set_aside": store.files(results, ".parquet" + store.DAMAGED_SUFFIX),
        "notes": _rank_notes(frame),
        "axes": axes,
    }


def _rank_notes(frame: pl.LazyFrame) -> list[str]:
    """Which rank column answers what, where the whole product's rank cannot say much."""
    names = frame.collect_schema().names()
    if "weight_rank" not in names or "output_dim" not in names:
        return []
    mlp = pl.col("family").is_null() if "family" in names else pl.lit(True)    # a transformer's is its readout's
    widest = frame.filter(mlp).select(pl.col("output_dim").max()).collect().item()
    if widest is None or widest > 1:
        return []
    return ["weight_rank is the rank of the whole product W_D...W_1, at most output_dim = 1 here: "
            "for rank questions use layer_weight_rank (each layer's weights) or rep_rank (the last hidden "
            "representation on the test inputs)"]
