"""Parquet results: one dataset folder per sweep, one file per finished chunk, written atomically.

Every file has the same explicit Arrow schema, so polars, pandas, duckdb and pyarrow read the
folder as one table (`polars.read_parquet("results/NAME/**/*.parquet")`). A file is written to a
hidden temporary name in the same folder and renamed into place, so a crash never leaves a
partial `.parquet` file that a reader would pick up, and a retried chunk replaces its own file.

    path = write_rows(rows, "results/quickstart")
    done = run_ids("results/quickstart")
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from phasemap.spec import SECTIONS

_STR, _F64, _I64, _BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()
_I64_LIST, _STR_LIST = pa.list_(_I64), pa.list_(_STR)

# Result columns after the config; scalar metrics describe the first hidden layer.
RESULT_TYPES: dict[str, pa.DataType] = {
    "run_id": _STR, "sweep": _STR, "status": _STR, "error": _STR,
    "train_loss": _F64, "test_loss": _F64, "diverged_step": _I64,
    "n_distinct": _I64, "n_dead": _I64, "n_dos": _I64, "n_dosb": _I64,
    "weight_rank": _I64, "rep_rank": _I64, "symmetry_class": _STR,
    "layer_n_distinct": _I64_LIST, "layer_n_dead": _I64_LIST, "layer_n_dos": _I64_LIST,
    "layer_n_dosb": _I64_LIST, "layer_weight_rank": _I64_LIST, "layer_symmetry_class": _STR_LIST,
    "layer_groups": pa.list_(_I64_LIST), "deltas": pa.list_(_F64),
    "train_seconds": _F64, "batch_seconds": _F64, "batch_models": _I64,
    "device": _STR, "host": _STR, "finished_at": pa.timestamp("s", tz="UTC"),
}
# Keys the resolution step adds beside the section keys, and keys whose type is not plain.
DERIVED_TYPES: dict[str, pa.DataType] = {
    "batch_size": _I64, "temperature": _F64, "temperature_effective": _F64,
    "spectrum": pa.list_(_F64), "spectrum_c": _F64, "spectrum_alpha": _F64,
    "teacher_rank": _I64, "data_seed": _I64,
}
_PY_TO_ARROW = {int: _I64, float: _F64, bool: _BOOL, str: _STR}


class StoreError(RuntimeError):
    """The results location cannot be read or written; the message says which path and why."""


def _config_type(key: str) -> pa.DataType:
    if key in DERIVED_TYPES:
        return DERIVED_TYPES[key]
    for cls in SECTIONS.values():
        if key in cls.model_fields:
            default = cls.model_fields[key].default
            return _PY_TO_ARROW[type(default)]
    raise KeyError(f"no Arrow type for config key {key!r}")


def schema_for(columns: list[str]) -> pa.Schema:
    """The Arrow schema for rows with these columns (result columns first, then config)."""
    config = [c for c in columns if c not in RESULT_TYPES]
    fields = [pa.field(k, t) for k, t in RESULT_TYPES.items()]
    fields += [pa.field(k, _config_type(k)) for k in sorted(config)]
    return pa.schema(fields)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) to an Arrow table with the fixed schema; missing values become nulls."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    schema = schema_for(columns)
    data = {f.name: [row.get(f.name) for row in rows] for f in schema}
    data["finished_at"] = [None if t is None else int(t) for t in data["finished_at"]]
    return pa.Table.from_pydict(data, schema=schema)


def chunk_name(run_ids: list[str]) -> str:
    """A file name that depends only on which runs a chunk holds (a retry overwrites, never duplicates)."""
    digest = hashlib.blake2b("\n".join(sorted(run_ids)).encode(), digest_size=8).hexdigest()
    return f"part-{digest}.parquet"


def write_rows(rows: list[dict], out_dir: str | Path) -> Path:
    """Write one chunk's rows as one Parquet file, atomically; return its path."""
    out_dir = Path(out_dir)
    path = out_dir / chunk_name([r["run_id"] for r in rows])
    tmp = out_dir / f".tmp-{uuid.uuid4().hex}"
    table = to_table(rows)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is unusable; nothing was created there
        raise StoreError(f"cannot write results to {out_dir}: {err.strerror or err}") from err
    return path


def _dataset(out_dir: str | Path) -> ds.Dataset | None:
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or not any(out_dir.rglob("*.parquet")):
        return None
    # Hidden and underscore files (temporaries) are ignored by pyarrow's discovery.
    return ds.dataset(str(out_dir), format="parquet")


def run_ids(out_dir: str | Path) -> set[str]:
    """The run_ids already written in a results folder (empty if it does not exist)."""
    data = _dataset(out_dir)
    if data is None:
        return set()
    return set(data.to_table(columns=["run_id"]).column("run_id").to_pylist())


def files(out_dir: str | Path) -> list[Path]:
    """The Parquet files of a results folder, sorted."""
    return sorted(Path(out_dir).rglob("*.parquet"))
