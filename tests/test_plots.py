"""Figures: the data behind them is checked; the drawing must produce a real image file."""

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap.analysis import AnalysisError
from phasemap.cli import app
from phasemap.plots import loss_data, phase_data, plot, scaling_data, width_data

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
    assert low["value"].to_list() == ["4x1|d0"]


def test_scaling_and_width_and_loss_data(frame):
    data = scaling_data(frame.filter(pl.col("sigma") == 0.0), "weight_rank")
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
    ("scaling", {"color": "weight_rank"}, ".pdf"),
    ("width", {"color": "n_distinct"}, ".png"),
    ("loss", {"x": "gamma", "y": "sigma"}, ".png"),
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
