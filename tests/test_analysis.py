"""Critical points and scaling fits on data whose answer is known exactly."""

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap import store
from phasemap.analysis import AnalysisError, critical, crossings, scaling
from phasemap.cli import app
from phasemap.grid import expand
from phasemap.runner import run_chunk
from phasemap.spec import parse_spec

SPECTRUM = [2.0, 1.0, 0.5, 0.25]


def rank_table(gammas, spectrum=SPECTRUM, seeds=4, jitter=0.0, **extra) -> pl.DataFrame:
    """Rows whose weight_rank is exactly #{s_i > gamma}, optionally with per-seed jitter of s."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        s = np.array(spectrum) * (1 + jitter * rng.standard_normal(len(spectrum)))
        for g in gammas:
            rows.append({"gamma": float(g), "seed": seed, "weight_rank": int((s > g).sum()),
                         "width": 64, **extra})
    return pl.DataFrame(rows)


def test_crossings_handles_several_levels_between_neighbours():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert crossings(x, np.array([5.0, 2.0, 2.0, 3.0]), log=False) == [
        (5, 4, pytest.approx(7 / 6)), (4, 3, 1.5), (3, 2, pytest.approx(11 / 6)), (2, 3, 3.5)]
    # a level met exactly at a grid point is counted once
    assert crossings(x, np.array([3.0, 2.5, 2.0, 2.0]), log=False) == [(3, 2, 2.0)]


def test_rank_transitions_are_found_at_the_singular_values():
    table = critical(rank_table(np.geomspace(0.1, 4, 80)), "weight_rank", "gamma")
    assert table["from"].to_list() == [4, 3, 2, 1]
    assert table["to"].to_list() == [3, 2, 1, 0]
    assert np.allclose(table["critical"].to_numpy(), sorted(SPECTRUM), rtol=0.05)


def test_coarse_grid_gives_every_level_with_ci_from_seed_jitter():
    coarse = critical(rank_table(np.geomspace(0.1, 4, 4)), "weight_rank", "gamma")
    assert coarse.height == 4                       # several levels between two neighbours
    jittered = critical(rank_table(np.geomspace(0.1, 4, 60), seeds=16, jitter=0.1), "weight_rank", "gamma")
    assert jittered.height == 4
    for row in jittered.iter_rows(named=True):
        assert row["ci_low"] <= row["critical"] <= row["ci_high"]
        assert row["ci_high"] > row["ci_low"]
        assert row["n_runs"] == 16 * 60


def test_groups_are_the_other_axes():
    a = rank_table(np.geomspace(0.1, 4, 60), sigma=0.0)
    b = rank_table(np.geomspace(0.1, 4, 60), spectrum=[3.0, 1.5], sigma=0.5)
    table = critical(pl.concat([a, b]), "weight_rank", "gamma")
    assert set(table.columns) >= {"sigma", "from", "to", "critical", "ci_low", "ci_high", "n_runs"}
    assert table.filter(pl.col("sigma") == 0.5)["critical"].to_numpy() == pytest.approx([1.5, 3.0], rel=0.05)
    assert table.filter(pl.col("sigma") == 0.0).height == 4


def test_power_law_scaling_exponent():
    c, alpha = 4.0, 0.5
    spectrum = [c * i ** -alpha for i in range(1, 201)]
    frame = rank_table(np.geomspace(0.3, 4.5, 120), spectrum=spectrum, seeds=2)
    out = scaling(frame, metric="weight_rank", axis="gamma")
    assert out["beta"] == pytest.approx(1 / alpha, rel=0.1)
    assert out["C"] == pytest.approx(c ** (1 / alpha), rel=0.2)
    assert out["violations"] == 0
    assert out["beta_ci"][0] <= out["beta"] <= out["beta_ci"][1]
    quantile = scaling(frame, metric="weight_rank", axis="gamma", method="quantile")
    assert quantile["beta"] == pytest.approx(1 / alpha, rel=0.25)


def test_width_saturation():
    rows = []
    for width in (16, 32, 64):
        for g in (0.01, 0.1):
            for seed in range(3):
                saturating = min(width, int(2 / g ** 0.5))
                rows.append({"gamma": g, "seed": seed, "width": width, "n_distinct": saturating,
                             "growing": width // 2})
    frame = pl.DataFrame(rows)
    assert scaling(frame, "n_distinct", "gamma", method="quantile")["width_saturation"]["saturated"]
    assert not scaling(frame, "growing", "gamma", method="quantile")["width_saturation"]["saturated"]


def test_unknown_metric_is_a_clear_error(tmp_path):
    with pytest.raises(AnalysisError, match="metric 'rank'"):
        critical(rank_table([0.1, 1.0]), "rank", "gamma")


@pytest.fixture(scope="module")
def linear_results(tmp_path_factory):
    """A whitened linear teacher trained over a dense gamma grid, written as a results folder."""
    raw = {"name": "lin",
           "task": {"teacher": "linear", "input_dim": 6, "output_dim": 5, "n_train": 64, "n_test": 32,
                    "spectrum": SPECTRUM, "whiten": True, "data_seed": 0},
           "model": {"depth": 2, "width": 6, "activation": "linear", "init_scale": 0.01},
           "train": {"lr": 0.1, "steps": 4000},
           "grid": {"gamma": {"logspace": [0.15, 3.0, 36]}, "seed": {"range": 2}}}
    rows = run_chunk(expand(parse_spec(raw)), "cpu", max_models=256)
    for row in rows:
        row["sweep"] = "lin"
    out = tmp_path_factory.mktemp("lin")
    store.write_rows(rows, out)
    return out


def test_trained_linear_students_put_rank_transitions_at_the_spectrum(linear_results):
    result = CliRunner().invoke(app, ["critical", str(linear_results), "--metric", "weight_rank",
                                      "--axis", "gamma", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert [(r["from"], r["to"]) for r in found] == [(4, 3), (3, 2), (2, 1), (1, 0)]
    assert np.allclose([r["critical"] for r in found], sorted(SPECTRUM), rtol=0.05)
    table = CliRunner().invoke(app, ["critical", str(linear_results), "--metric", "weight_rank", "--axis", "gamma"])
    assert table.exit_code == 0 and "critical" in table.output
    by_uri = CliRunner().invoke(app, ["critical", f"file://{linear_results}", "--metric", "weight_rank",
                                      "--axis", "gamma", "--json"])
    assert by_uri.exit_code == 0, by_uri.output
    assert json.loads(by_uri.output) == found           # a URI reads the same results as the path


def test_scaling_command_prints_one_json_object(linear_results):
    result = CliRunner().invoke(app, ["scaling", str(linear_results), "--metric", "weight_rank", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"beta", "C", "beta_ci", "C_ci", "violations", "width_saturation"} <= set(out)


def test_analysis_cli_refuses_unknown_axis(linear_results):
    result = CliRunner().invoke(app, ["critical", str(linear_results), "--metric", "weight_rank", "--axis", "gama"])
    assert result.exit_code == 2 and "axis 'gama'" in result.output


def test_synthetic_benchmark_data_has_the_built_in_exponent(tmp_path):
    from phasemap.bench import synthetic_results

    path = synthetic_results(tmp_path, rows=20_000)
    assert pl.read_parquet(str(path / "*.parquet")).height == 20_000
    found = critical(path, "weight_rank", "gamma")
    assert set(found.columns) >= {"temperature", "sigma"} and found.height > 100
    assert scaling(path, "n_distinct", "gamma")["beta"] == pytest.approx(0.5, rel=0.1)
