"""train.record: record steps, traces that change no numbers, the second table beside the runs, settled."""

import json
import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from conftest import configs_of, tiny_raw, wait_for_a_chunk
from phasemap import backends, columns, engine, recording, store
from phasemap.analysis.dynamics import breaking_times, chance, coincidence, drop_times, loss_rates, run_dynamics
from phasemap.cli import app
from phasemap.runner import train_chunk
from test_backends import CASES, case_config


def test_schedules_end_at_the_last_step_and_merge_repeats():
    assert recording.schedule(None, 100) == []
    assert recording.schedule("every:30", 100) == [0, 30, 60, 90, 100]
    assert recording.schedule("every:25", 100) == [0, 25, 50, 75, 100]
    log = recording.schedule("log:5", 10_000)
    assert log == [0, 1, 10, 100, 1000, 10_000]
    short = recording.schedule("log:50", 20)               # 50 log-spaced points round to fewer steps
    assert short[:2] == [0, 1] and short[-1] == 20 and short == sorted(set(short)) and len(short) < 51
    assert recording.settle_step(2000) == 1800 and recording.settle_step(1) == 1


class Stops:
    """An observer that keeps what the engine hands it."""

    def __init__(self, steps):
        self.steps = steps
        self.seen = []

    def __call__(self, step, params, diverged_step):
        self.seen.append((step, [p.clone() for p in params]))


def _trains(name: str, case: str) -> bool:
    batch = engine.build_batch([case_config(tiny_raw, case)])
    return backends.get(name).supports(batch.family, batch.arch, batch.optimizer, "cpu", batch.x.dtype) is None


# Every (backend, case) pair the backend trains (test_backends checks the refusals of the others).
RECORD_CASES = [pytest.param(name, case, marks=[pytest.mark.slow] if name == "compiled" else [])
                for name in backends.NAMES for case in CASES if _trains(name, case)]


@pytest.mark.parametrize("name,case", RECORD_CASES)
def test_stopping_to_record_changes_no_number_on_any_backend(tiny, name, case):
    cfg = case_config(tiny, case)
    batch = engine.build_batch([cfg, cfg])
    plain = engine.fit(batch, name)
    stops = Stops([0, 1, 2, 7, 13, 24, 25])
    observed = engine.fit(batch, name, observe=stops)
    assert [s for s, _ in stops.seen] == stops.steps
    for a, b in zip(plain.params, observed.params):
        assert torch.equal(a, b), (name, case)
    assert torch.equal(plain.train_loss, observed.train_loss)
    for a, b in zip(dict(stops.seen)[0], batch.params):          # step 0: the initialisation
        assert torch.equal(a, b)
    # the state handed over at step 13 is the state a 13-step run ends in
    short = engine.fit(engine.build_batch([{**cfg, "steps": 13}] * 2), name)
    for a, b in zip(dict(stops.seen)[13], short.params):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (name, case)


def test_the_fused_kernel_still_checks_divergence_every_100_steps_between_stops(tiny):
    cfg = configs_of(tiny(train={"lr": 50.0, "steps": 400}, grid={}))[0]   # blows up at once
    batch = engine.build_batch([cfg])
    assert engine.pick_backend(batch) == "fused"
    plain = engine.fit(batch)
    recorded = engine.fit(batch, observe=Stops([3, 37, 150, 333]))
    assert plain.diverged_step.tolist() == recorded.diverged_step.tolist() == [100]


def recorded_raw(tiny, record=None, **sections):
    train = {"steps": 120, "lr": 0.2, "record": record or {"every": 10}}
    return tiny(train=train, model={"init_scale": 0.05}, **sections)


def test_a_trace_ends_at_the_runs_final_row_and_each_row_is_the_state_after_that_many_steps(tiny):
    configs = configs_of(recorded_raw(tiny))
    rows, traces = train_chunk(configs, "cpu")
    assert len(traces) == len(configs) * 13
    by_run = pl.DataFrame(traces).sort("run_id", "step")
    for row in rows:
        trace = by_run.filter(pl.col("run_id") == row["run_id"])
        assert trace["step"].to_list() == list(range(0, 121, 10))
        last = trace.row(-1, named=True)
        assert last["train_loss"] == pytest.approx(row["train_loss"], rel=1e-5)
        assert last["test_loss"] == pytest.approx(row["test_loss"], rel=1e-5)
        for key in ("n_dos", "n_distinct", "weight_rank"):
            assert last[key] == row[key], key
        assert np.allclose(last["deltas"], row["deltas"])
    # step 60 of the trace is the final state of the same runs trained for 60 steps
    short, _ = train_chunk(configs_of(tiny(train={"steps": 60, "lr": 0.2}, model={"init_scale": 0.05})), "cpu")
    at_60 = by_run.filter(pl.col("step") == 60)
    for a, b in zip(sorted(short, key=lambda r: (r["gamma"], r["seed"])),
                    sorted(at_60.join(pl.DataFrame(rows).select("run_id", "gamma", "seed"), on="run_id").to_dicts(),
                           key=lambda r: (r["gamma"], r["seed"]))):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["n_distinct"] == b["n_distinct"]


def test_transformers_record_their_attention_layers(tiny):
    cfg = case_config(tiny, "transformer-adamw")
    cfg = {**cfg, "record": "log:6", "run_id": "t"}
    rows, traces = train_chunk([cfg], "cpu")
    assert [t["step"] for t in traces] == recording.schedule("log:6", cfg["steps"])
    assert all(len(t["layer_n_dos"]) == cfg["n_layers"] and t["n_distinct"] is None for t in traces)
    assert traces[-1]["layer_n_dos"] == rows[0]["layer_n_dos"]


def test_settled_says_whether_the_class_moved_over_the_last_tenth(tiny):
    # Record every step so the trace holds the settle step; `settled` must agree with it.
    configs = configs_of(recorded_raw(tiny, {"every": 1}, grid={"gamma": [0.0, 0.01], "seed": {"range": 6}}))
    rows, traces = train_chunk(configs, "cpu")
    trace = pl.DataFrame(traces)
    settle = recording.settle_step(120)
    seen = set()
    for row in rows:
        at = trace.filter((pl.col("run_id") == row["run_id"]) & (pl.col("step") == settle)).row(0, named=True)
        same = at["n_distinct"] == row["n_distinct"] and at["weight_rank"] == row["weight_rank"]
        assert row["settled"] is same
        assert (row["settle_change"] == 0) is same
        seen.add(same)
    assert recording.settle_change({"n_distinct": 4, "weight_rank": 1}, {"n_distinct": 5, "weight_rank": 1}) == 0.25
    assert recording.settle_change({"n_distinct": None, "n_dos": 3, "weight_rank": 1},
                                   {"n_dos": 3, "weight_rank": 1}) == 0
    assert recording.settle_change({"n_distinct": 4, "weight_rank": 1}, {}) is None


def write_recorded(tiny, out, **kw):
    rows, traces = train_chunk(configs_of(recorded_raw(tiny, **kw)), "cpu")
    for row in rows:
        row["sweep"] = "tiny"
    return store.write_rows(rows, out, traces), rows, traces


def test_traces_live_beside_the_runs_and_every_runs_reader_ignores_them(tiny, tmp_path):
    out = tmp_path / "res"
    path, rows, traces = write_recorded(tiny, out)
    assert (out / "_traces" / path.rsplit("/", 1)[-1]).exists()
    assert store.files(out) == [path]
    assert store.run_ids(out) == {r["run_id"] for r in rows}
    assert len(pd.read_parquet(out)) == len(rows)                   # pandas/pyarrow skip _traces
    read = store.read_traces(out)
    assert read.height == len(traces) and read.columns == list(columns.TRACE)
    assert read.filter(pl.col("run_id") == rows[0]["run_id"]).height == 13
    result = CliRunner().invoke(app, ["show", str(out)])
    assert result.exit_code == 0 and f"{len(rows)} runs" in result.output


def test_a_crash_between_the_two_writes_leaves_an_orphan_that_readers_ignore_and_settle_deletes(tiny, tmp_path):
    out = tmp_path / "res"
    path, rows, traces = write_recorded(tiny, out)
    orphan = out / "_traces" / "part-0000000000000000.parquet"     # traces of a chunk whose runs never landed
    orphan.write_bytes((out / "_traces" / path.rsplit("/", 1)[-1]).read_bytes())
    assert store.read_traces(out).height == len(traces)              # counted once: the orphan is not committed
    store.settle(out)
    assert not orphan.exists()
    assert store.read_traces(out).height == len(traces)


def test_compaction_drops_the_traces_of_the_rows_it_drops(tiny, tmp_path):
    out = tmp_path / "res"
    path, rows, traces = write_recorded(tiny, out)
    # a rerun wrote one of the runs again in a second chunk (a killed driver's last trial)
    store.write_rows([rows[0]], out, [t for t in traces if t["run_id"] == rows[0]["run_id"]])
    dropped, finished = store.settle(out)
    assert dropped == 1 and {f.decode() for f in finished} == {r["run_id"] for r in rows}
    read = store.read_traces(out)
    assert read.height == len(traces)
    assert read.group_by("run_id", "step").len()["len"].max() == 1


def test_folders_without_traces_read_as_before(tiny, tmp_path):
    out = tmp_path / "res"
    rows, traces = train_chunk(configs_of(tiny()), "cpu")
    assert traces == []
    store.write_rows(rows, out, traces)
    assert not (out / "_traces").exists()
    assert store.read_traces(out).height == 0
    result = CliRunner().invoke(app, ["dynamics", str(out)])
    assert result.exit_code == 2 and "set train.record" in result.output


def test_breaks_drops_and_coincidence_on_known_curves():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    deltas = np.array([[0.01, 0.01, 0.5],    # pair 0 breaks at 8, pair 1 at 32, pair 2 starts above: no break
                       [0.01, 0.01, 0.5], [0.01, 0.01, 0.5], [0.01, 0.02, 0.5], [0.2, 0.02, 0.5],
                       [0.3, 0.05, 0.5], [0.3, 0.4, 0.5], [0.05, 0.4, 0.5], [0.3, 0.4, 0.5]])
    assert breaking_times(steps, deltas, 0.1) == [8, 32]           # pair 0 counts its first rise only
    loss = np.array([1.0, 1.0, 1.0, 1.0, 0.1, 0.096, 0.0096, 0.0096, 0.0096])   # 10x into 8 and into 32
    assert drop_times(steps, loss, min_rate=1.0, min_fall=2.0) == [8, 32]
    assert drop_times(steps, np.full(9, 2.0)) == []
    long_fall = np.array([1.0, 1.0, 0.5, 0.25, 0.12, 0.06, 0.03, 0.03, 0.03])
    assert len(drop_times(steps, long_fall)) == 1                   # one long fall is one drop
    dense = np.arange(1000, 1009)
    wiggle = np.array([1.0, 1.0, 1.0, 0.99, 0.98, 0.98, 0.98, 0.98, 0.97])  # fast (rate > 1) but 1-3% falls
    assert loss_rates(dense, wiggle).max() > 1 and drop_times(dense, wiggle) == []
    spike = np.array([1.0, 1.0, 0.3, 0.3, 0.9, 0.35, 0.3, 0.3, 0.3])  # a spike and its recovery: no new low
    assert drop_times(steps, spike) == [2]
    assert coincidence([8, 32], [8, 32], steps, 0.0) == 1.0
    assert coincidence([8, 128], [32], steps, 0.1) == 0.0
    assert coincidence([64], [32], steps, 0.0) == 1.0                # one record step apart: as close as seen
    assert coincidence([], [8], steps) is None
    assert chance([8], steps, 0.1) == pytest.approx(0.2 / math.log10(128))
    assert chance([], steps) == 0.0
    trace = pl.DataFrame({"step": steps, "train_loss": [*loss[:6], float("inf"), None, None],
                          "deltas": [list(d) for d in deltas[:6]] + [[1e9, 1e9, 1e9], None, None]})
    found = run_dynamics(trace, 0.1)                                 # diverged after step 16: read up to it
    assert found["breaks"] == [8] and found["drops"] == [8]


def test_phasemap_dynamics_reports_every_recorded_run_as_json(tiny, tmp_path):
    out = tmp_path / "res"
    _, rows, traces = write_recorded(tiny, out, record={"log": 30})
    result = CliRunner().invoke(app, ["dynamics", str(out), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert {r["run_id"] for r in lines} == {r["run_id"] for r in rows}
    frame = pl.DataFrame(traces)
    for obj in lines:
        trace = frame.filter(pl.col("run_id") == obj["run_id"]).sort("step")
        expected = run_dynamics(trace, 0.1)
        assert obj["breaks"] == expected["breaks"] and obj["drops"] == expected["drops"]
        assert set(obj) >= {"run_id", "breaks", "drops", "coincident", "explained", "settled"}
    one = CliRunner().invoke(app, ["dynamics", str(out), "--where", "gamma=0.01", "--json"])
    assert len(one.output.splitlines()) == 2
    none = CliRunner().invoke(app, ["dynamics", str(out), "--run", "ffff"])
    assert none.exit_code == 2 and "--run ffff" in none.output


def test_critical_counts_the_unsettled_runs_in_a_boundarys_bracket(tiny, tmp_path):
    from phasemap.analysis import critical
    from phasemap.analysis.critical import UnsettledRuns

    rows = [{"run_id": f"r{g}{s}", "status": "ok", "gamma": g, "seed": s, "weight_rank": 2 if g < 0.5 else 1,
             "settled": not (g == 0.6 and s == 0)} for g in (0.1, 0.3, 0.6, 0.9) for s in (0, 1)]
    with pytest.warns(UnsettledRuns, match="1 critical point"):
        table = critical(pl.DataFrame(rows), "weight_rank", "gamma")
    assert table["n_unsettled"].to_list() == [1]
    older = pl.DataFrame(rows).drop("settled")                   # results from before `settled`
    assert critical(older, "weight_rank", "gamma")["n_unsettled"].to_list() == [None]


@pytest.mark.slow
def test_a_killed_recorded_sweep_resumes_with_runs_and_traces_exactly_once(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "phasemap.cli", "run", str(root / "sweeps" / "quickstart.yaml"), "--out", str(out),
           "--set", "train.steps=6000", "--set", "train.record={log: 30}", "--chunk", "4", "--num-cpus", "2"]
    driver = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for_a_chunk(out, driver)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)          # the whole session, Ray included, mid-write or not
        driver.wait()
    partial = len(store.run_ids(out))
    assert 0 < partial < 48
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = pl.read_parquet(store.files(out))
    assert runs.height == 48 and runs["run_id"].n_unique() == 48
    traces = store.read_traces(out)
    steps = recording.schedule("log:30", 6000)
    counts = traces.group_by("run_id").agg(pl.col("step").sort())
    assert counts.height == 48
    assert all(list(s) == steps for s in counts["step"])           # every run's whole trace, each step once
    assert not store._committed_traces(out)[1]                     # no orphan left after the rerun's compaction
