"""Parquet results: a fixed schema, readable by polars/pandas/pyarrow, written atomically."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from phasemap import store
from phasemap.grid import expand
from phasemap.runner import failed_rows, run_chunk
from phasemap.spec import parse_spec

REQUIRED = ["run_id", "sweep", "status", "gamma", "temperature", "lr", "batch_size", "sigma", "width",
            "teacher_rank", "seed", "depth", "activation", "optimizer", "steps", "train_loss", "test_loss",
            "n_distinct", "n_dead", "n_dos", "n_dosb", "weight_rank", "rep_rank", "symmetry_class",
            "layer_n_distinct", "layer_symmetry_class", "layer_groups", "deltas", "train_seconds"]


ROOT = Path(__file__).resolve().parents[1]


def make_rows() -> list[dict]:
    raw = {"name": "st", "task": {"teacher_rank": 2, "input_dim": 3, "n_train": 16, "n_test": 8},
           "model": {"width": 4}, "train": {"steps": 10}, "grid": {"gamma": [0.0, 0.1], "seed": {"range": 2}}}
    out = run_chunk(expand(parse_spec(raw)), "cpu")
    for row in out:
        row["sweep"] = "st"
    return out


@pytest.fixture(scope="module")
def rows():
    return make_rows()


def test_rows_round_trip_with_every_required_column(tmp_path, rows):
    path = store.write_rows(rows, tmp_path)
    frame = pl.read_parquet(str(tmp_path / "**" / "*.parquet"))
    assert set(REQUIRED) <= set(frame.columns)
    assert frame.height == 4 and frame["run_id"].n_unique() == 4
    assert frame["layer_groups"].dtype == pl.List(pl.List(pl.Int64))
    assert pd.read_parquet(path).shape[0] == 4
    assert pq.read_table(path).num_rows == 4
    assert store.run_ids(tmp_path) == {r["run_id"] for r in rows}


def test_every_config_key_has_a_schema_type():
    for raw in ({"name": "a", "task": {"teacher_rank": 2}},
                {"name": "b", "task": {"teacher": "linear", "spectrum": {"power_law": {"c": 1, "alpha": 1}}}}):
        cfg = expand(parse_spec(raw))[0]
        schema = store.schema_for(list(cfg))
        assert set(cfg) <= set(schema.names)


def test_failed_rows_share_the_schema_of_ok_rows(tmp_path, rows):
    store.write_rows(rows[:2], tmp_path)
    config = {k: v for k, v in rows[2].items() if k not in store.RESULT_TYPES or k == "run_id"}
    bad = failed_rows([config], "RuntimeError: boom")
    bad[0]["sweep"] = "st"
    store.write_rows(bad, tmp_path)
    frame = pl.read_parquet(str(tmp_path / "*.parquet"))
    assert sorted(frame["status"].to_list()) == ["failed", "ok", "ok"]
    assert frame.filter(pl.col("status") == "failed")["error"].to_list() == ["RuntimeError: boom"]


def test_a_crash_mid_write_leaves_no_partial_file(tmp_path, rows, monkeypatch):
    first = Path(store.write_rows(rows[:2], tmp_path))
    before = first.read_bytes()

    def crash(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", crash)
    with pytest.raises(store.StoreError, match="No space left"):
        store.write_rows(rows[2:], tmp_path)
    assert store.files(tmp_path) == [str(first)]
    assert first.read_bytes() == before
    assert list(tmp_path.iterdir()) == [first]          # the temporary is gone too
    assert pl.read_parquet(str(tmp_path / "*.parquet")).height == 2


def test_a_retried_chunk_replaces_its_own_file(tmp_path, rows):
    a = store.write_rows(rows, tmp_path)
    b = store.write_rows(list(reversed(rows)), tmp_path)
    assert a == b
    assert pl.read_parquet(str(tmp_path / "*.parquet")).height == len(rows)


def test_unwritable_location_is_a_clear_error(tmp_path, rows):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(store.StoreError, match="cannot write results"):
        store.write_rows(rows, blocker / "out")


def test_failed_configs_are_retried_and_the_retry_supersedes_them(tmp_path, rows):
    config = {k: v for k, v in rows[2].items() if k not in store.RESULT_TYPES or k == "run_id"}
    store.write_rows(rows[:2] + failed_rows([config], "RuntimeError: boom"), tmp_path)
    assert store.run_ids(tmp_path) == {r["run_id"] for r in rows[:2]}    # the failed one is to run again
    store.write_rows([rows[2]], tmp_path)                                # the rerun's row
    assert store.compact(tmp_path) == 1
    frame = pl.read_parquet(str(tmp_path / "*.parquet"))
    assert frame.height == 3 and frame["run_id"].n_unique() == 3
    assert set(frame["status"]) == {"ok"}
    assert store.compact(tmp_path) == 0                                  # nothing left to do


def test_compact_keeps_one_row_when_two_files_hold_the_same_run(tmp_path, rows):
    store.write_rows(rows[:2], tmp_path)
    store.write_rows(rows[1:], tmp_path)       # a stale trial of a killed driver wrote an overlapping chunk
    assert pl.read_parquet(str(tmp_path / "*.parquet")).height == len(rows) + 1
    assert store.compact(tmp_path) == 1
    frame = pl.read_parquet(str(tmp_path / "*.parquet"))
    assert sorted(frame["run_id"]) == sorted(r["run_id"] for r in rows)


def test_a_uri_location_round_trips(tmp_path, rows):
    uri = f"file://{tmp_path}/by-uri"
    path = store.write_rows(rows, uri)
    assert path.endswith(".parquet") and Path(path).is_file()
    assert store.run_ids(uri) == {r["run_id"] for r in rows}
    assert store.files(uri) == [path]


@pytest.mark.parametrize("by_uri", [False, True])
def test_files_from_an_older_version_without_a_column_are_read_beside_new_ones(tmp_path, rows, by_uri):
    from phasemap.summary import scan, summarize
    folder = tmp_path / "mixed"
    old = pq.read_table(store.write_rows(rows[:2], folder)).drop_columns(["backend"])
    for path in store.files(folder):
        Path(path).unlink()
    pq.write_table(old, folder / "part-old.parquet")
    store.write_rows(rows[2:], folder)
    location = f"file://{folder}" if by_uri else str(folder)
    frame = scan(location).collect()
    assert frame.height == len(rows) and set(frame["run_id"]) == {r["run_id"] for r in rows}
    by_run = dict(zip(frame["run_id"], frame["backend"]))
    assert [by_run[r["run_id"]] for r in rows] == [None, None] + [r["backend"] for r in rows[2:]]
    assert summarize(location)["runs"] == len(rows)


def test_check_writable_names_the_location_and_the_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(store.StoreError, match=r"cannot write results to .*file/out"):
        store.check_writable(blocker / "out")
    store.check_writable(tmp_path / "fine")
    assert list((tmp_path / "fine").iterdir()) == []          # the probe is removed


_FULL_DISK = """
import resource, signal, sys
from phasemap import store
from tests.test_store import make_rows
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
rows = make_rows()
store.write_rows(rows[:1], sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))   # every later write past 64 bytes fails (EFBIG)
try:
    store.write_rows(rows[1:], sys.argv[1])
except store.StoreError as err:
    print(err)
"""


def test_a_full_output_location_is_a_clear_error_and_keeps_earlier_files(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cannot write results to" in done.stdout and "too large" in done.stdout.lower()
    assert len(store.files(out)) == 1 and [p.name for p in out.iterdir()] == [Path(store.files(out)[0]).name]
    assert pl.read_parquet(store.files(out)[0]).height == 1


def test_a_damaged_file_is_named_left_out_by_readers_and_set_aside_only_by_run(tmp_path, rows):
    from phasemap.summary import summarize

    store.write_rows(rows[:2], tmp_path)
    damaged = Path(store.write_rows(rows[2:], tmp_path))
    damaged.write_bytes(damaged.read_bytes()[:100])           # a write cut short by a crash, say
    with pytest.warns(store.DamagedFileWarning, match=f"{damaged} is not a readable Parquet file .*skipped"):
        assert summarize(tmp_path)["runs"] == 2
    with pytest.warns(store.DamagedFileWarning, match="skipped"):
        assert store.run_ids(tmp_path) == {r["run_id"] for r in rows[:2]}
    assert damaged.exists()                                    # readers never move files
    with pytest.warns(store.DamagedFileWarning, match=r"set aside as .*\.parquet\.damaged; its configs will run"):
        assert store.run_ids(tmp_path, set_aside=True) == {r["run_id"] for r in rows[:2]}
    assert not damaged.exists() and Path(f"{damaged}.damaged").exists()
    assert len(store.files(tmp_path)) == 1


def test_unfixable_write_errors_are_marked_not_retryable(tmp_path, rows):
    (tmp_path / store.chunk_name([r["run_id"] for r in rows])).mkdir()
    with pytest.raises(store.StoreError) as err:
        store.write_rows(rows, tmp_path)
    assert not err.value.retryable


def test_the_finished_ids_array_is_the_run_id_set_without_failed_rows(tmp_path, rows):
    store.write_rows(rows[:3], tmp_path)
    store.write_rows(failed_rows([rows[3]], "RuntimeError: boom"), tmp_path)
    store.write_rows([{**rows[0], "run_id": "short-hand-made-id", "seed": 9}], tmp_path)
    done = store.finished(tmp_path)
    assert done.dtype == "S32" and list(done) == sorted(done)
    assert {d.decode() for d in done} == store.run_ids(tmp_path) == {r["run_id"] for r in rows[:3]} | {"short-hand-made-id"}
    dropped, settled = store.settle(tmp_path)
    assert dropped == 0 and settled.tolist() == done.tolist()


def test_membership_holds_for_ids_that_share_a_prefix_or_are_not_hex():
    import hashlib

    import numpy as np

    from phasemap.grid import ids_array

    ids = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(3000)]
    twins = [ids[0][:8] + "0" * 24, ids[1][:16] + "f" * 16]        # same 8- and 16-character prefixes
    odd = ["b", "short-hand-made-id", "ZZZZZZZZZZ"]
    pool = np.sort(ids_array(ids[:2000] + twins[:1] + odd[:1]))
    query = ids_array(ids + twins + odd)
    index = store.IdIndex(pool)
    assert index.among(query).tolist() == np.isin(query, pool).tolist()
    assert index.among(query).sum() == 2002


def test_a_runs_file_carries_the_sweep_and_versions_it_was_written_with(tmp_path, rows):
    store.write_rows(rows[:2], tmp_path, meta={"sweep": "st", "spec": "name: st\n", "versions": {"torch": "x"}})
    store.write_rows(rows[2:], tmp_path)                                  # an older file: no metadata
    assert store.read_meta(tmp_path) == [{"sweep": "st", "spec": "name: st\n", "versions": {"torch": "x"}}]
    assert pl.read_parquet(store.files(tmp_path)).height == len(rows)     # readers are unaffected
