"""Critical points and scaling fits on data whose answer is known exactly."""

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap import store
from phasemap.analysis import AnalysisError, ControlsLeftOut, critical, crossings, default_metric, scaling, trend
from phasemap.analysis.runs import seed_curves
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
        (5, 4, pytest.approx(7 / 6), 0, 1), (4, 3, 1.5, 0, 1), (3, 2, pytest.approx(11 / 6), 0, 1), (2, 3, 3.5, 2, 3)]
    # a mean exactly on a boundary is a point of it; its bracket reaches the grid values either side
    assert crossings(x, np.array([3.0, 2.5, 2.0, 2.0]), log=False) == [(3, 2, 2.0, 0, 2)]
    # touching a boundary and coming back crosses nothing
    assert crossings(x, np.array([2.0, 2.5, 2.0, 2.0]), log=False) == []


def test_rank_transitions_are_found_at_the_singular_values():
    table = critical(rank_table(np.geomspace(0.1, 4, 80)), "weight_rank", "gamma")
    assert table["from"].to_list() == [4, 3, 2, 1]
    assert table["to"].to_list() == [3, 2, 1, 0]
    assert np.allclose(table["critical"].to_numpy(), sorted(SPECTRUM), rtol=0.05)


def test_ci_covers_the_grid_interval_even_when_seeds_agree():
    gammas = np.geomspace(0.1, 4, 12)
    table = critical(rank_table(gammas), "weight_rank", "gamma")
    assert table["resolved"].all() and table.height == 4
    for row, s in zip(table.iter_rows(named=True), sorted(SPECTRUM)):
        # the bracketing grid values, not a zero-width interval off the exact answer
        assert row["ci_low"] <= s <= row["ci_high"]
        inside = gammas[(gammas >= row["ci_low"]) & (gammas <= row["ci_high"])]
        assert len(inside) == 2 and row["ci_low"] <= row["critical"] <= row["ci_high"]


def test_two_seeds_tied_on_a_boundary_get_the_neighbours_as_ci():
    # seed 0 drops 1 -> 0 at 0.25, seed 1 at 0.15: the mean is 0.5 (on the boundary) at gamma 0.2
    rows = [{"gamma": g, "seed": seed, "weight_rank": int(g < s)}
            for seed, s in enumerate([0.25, 0.15]) for g in (0.1, 0.2, 0.3, 0.4)]
    (row,) = critical(pl.DataFrame(rows), "weight_rank", "gamma").iter_rows(named=True)
    assert (row["from"], row["to"], row["critical"]) == (1, 0, 0.2)
    assert row["ci_low"] <= 0.1 and row["ci_high"] >= 0.3 and row["resolved"]


def test_several_levels_between_neighbours_are_one_unresolved_row():
    gammas = np.geomspace(0.1, 4, 4)                # ranks 4, 3, 1, 0: 3 -> 1 in one step
    table = critical(rank_table(gammas), "weight_rank", "gamma")
    assert table.select("from", "to", "resolved").rows() == [(4, 3, True), (3, 1, False), (1, 0, True)]
    unresolved = table.row(1, named=True)
    assert (unresolved["ci_low"], unresolved["ci_high"]) == pytest.approx((gammas[1], gammas[2]))
    assert unresolved["critical"] == pytest.approx(np.sqrt(gammas[1] * gammas[2]))   # log axis
    jittered = critical(rank_table(np.geomspace(0.1, 4, 60), seeds=16, jitter=0.1), "weight_rank", "gamma")
    assert jittered.height == 4 and jittered["resolved"].all()
    for row in jittered.iter_rows(named=True):
        assert row["ci_low"] <= row["critical"] <= row["ci_high"]
        assert row["n_runs"] == 16 * 60 and row["n_excluded"] == 0


def with_diverged(table: pl.DataFrame, gamma: float, seeds: list[int], value=None) -> pl.DataFrame:
    """Mark these seeds diverged at this gamma (metric null) and give the others `value`."""
    at = pl.col("gamma") == gamma
    hit = at & pl.col("seed").is_in(seeds)
    return table.with_columns(
        pl.when(hit).then(pl.lit("diverged")).otherwise(pl.lit("ok")).alias("status"),
        pl.when(hit).then(None).when(at & (value is not None)).then(value)
        .otherwise(pl.col("weight_rank")).alias("weight_rank"))


def test_a_level_seen_by_one_survivor_is_not_a_boundary():
    gammas = [float(g) for g in np.geomspace(0.1, 4, 24)]
    odd = gammas[5]                                  # rank 4 here; 3 of 4 seeds diverge, the survivor says 0
    table = critical(with_diverged(rank_table(gammas), odd, [0, 1, 2], value=0), "weight_rank", "gamma")
    assert table.select("from", "to").rows() == [(4, 3), (3, 2), (2, 1), (1, 0)]
    assert (table["n_excluded"] == 3).all() and (table["n_runs"] == 4 * 24 - 3).all()
    # with a lower share the survivor counts, and its level appears
    loose = critical(with_diverged(rank_table(gammas), odd, [0, 1, 2], value=0), "weight_rank", "gamma",
                     min_seed_share=0.25)
    assert 0 in loose["from"].to_list()                # back up from the survivor's 0


def test_diverged_grid_values_inside_a_bracket_or_at_the_end_are_reported():
    gammas = [float(g) for g in np.geomspace(0.1, 4, 24)]
    s3 = next(g for g in gammas if g > 0.5)          # the first gamma past the 3 -> 2 drop at 0.5
    frame = with_diverged(rank_table(gammas), s3, [0, 1, 2])
    last = gammas[-1]
    frame = pl.concat([frame.filter(pl.col("gamma") != last),
                       with_diverged(rank_table(gammas), last, [0, 1, 2, 3]).filter(pl.col("gamma") == last)])
    table = critical(frame, "weight_rank", "gamma")
    drop = table.filter(pl.col("from") == 3).row(0, named=True)
    assert drop["ci_low"] < s3 < drop["ci_high"] and "1/4 seeds ok, not used" in drop["note"]
    gap = table.filter(pl.col("critical").is_null()).row(0, named=True)
    assert not gap["resolved"] and gap["ci_high"] == last and "0/4 seeds ok" in gap["note"]
    assert (table["n_excluded"] == 7).all()


def test_groups_are_the_other_axes():
    a = rank_table(np.geomspace(0.1, 4, 60), sigma=0.0)
    b = rank_table(np.geomspace(0.1, 4, 60), spectrum=[3.0, 1.5], sigma=0.5)
    table = critical(pl.concat([a, b]), "weight_rank", "gamma")
    assert set(table.columns) >= {"sigma", "from", "to", "critical", "ci_low", "ci_high", "n_runs"}
    assert table.filter(pl.col("sigma") == 0.5)["critical"].to_numpy() == pytest.approx([1.5, 3.0], rel=0.05)
    assert table.filter(pl.col("sigma") == 0.0).height == 4


def test_a_group_without_a_transition_is_a_row_that_says_so():
    a = rank_table(np.geomspace(0.1, 4, 30), sigma=0.0)
    b = rank_table(np.geomspace(0.1, 4, 30), spectrum=[9.0, 8.0], sigma=0.5)   # rank 2 throughout
    table = critical(pl.concat([a, b]), "weight_rank", "gamma")
    flat = table.filter(pl.col("sigma") == 0.5)
    assert flat.height == 1
    row = flat.row(0, named=True)
    assert (row["from"], row["to"], row["critical"], row["resolved"]) == (2, 2, None, False)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.1, 4.0))
    assert row["note"] == "no transition: the seed mean of weight_rank stays at 2 from 0.1 to 4"
    assert table.filter(pl.col("sigma") == 0.0).height == 4


def test_groups_are_visited_in_sorted_order_whatever_the_row_order():
    # bootstrap draws come from one generator across groups, so the visit order must be fixed
    tables = [rank_table(np.geomspace(0.1, 4, 25), jitter=0.1, sigma=s).with_columns(status=pl.lit("ok"))
              for s in (2.0, 0.5, 1.0, 0.0)]
    data = pl.concat(tables)
    for shuffle in range(5):
        curves = seed_curves(data.sample(fraction=1.0, shuffle=True, seed=shuffle), "weight_rank", "gamma", ["sigma"])
        assert list(curves) == [(0.0,), (0.5,), (1.0,), (2.0,)]


def test_power_law_scaling_exponent():
    c, alpha = 4.0, 0.5
    spectrum = [c * i ** -alpha for i in range(1, 201)]
    frame = rank_table(np.geomspace(0.3, 4.5, 120), spectrum=spectrum, seeds=2)
    out = scaling(frame, metric="weight_rank", axis="gamma")
    assert out["beta"] == pytest.approx(1 / alpha, rel=0.1)
    assert out["C"] == pytest.approx(c ** (1 / alpha), rel=0.2)
    assert out["violations"] == 0 and out["n_excluded"] == 0
    assert out["beta_ci"][0] <= out["beta"] <= out["beta_ci"][1]
    quantile = scaling(frame, metric="weight_rank", axis="gamma", method="quantile")
    assert quantile["beta"] == pytest.approx(1 / alpha, rel=0.25)


def test_scaling_ci_carries_the_grid_uncertainty():
    # seeds agree, so a seed-only bootstrap has zero width; the exact beta, C must still be inside
    c, alpha = 4.0, 0.5
    frame = rank_table(np.geomspace(0.3, 4.5, 40), spectrum=[c * i ** -alpha for i in range(1, 201)], seeds=2)
    out = scaling(frame, metric="weight_rank")
    assert out["beta_ci"][0] < 1 / alpha < out["beta_ci"][1]
    assert out["C_ci"][0] < c ** (1 / alpha) < out["C_ci"][1]
    # only resolved single-level drops are fitted; the others are listed
    assert out["unresolved"] and all(r["from"] - r["to"] > 1 for r in out["unresolved"])
    assert all(lo <= x <= hi for (x, _), (lo, hi) in zip(out["points"], out["points_ci"]))


def test_gamma_zero_controls_are_left_out_of_a_log_axis_with_a_warning():
    gammas = np.geomspace(0.15, 3.0, 36)
    with_controls = pl.concat([rank_table(gammas), rank_table([0.0])])
    with pytest.warns(ControlsLeftOut, match="4 runs at gamma <= 0 .controls. left out"):
        found = critical(with_controls, "weight_rank", "gamma")
    assert found.equals(critical(rank_table(gammas), "weight_rank", "gamma"))   # log interpolation as without them
    c, alpha = 4.0, 0.5
    power = rank_table(np.geomspace(0.3, 4.5, 40), spectrum=[c * i ** -alpha for i in range(1, 201)], seeds=2)
    with pytest.warns(ControlsLeftOut):
        out = scaling(pl.concat([power, rank_table([0.0], seeds=2)]), metric="weight_rank")
    assert out["n_controls"] == 2 and out["beta"] == scaling(power, metric="weight_rank")["beta"]
    # a linear axis keeps its zero: nothing is left out
    linear = rank_table(np.linspace(0.0, 3.0, 31))
    assert critical(linear, "weight_rank", "gamma").height == critical(linear.filter(pl.col("gamma") >= 0),
                                                                        "weight_rank", "gamma").height


def test_scaling_needs_two_resolved_transitions():
    with pytest.raises(AnalysisError, match=r"1 resolved .*unresolved: 3->0 .*denser gamma grid"):
        scaling(rank_table([0.1, 0.3, 3.0]), metric="weight_rank")       # ranks 4, 3, 0


def test_default_metric_is_n_dos_for_transformers_only():
    rows = {"run_id": ["a", "b"], "status": ["ok", "ok"], "gamma": [0.1, 0.2], "n_dos": [1, 6],
            "n_distinct": [None, None]}
    assert default_metric(pl.DataFrame({**rows, "family": ["transformer"] * 2})) == "n_dos"
    assert default_metric(pl.DataFrame({**rows, "family": ["transformer", None]})) == "n_distinct"   # MLP rows too
    assert default_metric(pl.DataFrame(rows)) == "n_distinct"


def test_default_metric_is_weight_rank_for_linear_students():
    table = rank_table(np.geomspace(0.3, 4.5, 40), spectrum=[4 * i ** -0.5 for i in range(1, 201)])
    linear = table.with_columns(pl.lit("linear").alias("activation"), n_distinct=pl.lit(3))
    assert default_metric(linear) == "weight_rank"
    assert default_metric(linear.with_columns(pl.lit("tanh").alias("activation"))) == "n_distinct"
    assert scaling(linear)["metric"] == "weight_rank"


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


@pytest.mark.parametrize("command,message", [
    (["critical", "--metric", "symmetry_class", "--axis", "gamma"], "'symmetry_class' is not numeric"),
    (["critical", "--metric", "status", "--axis", "gamma"], "'status' is not numeric"),
    (["critical", "--metric", "weight_rank", "--axis", "seed"], "seed cannot be an axis"),
    (["critical", "--metric", "weight_rank", "--axis", "gamma", "--by", "sigmaa"], "'sigmaa' (by)"),
    (["critical", "--metric", "rank", "--axis", "gamma"], "metric 'rank' is not a column"),
    (["scaling", "--metric", "symmetry_class"], "'symmetry_class' is not numeric"),
    (["scaling", "--metric", "weight_rank", "--axis", "seed"], "seed cannot be an axis"),
])
def test_analysis_input_errors_are_one_line(linear_results, command, message):
    result = CliRunner().invoke(app, [command[0], str(linear_results), *command[1:]])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_scaling_command_defaults_to_weight_rank_for_linear_students(linear_results):
    result = CliRunner().invoke(app, ["scaling", str(linear_results), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["metric"] == "weight_rank" and out["n_excluded"] == 0


def test_columns_that_follow_another_group_column_do_not_make_groups():
    # hold: batch_size sweeps temperature and derives lr = T * S: one group per temperature, not per (T, lr)
    frame = pl.concat([rank_table(np.geomspace(0.1, 4, 30), temperature=t, lr=t * 4, batch_size=4)
                       for t in (0.01, 0.05)])
    table = critical(frame, "weight_rank", "gamma")
    assert "temperature" in table.columns and "lr" not in table.columns and table.height == 8


def test_trend_slope_ci_contains_the_truth_and_excludes_zero(trend_runs, results_folder):
    sigmas = np.linspace(0.0, 2.0, 8)
    up = results_folder(trend_runs("sigma", sigmas, "n_dos", lambda s: 2 + 0.5 * s, seeds=6, noise=0.3), "up")
    (row,) = trend(up, "n_dos", "sigma").iter_rows(named=True)
    assert row["slope_ci_low"] < 0.5 < row["slope_ci_high"] and row["slope_ci_low"] > 0
    assert row["rho_ci_low"] > 0 and row["slope"] == pytest.approx(0.5, abs=0.1)
    assert (row["x_scale"], row["ci_method"], row["n_values"], row["n_seeds"], row["n_runs"], row["n_excluded"]) == (
        "linear", "seeds", 8, 6, 48, 0)
    down = results_folder(trend_runs("sigma", sigmas, "n_dos", lambda s: 9 - 0.5 * s, seeds=6, noise=0.3), "down")
    (row,) = trend(down, "n_dos", "sigma").iter_rows(named=True)
    assert row["slope_ci_low"] < -0.5 < row["slope_ci_high"] < 0 and row["rho"] < 0 and row["rho_ci_high"] < 0
    # the bootstrap is fixed by its seed, and moves with it
    assert trend(down, "n_dos", "sigma").equals(trend(down, "n_dos", "sigma"))
    assert trend(down, "n_dos", "sigma", seed=1)["slope_ci_low"][0] != row["slope_ci_low"]


def test_trend_rho_is_one_for_a_strictly_increasing_metric(trend_runs):
    cubic = trend_runs("sigma", [0.1, 0.5, 1.0, 1.5, 2.0], "n_dos", lambda s: s ** 3, seeds=3)
    (row,) = trend(cubic, "n_dos", "sigma").iter_rows(named=True)
    assert (row["rho"], row["rho_ci_low"], row["rho_ci_high"]) == (1.0, 1.0, 1.0)
    assert row["slope"] > 0 and row["ci_method"] == "seeds"
    # two seeds have three distinct resamples: the runs are resampled instead
    assert trend(cubic.filter(pl.col("seed") < 2), "n_dos", "sigma")["ci_method"].to_list() == ["runs"]


def test_trend_slope_is_per_decade_on_a_log_axis(trend_runs):
    gammas = np.geomspace(1e-3, 1.0, 7)
    runs = trend_runs("gamma", gammas, "n_distinct", lambda g: 3 - 2 * np.log10(g), seeds=3)
    controls = trend_runs("gamma", [0.0], "n_distinct", lambda g: 50.0, seeds=3)
    with pytest.warns(ControlsLeftOut, match="3 runs at gamma <= 0"):
        (row,) = trend(pl.concat([runs, controls]), "n_distinct", "gamma").iter_rows(named=True)
    assert row["x_scale"] == "log10" and row["n_controls"] == 3 and row["n_runs"] == 21
    assert row["slope"] == pytest.approx(-2.0) and row["intercept"] == pytest.approx(3.0)


def test_trend_has_one_row_per_group_of_the_other_axes(trend_runs):
    sigmas = np.linspace(0.0, 1.0, 5)
    frame = pl.concat([trend_runs("sigma", sigmas, "n_dos", lambda s, k=k: k * s, temperature=t)
                       for k, t in ((1.0, 0.0), (3.0, 0.01))])
    table = trend(frame, "n_dos", "sigma")
    assert table.columns[0] == "temperature" and "width" not in table.columns
    assert table["temperature"].to_list() == [0.0, 0.01]
    assert table["slope"].to_list() == pytest.approx([1.0, 3.0])
    pooled = trend(frame, "n_dos", "sigma", by=[])
    assert pooled.height == 1 and pooled["n_runs"][0] == 40 and pooled["slope"][0] == pytest.approx(2.0)


def test_trend_finds_where_the_metric_saturates_in_width(trend_runs):
    widths = [8, 16, 32, 64, 128]
    (row,) = trend(trend_runs("width", widths, "rep_rank", lambda w: min(w, 20)), "rep_rank", "width").iter_rows(
        named=True)
    assert row["saturation_width"] == 32 and row["growth_last"] == 0.0 and row["x_scale"] == "log10"
    (row,) = trend(trend_runs("width", widths, "rep_rank", lambda w: w / 2), "rep_rank", "width").iter_rows(named=True)
    assert row["saturation_width"] is None and row["growth_last"] == pytest.approx(1.0)
    assert "not saturated in the widths swept" in row["note"]
    # a looser tolerance accepts 16 (within 20% of 20) but not 8
    loose = trend(trend_runs("width", widths, "rep_rank", lambda w: min(w, 20)), "rep_rank", "width", tolerance=0.2)
    assert loose["saturation_width"].to_list() == [16]
    assert "saturation_width" not in trend(trend_runs("sigma", [0.0, 1.0, 2.0], "rep_rank", lambda s: s),
                                           "rep_rank", "sigma").columns


def test_trend_counts_diverged_runs_and_never_fits_them(trend_runs):
    clean = trend_runs("sigma", np.linspace(0.0, 2.0, 6), "n_dos", lambda s: 1 + s, seeds=4, noise=0.2)
    # diverged runs carry a wild value: a fit that used them would be far off
    bad = (pl.col("sigma") == 0.8) & (pl.col("seed") == 0)
    frame = clean.with_columns(pl.when(bad).then(pl.lit("diverged")).otherwise(pl.lit("ok")).alias("status"),
                               pl.when(bad).then(1e6).otherwise(pl.col("n_dos")).alias("n_dos"))
    row = trend(frame, "n_dos", "sigma").row(0, named=True)
    expected = trend(clean.filter(~bad), "n_dos", "sigma").row(0, named=True)
    assert row["n_excluded"] == 1 and row["n_runs"] == 23 and row["slope"] == pytest.approx(expected["slope"])
    assert row["note"] == "sigma=0.8: 3/4 seeds ok"
    # three of four seeds diverged at one value: its survivor is not used, and the note says so
    most = (pl.col("sigma") == 0.4) & (pl.col("seed") < 3)
    frame = clean.with_columns(pl.when(most).then(pl.lit("failed")).otherwise(pl.lit("ok")).alias("status"),
                               pl.when(most).then(None).otherwise(pl.col("n_dos")).alias("n_dos"))
    row = trend(frame, "n_dos", "sigma").row(0, named=True)
    assert (row["n_values"], row["n_runs"], row["n_excluded"]) == (5, 20, 3)
    assert "sigma=0.4: 1/4 seeds ok, not used (under 50%)" in row["note"]
    assert trend(frame, "n_dos", "sigma", min_seed_share=0.25)["n_runs"].to_list() == [21]


def test_trend_with_fewer_than_three_values_says_why(trend_runs):
    frame = pl.concat([trend_runs("sigma", [0.0, 1.0, 2.0], "n_dos", lambda s: s, temperature=0.0),
                       trend_runs("sigma", [0.0, 1.0], "n_dos", lambda s: s, temperature=0.01)])
    short = trend(frame, "n_dos", "sigma").filter(pl.col("temperature") == 0.01).row(0, named=True)
    assert short["slope"] is None and short["rho"] is None and short["slope_ci_low"] is None
    assert short["note"] == "2 sigma values with enough seeds ok; a slope and rho need 3"
    assert trend(frame, "n_dos", "sigma").filter(pl.col("temperature") == 0.0)["slope"].to_list() == [1.0]


@pytest.mark.parametrize("metric,axis,message", [
    ("rank", "sigma", "metric 'rank' is not a column"),
    ("n_dos", "sigmaa", "axis 'sigmaa' is not a column"),
    ("symmetry_class", "sigma", "metric 'symmetry_class' is not numeric"),
    ("n_dos", "width", "axis 'width' has a single value"),
    ("n_dos", "seed", "seed cannot be an axis"),
])
def test_trend_refuses_bad_input(trend_runs, metric, axis, message):
    frame = trend_runs("sigma", [0.0, 1.0, 2.0], "n_dos", lambda s: s, symmetry_class="1x4|d0", width=8)
    with pytest.raises(AnalysisError, match=message):
        trend(frame, metric, axis)


def test_trend_command_prints_json_a_table_and_one_line_errors(trend_runs, results_folder, run_cli):
    frame = pl.concat([trend_runs("sigma", np.linspace(0, 2, 5), "n_dos", lambda s, k=k: k * s, width=w)
                       for k, w in ((1.0, 8), (2.0, 16))])
    folder = results_folder(frame)
    code, out, err = run_cli("trend", folder, "--metric", "n_dos", "--axis", "sigma", "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [(r["width"], r["slope"]) for r in rows] == [(8, pytest.approx(1.0)), (16, pytest.approx(2.0))]
    assert rows == trend(folder, "n_dos", "sigma").to_dicts()
    code, out, _ = run_cli("trend", folder, "--metric", "n_dos", "--axis", "sigma", "--by", "", "--n-boot", "20")
    assert code == 0 and "slope_ci_low" in out and "width" not in out.splitlines()[1]
    code, out, err = run_cli("trend", folder, "--metric", "n_dos", "--axis", "sigma", "--by", "width", "--seed", "3",
                             "--json")
    assert code == 0 and json.loads(out) == trend(folder, "n_dos", "sigma", by=["width"], seed=3).to_dicts()
    for argv, message in ((["--metric", "n_dos", "--axis", "gama"], "axis 'gama' is not a column"),
                          (["--metric", "status", "--axis", "sigma"], "'status' is not numeric"),
                          (["--metric", "n_dos"], "Missing option '--axis'")):
        code, out, err = run_cli("trend", folder, *argv)
        assert code == 2 and message in err and out == "" and "Traceback" not in err


def test_a_metric_that_is_not_a_phasemap_column_is_never_a_group(trend_runs):
    # a column added by the user varies like a config column; it is the metric, so it must stay
    frame = trend_runs("sigma", [0.0, 1.0, 2.0], "my_score", lambda s: 2 * s)
    assert trend(frame, "my_score", "sigma")["slope"].to_list() == pytest.approx([2.0])
    assert critical(frame.with_columns(pl.col("my_score").round()), "my_score", "sigma").height == 2
