"""Figures: the data behind them is checked; the drawing must produce a real image file."""

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap.analysis import AnalysisError
from phasemap.cli import app
from phasemap.plots import (LABELS, cell_edges, default_axes, draw_loss, draw_phase, draw_scaling, draw_trend,
                            loss_data, phase_data, plot, scaling_data, trend_data, width_data)

SPECTRUM = [2.0, 1.0, 0.5, 0.25]


@pytest.fixture(scope="module")
def frame():
    """Synthetic runs: rank = #{s_i > gamma + 0.2 sigma}; classes and losses follow the rank."""
    rows = []
    for sigma in (0.0, 0.5, 1.0):
        for gamma in np.geomspace(0.1, 4, 30):
            for width in (8, 16, 32):
                for seed in range(3):
                    rank = int((np.array(SPECTRUM) > gamma + 0.2 * sigma).sum())
                    rows.append({"gamma": float(gamma), "sigma": sigma, "width": width, "seed": seed,
                                 "weight_rank": rank, "n_distinct": min(rank * 2, width // 4),
                                 "symmetry_class": f"{rank}x1|d0", "train_loss": 0.1 + gamma,
                                 "test_loss": 0.2 + gamma})
    return pl.DataFrame(rows)


def test_phase_data_cells_and_critical_lines(frame):
    data = phase_data(frame, "gamma", "sigma", "weight_rank")
    assert data["cells"].height == 30 * 3 and data["log_x"] and not data["log_y"]
    at_zero = data["critical"].filter(pl.col("sigma") == 0.0).sort("critical")
    assert np.allclose(at_zero["critical"].to_numpy(), sorted(SPECTRUM), rtol=0.08)
    shifted = data["critical"].filter((pl.col("sigma") == 1.0) & (pl.col("from") == 1))
    assert shifted["critical"][0] == pytest.approx(2.0 - 0.2, rel=0.08)


def test_phase_data_by_symmetry_class_takes_the_most_common_class(frame):
    data = phase_data(frame, "gamma", "sigma", "symmetry_class")
    assert data["categorical"] and data["critical"] is None
    low = data["cells"].filter((pl.col("sigma") == 0.0) & (pl.col("gamma") == pl.col("gamma").min()))
    assert low["value"].to_list() == ["4x1|d0"] and low["agreement"].to_list() == [1.0]


def test_class_map_shows_agreement_and_breaks_ties_by_overall_frequency():
    rows = [{"gamma": g, "sigma": 0.0, "seed": s, "symmetry_class": c}
            for g, classes in ((0.1, "bba"), (1.0, "ab"), (10.0, "bbb"))
            for s, c in enumerate(classes)]
    cells = phase_data(pl.DataFrame(rows + [{**r, "sigma": 1.0} for r in rows]), "gamma", "sigma",
                       "symmetry_class")["cells"].filter(pl.col("sigma") == 0.0).sort("gamma")
    # a 1-1 tie goes to b, the class most common over the sweep, not to the alphabetically first
    assert cells["value"].to_list() == ["b", "b", "b"]
    assert cells["agreement"].to_list() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert cells["n_modal"].to_list() == [2, 1, 3]


def test_scaling_and_width_and_loss_data(frame):
    data = scaling_data(frame.filter((pl.col("sigma") == 0.0) & (pl.col("width") == 32)), "weight_rank")
    low, high = data["band"]
    assert (low <= data["fit"] + 1e-9).all() and (data["fit"] <= high + 1e-9).all()
    widths = width_data(frame, "n_distinct")
    small = widths.filter((pl.col("width") == 8) & (pl.col("gamma") == pl.col("gamma").min()))["mean"][0]
    assert small == 2.0                       # min(8, 8 // 4): capped by width
    losses = loss_data(frame, "gamma", "sigma")
    assert losses.height == 90 and (losses["test_loss"] > losses["train_loss"]).all()


@pytest.mark.parametrize("kind,options,suffix", [
    ("phase", {"x": "gamma", "y": "sigma", "color": "weight_rank"}, ".png"),
    ("phase", {"x": "gamma", "y": "sigma", "color": "symmetry_class", "facet": "width"}, ".svg"),
    ("scaling", {"metric": "weight_rank"}, ".pdf"),
    ("scaling", {"color": "weight_rank"}, ".png"),
    ("width", {"color": "n_distinct"}, ".png"),
    ("loss", {"x": "gamma", "y": "sigma"}, ".png"),
    ("trend", {"x": "gamma", "metric": "weight_rank", "by": ["sigma"]}, ".png"),
    ("trend", {"x": "width", "metric": "n_distinct", "by": []}, ".svg"),
])
def test_every_kind_draws_a_file(tmp_path, frame, kind, options, suffix):
    out = plot(frame, kind, tmp_path / f"fig{suffix}", **options)
    head = out.read_bytes()[:8]
    assert {".png": head.startswith(b"\x89PNG"), ".svg": b"<?xml" in head, ".pdf": head.startswith(b"%PDF")}[suffix]


def test_bad_requests_are_clear_errors(tmp_path, frame):
    with pytest.raises(AnalysisError, match=".png, .svg or .pdf"):
        plot(frame, "phase", tmp_path / "fig.jpg")
    with pytest.raises(AnalysisError, match="unknown plot kind"):
        plot(frame, "pie", tmp_path / "fig.png")
    with pytest.raises(AnalysisError, match="width takes a single value"):
        width_data(frame.filter(pl.col("width") == 8), "n_distinct")
    result = CliRunner().invoke(app, ["plot", str(tmp_path), "--kind", "phase", "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and "no phasemap results" in result.output


def quickstart_like() -> pl.DataFrame:
    """gamma x temperature x seeds with lr held, so batch_size = lr / temperature (full batch at T = 0)."""
    rows = []
    for gamma in np.geomspace(1e-4, 1e-1, 6):
        for temperature, batch_size in ((0.0, 200), (0.005, 20)):
            for seed in range(4):
                m = int(np.clip(3 - np.log10(gamma) - 1 + (seed == 0), 1, 16))
                rows.append({"batch_size": batch_size, "gamma": float(gamma), "lr": 0.1, "seed": seed,
                             "temperature": temperature, "temperature_effective": 0.1 / batch_size,
                             "activation": "tanh", "n_distinct": m, "weight_rank": 1, "status": "ok"})
    return pl.DataFrame(rows)


def test_default_axes_are_the_swept_knobs_not_derived_columns():
    runs = quickstart_like()
    assert default_axes(runs) == ["gamma", "temperature"]
    fig = draw_phase(phase_data(runs, *default_axes(runs), "n_distinct"))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "T = η/S"
    # cells end at the data: no axis runs past the grid (a batch size axis once reached below 0);
    # two temperatures are two equal rows labelled with their values
    assert ax.get_xlim() == pytest.approx((1e-4, 1e-1))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.005"]
    assert ax.get_ylim() == pytest.approx((-0.5, 1.5))
    assert (cell_edges(np.array([0.0, 0.005]), log=False) >= 0).all()


def test_a_y_axis_with_many_values_ends_at_the_data():
    rows = [{"gamma": float(g), "sigma": float(s), "seed": 0, "n_distinct": int(3 + s > g), "status": "ok"}
            for g in np.geomspace(0.1, 10, 8) for s in np.linspace(0.0, 2.0, 20)]
    ax = draw_phase(phase_data(pl.DataFrame(rows), "gamma", "sigma", "n_distinct")).axes[0]
    assert ax.get_ylim() == pytest.approx((0.0, 2.0)) and ax.get_xlim() == pytest.approx((0.1, 10))


def test_legends_name_every_overlay_and_log_axes_under_a_decade_have_labels(frame):
    fig = draw_phase(phase_data(frame, "gamma", "sigma", "weight_rank"))
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "critical points (95% CI)" in texts
    linear = frame.filter((pl.col("sigma") == 0.0) & (pl.col("width") == 32) & (pl.col("gamma") < 1.2)
                          & (pl.col("gamma") > 0.2))
    fig = draw_scaling(scaling_data(linear, "weight_rank"))
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert high / low < 10
    shown = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high and t.get_text()]
    assert len(shown) >= 3
    assert "transition points (95% CI)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_labels_use_math_text_for_subscripts():
    for text in LABELS.values():
        outside_math = text.split("$")[::2]
        assert not any("_" in part for part in outside_math), text


def test_scaling_plot_defaults_to_weight_rank_for_linear_students(frame):
    linear = frame.filter((pl.col("sigma") == 0.0) & (pl.col("width") == 32)).with_columns(
        pl.lit("linear").alias("activation"))
    assert scaling_data(linear)["metric"] == "weight_rank"


def lr_sweep() -> pl.DataFrame:
    """4 seeds over lr; at lr = 5 three seeds diverge (the survivor has a low loss); at 50 all do."""
    rows = []
    for lr in (0.01, 0.1, 1.0, 5.0, 50.0):
        for seed in range(4):
            diverged = lr == 50.0 or (lr == 5.0 and seed < 3)
            loss = None if diverged else (0.001 if lr == 5.0 else 1.0 / (1 + lr))
            rows.append({"lr": lr, "seed": seed, "status": "diverged" if diverged else "ok",
                         "train_loss": loss, "test_loss": None if loss is None else 2 * loss})
    return pl.DataFrame(rows)


def test_loss_plot_shows_diverged_runs_and_never_a_survivor_mean():
    data = loss_data(lr_sweep(), "lr")
    assert data["lr"].to_list() == [0.01, 0.1, 1.0, 5.0, 50.0]       # lr = 50 is not dropped
    assert data.filter(pl.col("lr") >= 5)["train_loss"].to_list() == [None, None]
    assert data["n_diverged"].to_list() == [0, 0, 0, 3, 4]
    fig = draw_loss(data, "lr", None)
    ax = fig.axes[0]
    assert ax.get_title() == "7 of 20 runs diverged, not in the means"
    assert any("diverged" in t.get_text() for t in ax.get_legend().get_texts())
    assert {t.get_text() for t in ax.texts} == {"3/4", "4/4"}


def test_phase_plot_marks_cells_with_diverged_runs():
    runs = pl.concat([lr_sweep().with_columns(pl.lit(g).alias("gamma")) for g in (0.01, 0.1)]).with_columns(
        pl.when(pl.col("status") == "ok").then(pl.lit(2)).otherwise(None).alias("n_distinct"))
    data = phase_data(runs, "lr", "gamma", "n_distinct")
    cells = data["cells"].filter(pl.col("gamma") == 0.01).sort("lr")
    assert cells["value"].to_list() == [2.0, 2.0, 2.0, None, None]   # one survivor of four is not a cell value
    fig = draw_phase(data)
    assert fig._suptitle.get_text() == "14 of 40 runs diverged, not in the means"
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "cell with diverged/failed runs" in texts


@pytest.mark.parametrize("options,message", [
    (["--y", "seed"], "seed cannot be an axis"),
    (["--color", "status"], "'status' is not a metric"),
    (["--x", "gama"], "axis 'gama' is not a column"),
    (["--kind", "scaling", "--metric", "symmetry_class"], "'symmetry_class' is not numeric"),
    (["--kind", "width", "--metric", "symmetry_class"], "'symmetry_class' is not numeric"),
    (["--kind", "loss", "--y", "seed"], "seed cannot be"),
    (["--kind", "trend", "--x", "gamma"], "9 groups of sigma, width"),
    (["--kind", "trend", "--x", "gamma", "--metric", "symmetry_class"], "'symmetry_class' is not numeric"),
    (["--kind", "phase", "--by", "sigma"], "--by chooses the groups of a trend plot"),
])
def test_plot_input_errors_are_one_line(tmp_path, frame, options, message):
    frame.write_parquet(tmp_path / "runs.parquet")
    result = CliRunner().invoke(app, ["plot", str(tmp_path), *options, "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_trend_data_has_seed_means_the_fitted_line_and_its_band(trend_runs):
    sigmas = [0.0, 0.5, 1.0, 1.5, 2.0]
    runs = trend_runs("sigma", sigmas, "n_dos", lambda s: 1 + 2 * s, seeds=4, noise=0.5)
    # at sigma = 2, three of four seeds diverge: no mean there, and the fit does not use the survivor
    gone = (pl.col("sigma") == 2.0) & (pl.col("seed") < 3)
    runs = runs.with_columns(pl.when(gone).then(pl.lit("diverged")).otherwise(pl.lit("ok")).alias("status"),
                             pl.when(gone).then(None).otherwise(pl.col("n_dos")).alias("n_dos"))
    data = trend_data(runs, "sigma", "n_dos", n_boot=100)
    means = data["means"]
    assert means["sigma"].to_list() == sigmas and means["mean"][-1] is None
    at_one = runs.filter(pl.col("sigma") == 1.0)["n_dos"].to_numpy()
    assert means["mean"][2] == pytest.approx(at_one.mean())
    assert means["sem"][2] == pytest.approx(at_one.std(ddof=1) / 2)
    assert means["n_diverged"].to_list() == [0, 0, 0, 0, 3]
    (line,) = data["lines"]
    row = data["table"].row(0, named=True)
    assert line["x"][[0, -1]] == pytest.approx([0.0, 1.5])             # the values with a mean
    assert line["fit"] == pytest.approx(row["intercept"] + row["slope"] * line["x"])
    low, high = line["band"]
    assert (low <= line["fit"] + 1e-9).all() and (line["fit"] <= high + 1e-9).all() and (high > low).any()
    assert (data["n_runs"], data["n_diverged"], data["n_failed"], data["log_x"]) == (20, 3, 0, False)
    fig = draw_trend(data)
    ax = fig.axes[0]
    assert ax.get_title().startswith("ρ = ") and "per unit σ" in ax.get_title()
    assert fig._suptitle.get_text() == "3 of 20 runs diverged, not in the means"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "diverged/failed runs (count) — not in the means" in texts and "seed mean ± s.e." in texts
    assert ax.get_xscale() == "linear"


def test_trend_plot_draws_one_color_per_group_on_a_log_axis(frame):
    data = trend_data(frame, "gamma", "weight_rank", by=["sigma"], n_boot=20)
    assert data["log_x"] and data["groups"] == ["sigma"] and len(data["lines"]) == 3
    assert [line["group"] for line in data["lines"]] == [{"sigma": 0.0}, {"sigma": 0.5}, {"sigma": 1.0}]
    ax = draw_trend(data).axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == ""
    groups = [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("σ = ")]
    assert len(groups) == 3 and all("ρ = " in g and "per decade of γ" in g for g in groups)
    # sigma x width is 9 groups: more than one figure tells apart
    with pytest.raises(AnalysisError, match="9 groups of sigma, width, more than the 8"):
        trend_data(frame, "gamma", "weight_rank")
