"""The dynamics and trajectories figures, from a tiny recorded sweep trained in-process."""

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap import store
from phasemap.analysis import AnalysisError, dynamics, run_dynamics
from phasemap.cli import app
from phasemap.plots import dynamics_data, plot, trajectories_data
from phasemap.recording import schedule
from phasemap.runner import train_chunk

from conftest import configs_of, tiny_raw

# Near-zero init under a threshold pairs start below, so they break; lr 100 diverges.
RECORDED = tiny_raw(model={"init_scale": 0.01}, train={"record": {"log": 20}, "steps": 200},
                    metrics={"delta_threshold": 0.05}, grid={"lr": [0.5, 100.0], "seed": {"range": 2}})


def _write(raw: dict, out) -> str:
    rows, traces = train_chunk(configs_of(raw), "cpu")
    store.write_rows(rows, out, traces)
    return str(out)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return _write(RECORDED, tmp_path_factory.mktemp("recorded"))


@pytest.fixture(scope="module")
def unrecorded(tmp_path_factory):
    return _write(tiny_raw(), tmp_path_factory.mktemp("unrecorded"))


def _png(path) -> bool:
    return path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dynamics_data_is_the_first_listed_run_with_run_dynamics_breaks(recorded):
    data = dynamics_data(recorded)
    listed = dynamics(recorded).row(0, named=True)
    assert data["run_id"] == listed["run_id"] and data["n_matched"] == 4
    assert data["axes"] == {"lr": 0.5, "seed": 0}
    trace = store.read_traces(recorded, {data["run_id"]}).sort("step")
    found = run_dynamics(trace, 0.05)
    assert data["breaks"] == found["breaks"] == listed["breaks"] and data["breaks"]
    assert data["break_steps"] == sorted(set(found["breaks"])) and data["drops"] == found["drops"]
    assert data["deltas"].shape == (trace.height - 1, 7) and data["threshold"] == 0.05   # step 0 is off the log axis
    assert trace["step"][0] == 0 and data["steps"][0] == 1
    assert data["diverged_at"] is None


def test_dynamics_data_of_a_diverged_run_says_where(recorded):
    data = dynamics_data(recorded, where={"lr": 100, "seed": 1})      # an int matches a float column
    assert data["status"] == "diverged" and data["n_matched"] == 1
    lost = np.flatnonzero(~np.isfinite(data["train_loss"]))        # inf, then null once the weights are
    assert lost.size and data["diverged_at"] == data["steps"][lost[0]]
    by_prefix = dynamics_data(recorded, run=data["run_id"][:10])
    assert by_prefix["run_id"] == data["run_id"]


def test_trajectories_data_has_one_line_per_run(recorded):
    data = trajectories_data(recorded)
    lines = data["lines"]
    assert data["metric"] == "n_distinct" and data["hue"] == "lr" and not data["log_y"]
    assert lines.height == 4 and lines["run_id"].n_unique() == 4
    ok = lines.filter(pl.col("status") == "ok")
    assert all(list(s) == schedule("log:20", 200)[1:] and len(v) == len(s) for s, v in zip(ok["step"], ok["value"]))
    losses = trajectories_data(recorded, "train_loss", where={"lr": 0.5})
    assert losses["log_y"] and losses["lines"].height == 2
    assert all(min(v) > 0 for v in losses["lines"]["value"])


@pytest.mark.parametrize("kind,options", [
    ("dynamics", {}),
    ("dynamics", {"where": {"lr": 100.0}}),
    ("trajectories", {}),
    ("trajectories", {"metric": "test_loss", "y": "seed"}),
])
def test_each_kind_writes_a_png(recorded, tmp_path, kind, options):
    out = plot(recorded, kind, tmp_path / "fig.png", **options)
    assert _png(out)


@pytest.mark.parametrize("kind,options,says", [
    ("dynamics", {"run": "zzzz"}, "no recorded run has that run_id"),
    ("dynamics", {"where": {"lr": 0.3}}, "no recorded run matches"),
    ("dynamics", {"metric": "n_dos"}, "takes no --metric"),
    ("trajectories", {"metric": "deltas"}, "not traced over training"),
    ("trajectories", {"run": "a"}, "--run chooses the one run"),
    ("trajectories", {"y": "nope"}, "not a config column"),
    ("phase", {"run": "a"}, "use them with --kind dynamics or trajectories"),
    ("loss", {"where": {"lr": 0.5}}, "use them with --kind dynamics or trajectories"),
])
def test_bad_choices_are_refused(recorded, tmp_path, kind, options, says):
    with pytest.raises(AnalysisError, match=says):
        plot(recorded, kind, tmp_path / "fig.png", **options)


def test_results_without_traces_are_refused(unrecorded, tmp_path):
    for kind in ("dynamics", "trajectories"):
        with pytest.raises(AnalysisError, match="no run recorded its training"):
            plot(unrecorded, kind, tmp_path / "fig.png")


def test_cli_plot_draws_and_refuses_with_exit_2(recorded, unrecorded, tmp_path):
    runner = CliRunner()
    out = tmp_path / "dyn.png"
    done = runner.invoke(app, ["plot", recorded, "--kind", "dynamics", "--where", "lr=0.5", "--where", "seed=1",
                               "-o", str(out)])
    assert done.exit_code == 0 and _png(out)
    for argv in (["plot", recorded, "--kind", "dynamics", "--run", "zzzz"],
                 ["plot", recorded, "--kind", "phase", "--run", "a"],
                 ["plot", recorded, "--kind", "trajectories", "--where", "lr"],
                 ["plot", unrecorded, "--kind", "trajectories"]):
        done = runner.invoke(app, [*argv, "-o", str(tmp_path / "bad.png")])
        assert done.exit_code == 2, (argv, done.output)
