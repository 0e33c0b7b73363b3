"""Phase maps of refined folders: each (x, y) has its own x values, so points, not cells."""

import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PathCollection, QuadMesh
from typer.testing import CliRunner

from phasemap import grid, runner, spec, store
from phasemap.analysis import frame
from phasemap.cli import app
from phasemap.plots import draw_phase, phase_data

# Per sigma its own gamma values, dense near the rank changes (about 0.39 and 0.98), as
# `phasemap refine` leaves them; 0.01, 0.2, 0.6 and 1.5 are shared (the coarse grid).
GAMMAS = {0.0: [0.01, 0.2, 0.35, 0.38, 0.4, 0.42, 0.6, 0.95, 1.0, 1.05, 1.5],
          0.1: [0.01, 0.2, 0.37, 0.41, 0.6, 0.97, 1.02, 1.5]}
SHARED = [0.01, 0.2, 0.6, 1.5]


def _raw(gammas: list[float], sigma: float) -> dict:
    return {"name": "lin", "task": {"teacher": "linear", "input_dim": 3, "output_dim": 2, "n_train": 32, "n_test": 8,
                                    "spectrum": [1.0, 0.4], "whiten": True},
            "model": {"depth": 2, "width": 3, "activation": "linear", "init_scale": 0.01},
            "train": {"optimizer": "sgd", "lr": 0.2, "steps": 2000},
            "grid": {"gamma": gammas, "sigma": [sigma], "seed": {"range": 2}}}


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """A results folder with an irregular (gamma, sigma) set: two grids, one per sigma."""
    configs = [c for sigma, gammas in GAMMAS.items() for c in grid.expand(spec.parse_spec(_raw(gammas, sigma)))]
    rows, traces = runner.train_chunk(configs, "cpu")
    for row in rows:
        row["sweep"] = "lin"
    folder = tmp_path_factory.mktemp("refined")
    store.write_rows(rows, folder, traces)
    return folder


def _markers(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def test_a_refined_folder_gives_one_point_per_sample_with_its_seed_mean(refined):
    data = phase_data(refined, "gamma", "sigma", "weight_rank")
    cells = data["cells"]
    n_points = sum(len(g) for g in GAMMAS.values())
    assert not data["grid"] and data["n_points"] == cells.height == n_points
    assert cells.select("gamma", "sigma").unique().height == n_points
    runs = frame(refined)
    means = runs.group_by("gamma", "sigma").agg(pl.col("weight_rank").cast(pl.Float64).mean().alias("expected"))
    joined = cells.join(means, on=["gamma", "sigma"])
    assert joined.height == n_points and (cells["n"] == 2).all()
    assert joined["value"].to_numpy() == pytest.approx(joined["expected"].to_numpy())
    # both boundaries of both sigmas, from critical along gamma per sigma, each inside its CI
    crit = data["critical"].filter(pl.col("resolved"))
    assert sorted(crit["sigma"].to_list()) == [0.0, 0.0, 0.1, 0.1]
    assert ((crit["ci_low"] <= crit["critical"]) & (crit["critical"] <= crit["ci_high"])).all()
    assert crit.filter(pl.col("from") == 2)["critical"].to_numpy() == pytest.approx([0.39, 0.39], abs=0.03)

    fig = draw_phase(data)
    ax = fig.axes[0]
    assert not any(isinstance(c, QuadMesh) for c in ax.collections)      # no cells
    assert _markers(ax) == n_points
    assert ax.get_xscale() == "log"                                       # 0.01 to 1.5
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.1"]
    assert fig._suptitle.get_text() == f"{n_points} sampled (γ, σ) points, not a full grid: one marker each"
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "critical points (95% CI)" in texts


def test_the_cli_draws_a_refined_folder(refined, tmp_path):
    out = tmp_path / "f.png"
    result = CliRunner().invoke(app, ["plot", str(refined), "--kind", "phase", "--x", "gamma", "--y", "sigma",
                                      "--metric", "weight_rank", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8].startswith(b"\x89PNG")


def test_diverged_runs_stay_visible_on_points(refined):
    runs = frame(refined, ok_only=False)
    one = (pl.col("gamma") == 0.2) & (pl.col("sigma") == 0.0) & (pl.col("seed") == 0)   # one seed of two
    both = (pl.col("gamma") == 1.5) & (pl.col("sigma") == 0.1)                          # every seed
    gone = one | both
    runs = runs.with_columns(pl.when(gone).then(pl.lit("diverged")).otherwise(pl.col("status")).alias("status"),
                             *(pl.when(gone).then(None).otherwise(pl.col(c)).alias(c)
                               for c in ("weight_rank", "symmetry_class")))
    data = phase_data(runs, "gamma", "sigma", "weight_rank")
    bad = data["cells"].filter(pl.col("n_diverged") > 0).sort("gamma")
    assert bad["gamma"].to_list() == [0.2, 1.5] and bad["value"].to_list() == [2.0, None]
    fig = draw_phase(data)
    n = data["n_runs"]
    title = fig._suptitle.get_text()
    assert title.endswith(f"not a full grid: one marker each\n3 of {n} runs diverged, not in the means")
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert {"point with diverged/failed runs (red x behind it)", "no value: too few runs finished"} <= set(texts)
    assert _markers(fig.axes[0]) == data["n_points"]                      # the empty point is drawn too
    classes = draw_phase(phase_data(runs, "gamma", "sigma", "symmetry_class"))
    assert _markers(classes.axes[0]) == data["n_points"]


def test_the_shared_values_alone_are_a_full_grid_and_still_cells(refined):
    runs = frame(refined, ok_only=False).filter(pl.col("gamma").is_in(SHARED))
    data = phase_data(runs, "gamma", "sigma", "weight_rank")
    assert data["grid"] and data["n_points"] == len(SHARED) * 2
    fig = draw_phase(data)
    ax = fig.axes[0]
    assert any(isinstance(c, QuadMesh) for c in ax.collections) and _markers(ax) == 0
    assert fig._suptitle is None
    assert ax.get_xlim() == pytest.approx((min(SHARED), max(SHARED)))
    assert np.isfinite(data["cells"]["value"].to_numpy()).all()
