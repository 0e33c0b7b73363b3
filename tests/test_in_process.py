"""The in-process executor: a small sweep trains in the driver through the same chunk function
and store as a Tune trial (no Ray started), retries and counts write errors as Tune would, stops
on a signal keeping finished chunks, and hands a sweep that outgrows it to Ray Tune."""

import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import interrupt_after_a_chunk
from phasemap import executor, store
from phasemap.cli import app
from phasemap.grid import expand
from phasemap.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, name: str = "ip", steps: int = 20, seeds: int = 2) -> Path:
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\ntask: {{teacher_rank: 2, input_dim: 3, n_train: 16, n_test: 8}}\n"
                    f"model: {{width: 4}}\ntrain: {{steps: {steps}}}\n"
                    f"grid: {{gamma: [0.0, 0.1], seed: {{range: {seeds}}}}}\n")
    return spec


def test_a_small_sweep_trains_in_this_process_without_starting_ray(tmp_path):
    spec, out = sweep_file(tmp_path), tmp_path / "out"
    code = ("import sys; from phasemap.executor import run_sweep; from phasemap.spec import load_spec; "
            f"s = run_sweep(load_spec({str(spec)!r}), {str(out)!r}); "
            "print(s.executor, s.runs, s.missing, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["process", "4", "0", "False"], done.stderr
    frame = pl.read_parquet(store.files(out))
    assert sorted(frame["run_id"]) == sorted(c["run_id"] for c in expand(load_spec(spec)))
    assert set(frame["status"]) == {"ok"} and set(frame["sweep"]) == {"ip"}
    again = CliRunner().invoke(app, ["run", str(spec), "--out", str(out)])
    assert again.exit_code == 0 and "nothing to run" in again.output


def test_the_run_line_says_where_the_sweep_trained(tmp_path):
    result = CliRunner().invoke(app, ["run", str(sweep_file(tmp_path)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "wrote 4 rows (4 ok)" in result.output and "in this process" in result.output


def test_a_retryable_write_error_is_retried_and_a_lasting_one_counted_with_its_reason(tmp_path, monkeypatch):
    spec, out = load_spec(sweep_file(tmp_path)), tmp_path / "out"
    real, calls = store.write_rows, []

    def flaky(rows, where, traces=None, meta=None):
        calls.append(len(rows))
        if len(calls) == 1:
            raise store.StoreError("cannot write results: connection reset", retryable=True)
        return real(rows, where, traces, meta)

    monkeypatch.setattr(store, "write_rows", flaky)
    summary = executor.run_sweep(spec, out, executor="process")
    assert summary.complete and summary.runs == 4 and calls == [4, 4]

    def broken(rows, where, traces=None, meta=None):
        raise store.StoreError("cannot write results: connection reset", retryable=True)

    monkeypatch.setattr(store, "write_rows", broken)
    other = executor.run_sweep(load_spec(sweep_file(tmp_path, "ip2")), tmp_path / "out2", executor="process",
                               max_failures=1)
    assert other.failed_trials == 1 and other.errors == ["cannot write results: connection reset"]
    assert other.missing == 4 and not other.complete


def test_a_write_no_retry_can_fix_stops_the_sweep_after_one_attempt(tmp_path, monkeypatch):
    calls = []

    def full(rows, where, traces=None, meta=None):
        calls.append(1)
        raise store.StoreError("cannot write results: No space left on device", retryable=False)

    monkeypatch.setattr(store, "write_rows", full)
    spec = load_spec(sweep_file(tmp_path, seeds=40))           # 80 configs: three chunks of up to 32
    summary = executor.run_sweep(spec, tmp_path / "out", executor="process")
    assert calls == [1] and summary.fatal == "cannot write results: No space left on device"
    assert summary.missing == 80


def test_a_sweep_projected_past_the_budget_hands_the_rest_to_ray_tune(tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "IN_PROCESS_SECONDS", 0.0)
    spec = load_spec(sweep_file(tmp_path, seeds=200))           # 400 configs: chunks of 32, 32, 256, then 80
    summary = executor.run_sweep(spec, tmp_path / "out", num_cpus=2)
    # three chunks train here (the first pays one-time loads; the next two give the rate that decides)
    assert summary.executor == "process+ray" and summary.complete and summary.runs == 400
    frame = pl.read_parquet(store.files(tmp_path / "out"))
    assert frame.height == 400 and frame["run_id"].n_unique() == 400
    assert (frame["batch_models"] == 32).sum() == 320                # the 256 in batches of 32, one file
    files = store.files(tmp_path / "out")
    assert len(files) == summary.chunks                              # one file per chunk, here or on Ray
    assert sum(pl.read_parquet(f)["batch_models"].max() == 32 for f in files) == 3


def test_the_process_executor_refuses_an_address(tmp_path):
    result = CliRunner().invoke(app, ["run", str(sweep_file(tmp_path)), "--executor", "process",
                                      "--address", "127.0.0.1:1"])
    assert result.exit_code == 2 and "--address needs Ray" in result.output
    bad = CliRunner().invoke(app, ["run", str(sweep_file(tmp_path)), "--executor", "threads"])
    assert bad.exit_code == 2 and "--executor threads: use auto, process or ray" in bad.output


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_an_in_process_sweep_and_keeps_its_finished_chunks(tmp_path, signum):
    spec, out = sweep_file(tmp_path, steps=20000, seeds=48), tmp_path / "out"   # 96 configs, three chunks
    code, stderr, _ = interrupt_after_a_chunk(["run", spec, "--out", out, "--executor", "process"], out, signum)
    assert code == 128 + signum, stderr
    on_disk = pl.read_parquet(store.files(out))
    assert 0 < on_disk.height < 96 and on_disk["run_id"].n_unique() == on_disk.height
    assert f"stopped by {signal.Signals(signum).name}; {on_disk.height} of 96 configs are in" in stderr
    assert "Traceback" not in stderr
    rerun = CliRunner().invoke(app, ["run", str(spec), "--out", str(out)])
    assert rerun.exit_code == 0 and f"{on_disk.height} were already there" in rerun.output
    assert pl.read_parquet(store.files(out))["run_id"].n_unique() == 96


@pytest.mark.slow
def test_trial_resources_asked_for_go_to_ray_which_refuses_what_it_cannot_grant(tmp_path):
    result = CliRunner().invoke(app, ["run", str(sweep_file(tmp_path)), "--out", str(tmp_path / "out"),
                                      "--gpus-per-trial", "1", "--num-cpus", "2"])
    assert result.exit_code == 2 and "has no GPU" in result.output
    assert not store.files(tmp_path / "out")
