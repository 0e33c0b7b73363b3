"""Parquet results: a fixed schema, readable by polars/pandas/pyarrow, written atomically."""

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


@pytest.fixture(scope="module")
def rows():
    raw = {"name": "st", "task": {"teacher_rank": 2, "input_dim": 3, "n_train": 16, "n_test": 8},
           "model": {"width": 4}, "train": {"steps": 10}, "grid": {"gamma": [0.0, 0.1], "seed": {"range": 2}}}
    out = run_chunk(expand(parse_spec(raw)), "cpu")
    for row in out:
        row["sweep"] = "st"
    return out


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
    first = store.write_rows(rows[:2], tmp_path)
    before = first.read_bytes()

    def crash(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", crash)
    with pytest.raises(store.StoreError, match="No space left"):
        store.write_rows(rows[2:], tmp_path)
    assert store.files(tmp_path) == [first]
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
