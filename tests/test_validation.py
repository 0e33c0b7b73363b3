"""Validation against exact theory: the predictions, the checks, and the CLI's exit code."""

import numpy as np
import pytest
from typer.testing import CliRunner

from phasemap import store, validation
from phasemap.cli import app
from phasemap.grid import expand
from phasemap.runner import run_chunk
from phasemap.spec import load_spec


def test_lyapunov_boundary_without_noise_is_mu():
    assert validation.lyapunov_gamma(np.full(100, 0.8), lr=0.05) == pytest.approx(0.8, abs=1e-9)


def test_lyapunov_boundary_follows_mu_minus_t_v_for_small_lr():
    h = np.random.default_rng(0).normal(1.0, 1.5, 4000)
    mu, var = h.mean(), h.var()
    for lr in (0.002, 0.005):
        assert validation.lyapunov_gamma(h, lr) == pytest.approx(mu - lr * var, abs=0.1 * lr * var)


def train_into(folder, sweep: str, overrides: list[str]) -> dict:
    """Train a validation sweep (reduced by overrides) without Ray; return its first config."""
    spec = load_spec(validation.SWEEPS / f"{sweep}.yaml", overrides)
    rows = run_chunk(expand(spec), "cpu", max_models=256)
    for row in rows:
        row["sweep"] = sweep
    store.write_rows(rows, folder)
    return expand(spec)[0]


def test_scalar_check_on_trained_networks(tmp_path):
    cfg = train_into(tmp_path, "scalar", ["grid.seed=[0]"])
    (check,) = validation.check_scalar(tmp_path, cfg)
    assert check["ok"], check
    assert check["measured"] == pytest.approx(check["predicted"], rel=0.03)


def test_validate_exits_1_on_a_miss(monkeypatch, tmp_path):
    monkeypatch.setattr(validation, "CHECKS", {
        "scalar": lambda results, cfg: [validation._row("scalar", "q", 1.0, 1.5, 0.05)]})
    rows = validation.validate(tmp_path, run=lambda spec, out: None)
    assert rows == [{"sweep": "scalar", "quantity": "q", "predicted": 1.0, "measured": 1.5,
                     "tolerance": "5%", "ci": None, "in_ci": None, "ok": False}]
    monkeypatch.setattr(validation, "validate", lambda out, quick, run=None: rows)
    result = CliRunner().invoke(app, ["validate", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "MISS" in result.output


def test_validate_stops_on_an_incomplete_sweep_instead_of_checking_half_of_it(monkeypatch, tmp_path):
    from phasemap import executor

    checked = []
    monkeypatch.setattr(validation, "CHECKS", {"scalar": lambda results, cfg: checked.append(results) or []})
    monkeypatch.setattr(executor, "run_sweep", lambda spec, out: executor.Summary(
        total=164, skipped=0, written={"ok": 100}, missing=64, out_dir=str(out)))
    result = CliRunner().invoke(app, ["validate", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "100 of 164 configs are in" in result.output and "64 missing" in result.output
    assert checked == []


@pytest.mark.slow
def test_sgd_noise_boundary_on_trained_networks(tmp_path):
    cfg = train_into(tmp_path, "scalar-noise", ["grid.seed=[0, 1]", "grid.temperature=[0.06]"])
    (check,) = validation.check_scalar_noise(tmp_path, cfg)
    assert check["ok"], check
    # reported, though for this approximate criterion the tolerance decides
    assert check["ci"][0] <= check["measured"] <= check["ci"][1] and isinstance(check["in_ci"], bool)
    # noise moved the boundary well below the noiseless gamma_c = |E[xy]|
    assert check["measured"] < 0.95 * abs(validation._xy(cfg).mean())


def test_a_row_needs_the_exact_value_inside_its_ci():
    within_tolerance = validation._row("s", "q", 1.0, 1.01, 0.05, ci=[1.005, 1.02])
    assert within_tolerance["in_ci"] is False and not within_tolerance["ok"]
    assert validation._row("s", "q", 1.0, 1.01, 0.05, ci=[0.99, 1.02])["ok"]
    assert not validation._row("s", "q", 1.0, 1.2, 0.05, ci=[0.9, 1.3])["ok"]     # tolerance still counts
    assert validation._row("s", "q", 1.0, 1.01, 0.05, ci=[1.005, 1.02], exact=False)["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("sweep", ["linear-rank", "power-law"])
def test_exact_values_lie_inside_the_cis_on_trained_networks(tmp_path, sweep):
    cfg = train_into(tmp_path, sweep, validation.QUICK["*"])       # 2 seeds, as validate --quick
    rows = validation.CHECKS[sweep](tmp_path, cfg)
    assert all(r["ok"] for r in rows), rows
    assert all(r["in_ci"] for r in rows if r["ci"] is not None)
    assert sum(r["ci"] is not None for r in rows) == {"linear-rank": 4, "power-law": 2}[sweep]
