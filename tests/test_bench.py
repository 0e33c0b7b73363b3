"""`phasemap bench`: the engine benchmark trains ref-mlp configs and reports what it measured."""

from typer.testing import CliRunner

from phasemap.bench import engine_bench, load_configs, matmul_flops
from phasemap.cli import app


def test_engine_bench_trains_the_configs_with_the_backend_asked_for():
    configs = load_configs(n=4)
    assert len({c["gamma"] for c in configs}) == 4                # spread over the grid
    assert matmul_flops(configs[0]) == 2.0 * 300 * (2 * (10 * 64 + 64) + 64)
    for backend in ("fused", "eager"):
        out = engine_bench(configs, "cpu", workers=1, backend=backend)
        assert out["backend"] == backend
        assert out["runs"] == out["ok"] == 4
        assert out["runs_per_s"] == 4 / out["seconds"] and out["gflops"] > 0
        assert 0 < out["peak_fraction"] == out["gflops"] / out["peak_gflops"]


def test_bench_refuses_an_unknown_backend():
    result = CliRunner().invoke(app, ["bench", "--backend", "numba", "--baseline", "0"])
    assert result.exit_code == 2
    assert "--backend" in result.output and "numba" in result.output
