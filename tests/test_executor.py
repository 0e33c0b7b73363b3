"""End to end through Ray Tune on an embedded local Ray: rows, resume, growing a grid, `show`."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import ray
from typer.testing import CliRunner

from conftest import interrupt_after_a_chunk
from phasemap import store
from phasemap.cli import app
from phasemap.grid import expand
from phasemap.spec import load_spec

pytestmark = pytest.mark.slow   # Ray processes: seconds to start, most of the suite's time

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def tiny_sweep(folder: Path, name: str) -> tuple[Path, list[dict]]:
    """A four-config sweep file that trains in well under a second, and its resolved configs."""
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\ntask: {{teacher_rank: 2, input_dim: 3, n_train: 16, n_test: 8}}\n"
                    "model: {width: 4}\ntrain: {steps: 20}\ngrid: {gamma: [0.0, 0.1], seed: {range: 2}}\n")
    return spec, expand(load_spec(spec))


def snapshot(folder: Path) -> dict:
    return {p: Path(p).read_bytes() for p in store.files(folder)}


def test_quickstart_runs_through_ray_tune_and_resumes(tmp_path):
    out = tmp_path / "qs"
    first = invoke("run", ROOT / "sweeps" / "quickstart.yaml", "--out", out, "--set", "train.steps=100")
    assert first.exit_code == 0, first.output
    frame = pl.read_parquet(str(out / "**" / "*.parquet"))
    assert frame.height == 48
    assert frame["run_id"].n_unique() == 48
    assert set(frame["status"]) == {"ok"}
    assert set(frame["sweep"]) == {"quickstart"}
    for column in ("gamma", "temperature", "lr", "batch_size", "sigma", "width", "teacher_rank", "seed",
                   "n_distinct", "n_dead", "n_dos", "n_dosb", "weight_rank", "rep_rank", "symmetry_class",
                   "train_loss", "test_loss", "layer_groups", "train_seconds"):
        assert column in frame.columns, column
    assert frame["n_distinct"].null_count() == 0
    assert sorted(frame["batch_size"].unique()) == [20, 200]
    assert 1 < len(store.files(out)) <= 16          # chunks, not one file per run

    before = snapshot(out)
    again = invoke("run", ROOT / "sweeps" / "quickstart.yaml", "--out", out, "--set", "train.steps=100")
    assert again.exit_code == 0 and "nothing to run" in again.output
    assert snapshot(out) == before


def test_a_transformer_sweep_runs_through_ray_tune_with_its_attention_columns(tmp_path):
    out = tmp_path / "tf"
    done = invoke("run", ROOT / "sweeps" / "transformer.yaml", "--out", out, "--set", "train.steps=150",
                  "--set", "task.n_train=64", "--set", "task.n_test=32", "--set", "train.batch_size=16",
                  "--set", "grid.gamma=[0.0, 30.0]")
    assert done.exit_code == 0, done.output
    frame = pl.read_parquet(str(out / "**" / "*.parquet"))
    assert frame.height == 8 and set(frame["status"]) == {"ok"} and set(frame["family"]) == {"transformer"}
    assert set(frame["backend"]) == {"autograd"}
    assert frame["n_distinct"].null_count() == 8 and frame["layer_qk_rank"].null_count() == 0
    assert frame["layer_qk_rank"].list.len().to_list() == [2] * 8
    collapsed = frame.filter(pl.col("gamma") == 30.0)          # AdamW's decay lr * gamma = 0.09 per step
    assert collapsed["n_dos"].to_list() == [6] * 4 and collapsed["layer_qk_rank"].to_list() == [[0, 0]] * 4
    again = invoke("run", ROOT / "sweeps" / "transformer.yaml", "--out", out, "--set", "train.steps=150",
                   "--set", "task.n_train=64", "--set", "task.n_test=32", "--set", "train.batch_size=16",
                   "--set", "grid.gamma=[0.0, 30.0]")
    assert again.exit_code == 0 and "nothing to run" in again.output        # resumable: not an earlier version's


def test_growing_the_grid_runs_only_the_new_points(tmp_path):
    spec, _ = tiny_sweep(tmp_path, "grow")
    out = tmp_path / "grow"
    assert invoke("run", spec, "--out", out).exit_code == 0
    before = snapshot(out)
    grown = invoke("run", spec, "--out", out, "--set", "grid.gamma=[0.0, 0.1, 0.2]", "--chunk", "1")
    assert grown.exit_code == 0, grown.output
    assert "wrote 2 rows" in grown.output and "4 were already there" in grown.output
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before   # old files untouched
    frame = pl.read_parquet(str(out / "*.parquet"))
    assert frame.height == 6 and frame["run_id"].n_unique() == 6
    assert sorted(frame["gamma"].unique()) == [0.0, 0.1, 0.2]

    shown = invoke("show", out, "--json")
    assert shown.exit_code == 0
    info = json.loads(shown.output)
    assert info["runs"] == 6 and info["status"] == {"ok": 6}
    assert info["axes"]["gamma"] == [0.0, 0.1, 0.2] and info["axes"]["seed"] == [0, 1]
    table = invoke("show", out)
    assert "gamma: 0, 0.1, 0.2" in table.output


def test_show_refuses_a_folder_without_results(tmp_path):
    result = invoke("show", tmp_path)
    assert result.exit_code == 2 and "no phasemap results" in result.output


def test_an_unwritable_output_is_a_clear_error_before_anything_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("run", ROOT / "sweeps" / "quickstart.yaml", "--out", blocker / "out", "--set", "train.steps=10")
    assert result.exit_code == 1
    assert "cannot write results to" in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "not a folder"


def test_a_rerun_retries_failed_configs_and_keeps_one_row_each(tmp_path):
    from phasemap.runner import failed_rows

    spec, configs = tiny_sweep(tmp_path, "retry")
    out = tmp_path / "out"
    store.write_rows([{**r, "sweep": "retry"} for r in failed_rows(configs[:3], "RuntimeError: boom")], out)
    result = invoke("run", spec, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote 4 rows" in result.output and "3 superseded rows" in result.output
    frame = pl.read_parquet(store.files(out))
    assert frame.height == 4 and frame["run_id"].n_unique() == 4 and set(frame["status"]) == {"ok"}


def test_a_chunk_that_cannot_be_written_is_not_retried_and_says_why_in_one_line(tmp_path):
    spec, configs = tiny_sweep(tmp_path, "blocked")
    out = tmp_path / "out"
    earlier = Path(store.write_rows([{**c, "sweep": "x", "status": "ok"} for c in configs[:1]], out))
    before = earlier.read_bytes()
    # The one chunk of the other three configs must land where a folder stands: every write fails,
    # and no retry can change that (EISDIR), like a full disk or a read-only location.
    (out / store.chunk_name([c["run_id"] for c in configs[1:]])).mkdir()
    result = invoke("run", spec, "--out", out, "--chunk", 3)
    assert result.exit_code == 1
    assert "cannot write results to" in result.output and "Is a directory" in result.output
    assert "not retried" in result.output and "failed after retries" not in result.output
    assert "1 of 4 configs are in" in result.output and "3 missing" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 4
    assert earlier.read_bytes() == before
    assert store.files(out) == [str(earlier)]


def test_a_damaged_file_is_set_aside_and_its_configs_run_again(tmp_path):
    spec, configs = tiny_sweep(tmp_path, "damaged")
    out = tmp_path / "out"
    assert invoke("run", spec, "--out", out, "--chunk", 2).exit_code == 0
    victim = Path(store.files(out)[0])
    victim.write_bytes(victim.read_bytes()[:64])
    with pytest.warns(store.DamagedFileWarning, match="skipped"):
        shown = invoke("show", out, "--json")
        dry = invoke("run", spec, "--out", out, "--dry-run")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["runs"] == 2
    assert "2 already in" in dry.output and victim.exists()
    with pytest.warns(store.DamagedFileWarning, match="set aside"):
        rerun = invoke("run", spec, "--out", out)
    assert rerun.exit_code == 0, rerun.output
    assert "wrote 2 rows" in rerun.output and not victim.exists() and Path(f"{victim}.damaged").exists()
    frame = pl.read_parquet(store.files(out))
    assert frame.height == 4 and frame["run_id"].n_unique() == 4
    shown = invoke("show", out)
    assert f"1 damaged file(s) set aside by run, their configs trained again: {victim}.damaged" in shown.output


def test_summary_counts_what_is_on_disk(tmp_path):
    from phasemap.executor import run_sweep

    spec, configs = tiny_sweep(tmp_path, "disk")
    out = tmp_path / "out"
    summary = run_sweep(load_spec(spec), out, chunk=2)
    assert summary.complete and summary.missing == 0 and summary.runs == 4
    Path(store.files(out)[0]).unlink()           # rows lost behind the driver's back
    again = run_sweep(load_spec(spec), out, chunk=2)
    assert again.skipped == 2 and again.runs == 2 and again.missing == 0


def test_trials_that_no_node_can_hold_are_refused_before_tune_starts(tmp_path):
    spec, _ = tiny_sweep(tmp_path, "res")
    for options, reason in ((["--gpus-per-trial", "1"], "has no GPU"),
                            (["--gpus-per-trial", "0", "--cpus-per-trial", "64"], "no node has that many CPUs"),
                            (["--cpus-per-trial", "0"], "a positive share of a CPU")):
        result = invoke("run", spec, "--out", tmp_path / "out", *options)
        assert result.exit_code == 2, result.output
        assert reason in result.output and "Traceback" not in result.output
        assert not store.files(tmp_path / "out")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mute_server():
    """A TCP server on loopback that accepts connections and never says a word (not a Ray head)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


def test_an_unreachable_or_foreign_address_is_one_clear_line(tmp_path, mute_server):
    spec, _ = tiny_sweep(tmp_path, "addr")
    for port, why in ((free_port(), "refused"), (mute_server, "no answer within")):
        # In a fresh process: the module's embedded Ray must not answer for the address.
        done = subprocess.run([sys.executable, "-m", "phasemap.cli", "run", str(spec), "--out", str(tmp_path / "o"),
                               "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=90,
                              cwd=ROOT)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}")
        assert why in lines[0].lower()


def session_processes(sid: int) -> list[str]:
    """Names of the live processes of a session (the driver started with start_new_session)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            names.append(text.split("(", 1)[1].rsplit(")", 1)[0])
    return names


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_sweep_keeps_finished_chunks_and_says_what_is_missing(tmp_path, signum):
    out = tmp_path / "out"

    def ray_is_up(pid):
        assert "raylet" in session_processes(pid)

    code, stderr, driver_pid = interrupt_after_a_chunk(
        ["run", ROOT / "sweeps" / "quickstart.yaml", "--out", out, "--set", "train.steps=20000", "--chunk", "4",
         "--num-cpus", "2", "--executor", "ray"], out, signum, before_signal=ray_is_up)
    assert code == 128 + signum, stderr
    on_disk = pl.read_parquet(store.files(out))
    assert 0 < on_disk.height < 48 and on_disk["run_id"].n_unique() == on_disk.height
    name = signal.Signals(signum).name
    assert f"stopped by {name}; {on_disk.height} of 48 configs are in" in stderr
    assert f"{48 - on_disk.height} missing" in stderr and "Traceback" not in stderr
    time.sleep(1)
    assert session_processes(driver_pid) == []     # no Ray process left behind


def test_the_driver_plans_a_sweep_without_loading_torch():
    # torch takes seconds to import; only the trial processes, which train, need it.
    import subprocess
    import sys
    code = ("import sys, phasemap.executor, phasemap.cli; from phasemap.executor import plan_chunks; "
            "from phasemap.grid import expand; from phasemap.spec import load_spec; "
            "print(len(plan_chunks(expand(load_spec('sweeps/bench/ref-mlp.yaml')), None, 2)), 'torch' in sys.modules)")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "8 False"
