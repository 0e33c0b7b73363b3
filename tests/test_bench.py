"""`phasemap bench`: the engine benchmark trains ref-mlp configs and reports what it measured."""

import pytest
import torch
from typer.testing import CliRunner

from phasemap.bench import engine_bench, load_configs, matmul_flops
from phasemap.cli import app


def test_engine_bench_trains_the_configs_with_the_backend_asked_for():
    configs = load_configs(n=4)
    assert len({c["gamma"] for c in configs}) == 4                # spread over the grid
    cfg = configs[0]
    assert matmul_flops({**cfg, "batch_size": 2 * cfg["batch_size"]}) == 2 * matmul_flops(cfg)
    assert matmul_flops({**cfg, "depth": 3}) > matmul_flops(cfg) > 0      # one more hidden layer costs more
    for backend in ("fused", "eager"):
        out = engine_bench(configs, "cpu", workers=1, backend=backend)
        assert out["backend"] == backend
        assert out["runs"] == out["ok"] == 4
        assert out["runs_per_s"] > 0 and out["gflops"] > 0 and out["peak_gflops"] > 0
        assert 0 < out["peak_fraction"] < 2        # the step cannot run much faster than a large matmul


def test_bench_refuses_an_unknown_backend():
    result = CliRunner().invoke(app, ["bench", "--backend", "numba", "--baseline", "0"])
    assert result.exit_code == 2
    assert "--backend" in result.output and "numba" in result.output


def test_the_transformer_workload_is_trained_batched_and_one_at_a_time():
    import json

    result = CliRunner().invoke(app, ["bench", "--family", "transformer", "--configs", "2", "--workers", "1",
                                      "--baseline", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["engine"]["backend"] == "autograd" and out["engine"]["runs"] == out["engine"]["ok"] == 2
    assert "gflops" not in out["engine"]                      # matmul FLOPs are counted for the MLP only
    assert out["baseline"]["runs"] == 1 and out["baseline"]["threads"] == 1
    assert out["speedup_per_core"] > 0 and "speedup" not in out       # the per-core ratio, not Ray's baseline


def test_one_at_a_time_trains_the_model_it_is_given(monkeypatch):
    from phasemap import bench

    cfg = load_configs(bench.REFERENCES["transformer"], 1)[0]
    seen = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (seen.append(1), real_step(self, *a, **k))[1])
    bench.one_at_a_time({**cfg, "steps": 3})
    assert len(seen) == 3


def test_bench_refuses_an_unknown_family():
    result = CliRunner().invoke(app, ["bench", "--family", "rnn", "--baseline", "0"])
    assert result.exit_code == 2 and "--family" in result.output and "rnn" in result.output


def test_the_batch_size_sweep_trains_that_many_models_per_batch():
    import json

    result = CliRunner().invoke(app, ["bench", "--models", "3,5", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["models"] for r in rows] == [3, 5] and [r["runs"] for r in rows] == [3, 5]
    assert all(r["ok"] == r["runs"] and 0 < r["peak_fraction"] < 2 for r in rows)
    bad = CliRunner().invoke(app, ["bench", "--models", "256,x"])
    assert bad.exit_code == 2 and "--models 256,x: give positive integers" in bad.output


@pytest.mark.slow
def test_the_scale_benchmark_runs_a_trivial_sweep_end_to_end_through_tune(tmp_path):
    import json

    out = tmp_path / "scale"
    result = CliRunner().invoke(app, ["bench", "--scale", "200", "--num-cpus", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["configs"] == r["rows"] == r["run_ids"] == 200 and r["missing"] == 0 and r["left_after"] == 0
    assert r["trial_peak_mb"] > 0 and r["driver_peak_mb"] > 0
    again = CliRunner().invoke(app, ["bench", "--scale", "200", "--out", str(out)])
    assert again.exit_code == 2 and "already holds results" in again.output
    import ray

    assert not ray.is_initialized()          # the Ray it started is gone (later tests start their own)
