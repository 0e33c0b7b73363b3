"""Parquet results: one dataset folder per sweep, one file per finished chunk, written atomically.

The location is a local or shared-filesystem path, or a URI that pyarrow's filesystems open
(s3://bucket/prefix, gs://..., file:///...), so every node of a cluster can write to it.

Every file has the same explicit Arrow schema, so polars, pandas, duckdb and pyarrow read the
folder as one table (`polars.read_parquet("results/NAME/**/*.parquet")`). A file is written to a
hidden temporary name in the same folder and moved into place, so a crash never leaves a
partial `.parquet` file that a reader would pick up, and a retried chunk replaces its own file.

    path = write_rows(rows, "results/quickstart", traces)   # traces: trace rows, or None
    done = run_ids("results/quickstart")
    steps = read_traces("results/quickstart")               # a polars DataFrame

Training traces (train.record) go to `_traces/` beside the runs, one file per runs file with the
same name, written just before it: a trace file counts only once its runs file exists (a crash
between the two leaves an orphan that readers ignore and `settle` deletes). Folder readers that
follow the convention of pyarrow, pandas and duckdb skip names starting with `_`, so they read
the runs table alone, as the runs readers here do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import types
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from phasemap import columns
from phasemap.spec import FIELDS

_SCALARS = {columns.INT: pa.int64(), columns.FLOAT: pa.float64(), columns.STR: pa.string(),
            columns.BOOL: pa.bool_(), columns.TIME: pa.timestamp("s", tz="UTC")}


def arrow_type(kind: str) -> pa.DataType:
    """The Arrow type of a phasemap.columns type name ("int64", "list<list<int64>>", ...)."""
    if kind.startswith("list<") and kind.endswith(">"):
        return pa.list_(arrow_type(kind[5:-1]))
    return _SCALARS[kind]


# Result columns after the config, and config keys that are derived or not plain (phasemap.columns).
RESULT_TYPES: dict[str, pa.DataType] = {k: arrow_type(v) for k, v in columns.RESULTS.items()}
DERIVED_TYPES: dict[str, pa.DataType] = {k: arrow_type(v) for k, v in columns.DERIVED.items()}
_PY_TO_ARROW = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}


# Write errors that trying again cannot fix: the disk or quota is full, the file is too large,
# the location is read-only, not ours, or not a folder.
_FINAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EISDIR, errno.ENOTDIR}


class StoreError(RuntimeError):
    """The results location cannot be read or written; the message says which path and why.

    `retryable` is False for errors a retry cannot fix (no space, no permission, ...).
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def _retryable(err: Exception) -> bool:
    return getattr(err, "errno", None) not in _FINAL_ERRNOS


def python_type(annotation) -> type | None:
    """int, float, bool or str behind a field's annotation (Annotated, Literal, Optional unwrapped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return python_type(get_args(annotation)[0])
    if origin is Literal:
        kinds = {type(v) for v in get_args(annotation)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (Union, types.UnionType):
        kinds = {python_type(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    return annotation if annotation in _PY_TO_ARROW else None


def _config_type(key: str) -> pa.DataType:
    """The Arrow type of a config column: from DERIVED_TYPES, else from the field's annotation
    (not its default, which may be None)."""
    if key in DERIVED_TYPES:
        return DERIVED_TYPES[key]
    if key in FIELDS:
        kind = python_type(FIELDS[key].annotation)
        if kind is None:
            raise KeyError(f"config key {key!r} has no plain Arrow type: add it to columns.DERIVED")
        return _PY_TO_ARROW[kind]
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


TRACES = "_traces"      # the folder of a results location's traces
TRACE_SCHEMA = pa.schema([pa.field(k, arrow_type(v)) for k, v in columns.TRACE.items()])


def traces_table(rows: list[dict]) -> pa.Table:
    """Trace rows to an Arrow table with the fixed trace schema."""
    return pa.Table.from_pydict({f.name: [row.get(f.name) for row in rows] for f in TRACE_SCHEMA},
                                schema=TRACE_SCHEMA)


def trace_path(runs_path: str) -> str:
    """Where the traces of a runs file live: _traces/ beside it, under the same name."""
    folder, name = runs_path.rsplit("/", 1)
    return f"{folder}/{TRACES}/{name}"


def chunk_name(run_ids: list[str]) -> str:
    """A file name that depends only on which runs a chunk holds (a retry overwrites, never duplicates)."""
    digest = hashlib.blake2b("\n".join(sorted(run_ids)).encode(), digest_size=8).hexdigest()
    return f"part-{digest}.parquet"


def location(out: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a results location: a local path or a URI (s3://, gs://, file://...)."""
    out = str(out)
    if "://" in out:
        try:
            return pafs.FileSystem.from_uri(out)
        except (pa.ArrowException, ValueError, OSError) as err:
            raise StoreError(f"cannot open results location {out}: {err}") from err
    return pafs.LocalFileSystem(), os.path.abspath(out)


def uri(out: str | Path, path: str) -> str:
    """A path from `files(out)` as other readers (polars) open it: with out's URI scheme, if any."""
    out = str(out)
    return f"{out.split('://', 1)[0]}://{path}" if "://" in out else path


def normalize(out: str | Path) -> str:
    """A location every process can use: an absolute path, or the URI unchanged."""
    out = str(out)
    return out if "://" in out else os.path.abspath(out)


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def _write_atomic(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """Write a Parquet file to a hidden temporary beside `path`, then move it into place."""
    folder = path.rsplit("/", 1)[0]
    tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
    try:
        fs.create_dir(folder, recursive=True)
        pq.write_table(table, tmp, filesystem=fs, compression="zstd")
        fs.move(tmp, path)          # a rename on local and POSIX shared filesystems
    except (OSError, pa.ArrowException):
        try:
            fs.delete_file(tmp)
        except (OSError, pa.ArrowException):
            pass  # never created, or the folder itself is unusable
        raise


META_KEY = b"phasemap"     # a runs file's metadata: {"sweep", "spec" (YAML), "versions"}


def write_rows(rows: list[dict], out: str | Path, traces: list[dict] | None = None, meta: dict | None = None) -> str:
    """Write one chunk's rows as one Parquet file, atomically, after its trace rows (if any) in
    _traces/; return the runs file's path. `meta` (JSON) goes into the file's metadata."""
    fs, folder = location(out)
    path = f"{folder}/{chunk_name([r['run_id'] for r in rows])}"
    table = to_table(rows)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    try:
        if traces:
            _write_atomic(fs, traces_table(traces), trace_path(path))
        _write_atomic(fs, table, path)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"cannot write results to {out}: {_reason(err)}", _retryable(err)) from err
    return path


def read_meta(out: str | Path) -> list[dict]:
    """The distinct metadata (write_rows' `meta`) of a location's runs files, most files first."""
    good, _ = _read_each(out, lambda fs, path: (pq.read_schema(path, filesystem=fs).metadata or {}).get(META_KEY))
    counts: dict[bytes, int] = {}
    for _, raw in good:
        if raw:
            counts[raw] = counts.get(raw, 0) + 1
    return [json.loads(raw) for raw, _ in sorted(counts.items(), key=lambda item: -item[1])]


def check_writable(out: str | Path) -> None:
    """Create the results location and write and delete a probe file there, or raise StoreError."""
    fs, folder = location(out)
    probe = f"{folder}/.probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(probe) as stream:
            stream.write(b"phasemap")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"cannot write results to {out}: {_reason(err)}") from err


DAMAGED_SUFFIX = ".damaged"   # appended by `run` to a file it cannot read, so that no reader sees it


def files(out: str | Path, suffix: str = ".parquet", traces: bool = False) -> list[str]:
    """The runs files of a results location, sorted: Parquet files at any depth, none under a
    folder whose name starts with `.` or `_` (temporaries, traces); with suffix=".parquet" +
    DAMAGED_SUFFIX, the damaged files `run` has set aside; with traces, the trace files instead."""
    fs, folder = location(out)
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"cannot read results at {out}: {_reason(err)}") from err

    def wanted(info: pafs.FileInfo) -> bool:
        if info.type != pafs.FileType.File or not info.base_name.endswith(suffix):
            return False
        parts = info.path[len(folder):].strip("/").split("/")
        if traces:
            return len(parts) > 1 and parts[-2] == TRACES and not any(p.startswith((".", "_")) for p in
                                                                       parts[:-2] + parts[-1:])
        return not any(p.startswith((".", "_")) for p in parts)

    return sorted(i.path for i in infos if wanted(i))


class DamagedFileWarning(UserWarning):
    """A results file that cannot be read: named, skipped by readers, set aside by `run`."""


_READERS = 8     # files read at once: footers and small columns are latency-bound on object stores


def _first_line(err: Exception) -> str:
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return line.split("': ", 1)[1] if line.startswith("Could not open Parquet input source '") else line


def _read_each(out: str | Path, read) -> tuple[list, list[tuple[str, str]]]:
    """read(fs, path) for every file of `out`, in parallel; ([(path, value)], [(path, reason)] damaged)."""
    paths = files(out)
    fs, _ = location(out)

    def attempt(path: str):
        try:
            return path, read(fs, path), None
        except (OSError, pa.ArrowException, ValueError) as err:
            return path, None, _first_line(err)

    with ThreadPoolExecutor(min(_READERS, max(1, len(paths)))) as pool:
        results = list(pool.map(attempt, paths))
    good = [(path, value) for path, value, reason in results if reason is None]
    return good, [(path, reason) for path, _, reason in results if reason is not None]


def _report(damaged: list[tuple[str, str]], out: str | Path, set_aside: bool) -> None:
    """Warn once per damaged file; with set_aside, rename it so that no reader sees it again."""
    fs, _ = location(out)
    for path, reason in damaged:
        action = "skipped"
        if set_aside:
            try:
                fs.move(path, path + DAMAGED_SUFFIX)
                action = f"set aside as {path.rsplit('/', 1)[-1]}{DAMAGED_SUFFIX}; its configs will run again"
            except (OSError, pa.ArrowException) as err:
                raise StoreError(f"cannot set aside the damaged file {path}: {_reason(err)}") from err
        warnings.warn(f"{path} is not a readable Parquet file ({reason}): {action}", DamagedFileWarning,
                      stacklevel=3)


def readable_files(out: str | Path) -> list[list[str]]:
    """The Parquet files of `out` whose footer reads, grouped by schema (files written by one
    phasemap version share one); every other file is named in a DamagedFileWarning."""
    good, damaged = _read_each(out, lambda fs, path: pq.read_metadata(path, filesystem=fs).schema.to_arrow_schema())
    _report(damaged, out, set_aside=False)
    groups: dict[str, list[str]] = {}
    for path, schema in good:
        groups.setdefault(schema.to_string(show_schema_metadata=False), []).append(path)
    return list(groups.values())


# A file that has none of these config columns was measured by an earlier definition: without
# sign_identify (which every MLP row carries) or family (which every other family's row carries),
# by phasemap before symmetry-aware Delta, whose n_dos, n_dosb and deltas count +-copies and dead
# pairs otherwise; `run` adds no rows beside it, which would mix two meanings of one column.
RESUME_COLUMNS = ("sign_identify", "family")


class OutdatedResultsError(StoreError):
    """A results folder holds rows whose metrics an earlier phasemap measured differently."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


def _index(out: str | Path, set_aside: bool = False) -> tuple[pa.Table | None, list[str]]:
    """run_id and status of every row, with the file each row is in, and the files that have no
    RESUME_COLUMNS column; damaged files are left out (and renamed out of the way with set_aside)."""
    def read_index(fs, path):
        file = pq.ParquetFile(path, filesystem=fs)
        names = set(file.schema_arrow.names)
        return file.read(columns=["run_id", "status"]), names.isdisjoint(RESUME_COLUMNS)

    good, damaged = _read_each(out, read_index)
    _report(damaged, out, set_aside)
    outdated = [path for path, (_, old) in good if old]
    if not good:
        return None, outdated
    # The file as a dictionary column: a million rows hold a few hundred paths, not a million.
    paths = pa.array([path for path, _ in good], pa.string())
    tables = [t.append_column("file", pa.DictionaryArray.from_arrays(pa.array(np.full(t.num_rows, i, np.int32)), paths))
              for i, (_, (t, _)) in enumerate(good)]
    return pa.concat_tables(tables), outdated


def run_ids(out: str | Path, set_aside: bool = False) -> set[str]:
    """The run_ids already finished in a results location: ok or diverged (failed ones are retried).

    A damaged file is named in a DamagedFileWarning and left out, so its configs count as to do;
    set_aside=True (what `run` does) also renames it to NAME.parquet.damaged. A location holding
    rows an earlier phasemap measured differently (see RESUME_COLUMNS) raises OutdatedResultsError.
    """
    index, outdated = _index(out, set_aside)
    if outdated:
        raise _outdated(out, outdated)
    return _finished(index)


def _outdated(out: str | Path, outdated: list[str]) -> OutdatedResultsError:
    return OutdatedResultsError(
        f"{normalize(out)} holds {len(outdated)} file(s) written before phasemap measured Delta with the "
        f"sign-flip symmetry and dead pairs (no {' or '.join(RESUME_COLUMNS)} column, e.g. "
        f"{outdated[0].rsplit('/', 1)[-1]}); new rows would mix two meanings of n_dos: write this sweep "
        "to a new folder (--out), or move those files away")


def _finished(index: pa.Table | None) -> set[str]:
    if index is None:
        return set()
    return set(index.filter(pc.not_equal(index["status"], "failed"))["run_id"].to_pylist())


def _ids_of(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Run_ids (Arrow strings) as a numpy array of 32-byte strings, from the Arrow buffers."""
    ids = (column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column).cast(pa.string())
    if len(ids) and pc.all(pc.equal(pc.utf8_length(ids), 32)).as_py():
        offsets, data = ids.buffers()[1:3]
        start = np.frombuffer(offsets, dtype=np.int32, count=1, offset=4 * ids.offset)[0]
        return np.frombuffer(data, dtype="S32", count=len(ids), offset=int(start)).copy()
    return np.array([r.encode() for r in ids.to_pylist()], dtype="S32")   # hand-made ids of another length


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """Sorted ids (in place) without repeats."""
    ids.sort()
    return ids[np.r_[True, ids[1:] != ids[:-1]]] if len(ids) and (ids[1:] == ids[:-1]).any() else ids


def finished_ids(index: pa.Table | None) -> np.ndarray:
    """The finished run_ids of an index as a sorted numpy array of 32-byte strings (grid.ids_array form)."""
    if index is None:
        return np.zeros(0, dtype="S32")
    return _sorted_unique(_ids_of(index.filter(pc.not_equal(index["status"], "failed"))["run_id"]))


def _scan_ids(out: str | Path, set_aside: bool = False) -> tuple[np.ndarray, bool, list[str]]:
    """Every file's finished run_ids, converted as each file is read (a million runs: ~32 MB, not an
    index table): (sorted ids with repeats, whether any row failed, the outdated files)."""
    def read_ids(fs, path):
        file = pq.ParquetFile(path, filesystem=fs)
        table = file.read(columns=["run_id", "status"])
        failed = pc.equal(table["status"], "failed")
        return (_ids_of(table.filter(pc.invert(failed))["run_id"]), pc.any(failed).as_py() or False,
                set(file.schema_arrow.names).isdisjoint(RESUME_COLUMNS))

    good, damaged = _read_each(out, read_ids)
    _report(damaged, out, set_aside)
    failed, outdated = any(f for _, (_, f, _) in good), [path for path, (_, _, old) in good if old]
    ids = np.concatenate([i for _, (i, _, _) in good]) if good else np.zeros(0, dtype="S32")
    del good
    ids.sort()                         # in place: a million ids cost 32 MB once
    return ids, failed, outdated


def _prefix_key(ids: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each id as a big-endian uint64: sorts as the ids do (bytewise) and
    compares 20x faster; 32 bits of a hex id's hash, so a million ids share a few hundred keys."""
    return np.ascontiguousarray(ids).view(np.uint8).reshape(len(ids), ids.dtype.itemsize)[:, :8].copy() \
        .view(">u8").ravel().astype(np.uint64)


class IdIndex:
    """Sorted run_ids (grid.ids_array form) for membership tests, built once and asked often: a
    binary search on 64-bit prefixes, each hit confirmed on the whole id (ids sharing a prefix: by
    a full search)."""

    def __init__(self, sorted_ids: np.ndarray):
        self.ids, self.keys = sorted_ids, _prefix_key(sorted_ids)

    def among(self, ids: np.ndarray) -> np.ndarray:
        """A mask: which of `ids` are in the index."""
        if not len(self.ids) or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        wanted = _prefix_key(ids)
        at = np.searchsorted(self.keys, wanted).clip(max=len(self.ids) - 1)
        found = self.ids[at] == ids
        shared = np.flatnonzero(~found & (self.keys[at] == wanted))      # a prefix shared by two ids
        if len(shared):
            full = np.searchsorted(self.ids, ids[shared]).clip(max=len(self.ids) - 1)
            found[shared] = self.ids[full] == ids[shared]
        return found


def finished(out: str | Path, set_aside: bool = False) -> np.ndarray:
    """`run_ids(out)` as a sorted numpy array of 32-byte strings: what a plan of a million configs
    compares against (`among`), in tens of MB instead of a Python set."""
    ids, _, outdated = _scan_ids(out, set_aside)
    if outdated:
        raise _outdated(out, outdated)
    return _sorted_unique(ids)


def compact(out: str | Path) -> int:
    """Keep one row per run_id (see `settle`); return the number of rows dropped."""
    return settle(out)[0]


def settle(out: str | Path) -> tuple[int, np.ndarray]:
    """Keep one row per run_id: a finished row over a failed one, else the first file's; return
    the rows dropped and the finished run_ids (`finished_ids`), from one read of the index.

    Rows are duplicated when a failed config is retried by a rerun (the new file holds its
    finished row), or when a killed driver's last trial finished writing after the rerun had
    planned the same configs. Files losing rows are rewritten atomically; emptied files are
    deleted. Dropping never removes a finished run_id, so the set is the folder's after the call.
    """
    ids, any_failed, _ = _scan_ids(out)
    if not any_failed and not (ids[1:] == ids[:-1]).any():     # the usual case: nothing to drop
        _drop_orphan_traces(out)
        return 0, ids
    index, _ = _index(out)
    if index is None:
        return 0, finished_ids(None)
    frame = pl.from_arrow(index).with_row_index("row").with_columns(
        (pl.col("status") == "failed").alias("is_failed"))
    keep = frame.sort(["is_failed", "row"]).unique("run_id", keep="first")
    dropped = frame.join(keep.select("row"), on="row", how="anti")
    fs, _ = location(out)
    for (path,), group in dropped.group_by("file"):
        # A file never holds a run_id twice, so its dropped rows are named by run_id; its traces
        # lose the same runs (written first: a crash between leaves traces of runs still listed).
        gone = group["run_id"].to_arrow()
        for target in (trace_path(path), path):
            try:
                if target != path and not _exists(fs, target):
                    continue
                table = pq.read_table(target, filesystem=fs)
                remaining = table.filter(pc.invert(pc.is_in(table["run_id"], gone)))
                if remaining.num_rows:
                    _write_atomic(fs, remaining, target)
                else:
                    fs.delete_file(target)
            except (OSError, pa.ArrowException) as err:
                raise StoreError(f"cannot rewrite {target}: {_reason(err)}") from err
    _drop_orphan_traces(out)
    return dropped.height, finished_ids(index)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _committed_traces(out: str | Path) -> tuple[list[str], list[str]]:
    """(trace files whose runs file exists, orphans: traces of a chunk whose runs file was never written)."""
    fs, _ = location(out)
    paths = files(out, traces=True)
    runs = set(files(out))
    committed = [p for p in paths if p.replace(f"/{TRACES}/", "/") in runs]
    return committed, [p for p in paths if p not in set(committed)]


def _drop_orphan_traces(out: str | Path) -> None:
    fs, _ = location(out)
    for path in _committed_traces(out)[1]:
        try:
            fs.delete_file(path)
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot delete the orphan trace file {path}: {_reason(err)}") from err


def read_traces(out: str | Path, run_ids: set[str] | None = None) -> pl.DataFrame:
    """Every committed trace row of a results location (one per run_id and step), sorted by
    run_id and step; only those of `run_ids` when given. Empty (with the trace columns) when the
    location has no traces."""
    paths = _committed_traces(out)[0]
    empty = pl.from_arrow(TRACE_SCHEMA.empty_table())
    if not paths:
        return empty
    fs, _ = location(out)
    tables = [pq.read_table(p, filesystem=fs, schema=TRACE_SCHEMA) for p in paths]
    frame = pl.from_arrow(pa.concat_tables(tables))
    if run_ids is not None:
        frame = frame.filter(pl.col("run_id").is_in(list(run_ids)))
    return frame.unique(["run_id", "step"], keep="first", maintain_order=True).sort(["run_id", "step"])
