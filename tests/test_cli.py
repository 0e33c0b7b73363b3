"""The console script's contract: one line and an exit code for every error, plain text when piped."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from phasemap import cli

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_a_bug_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    def broken(results):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("phasemap.summary.summarize", broken)
    code, out, err = run_main(capsys, "show", tmp_path)
    assert code == 1
    assert err.strip().splitlines() == ["error: internal error: RuntimeError: boom (a bug in phasemap: please "
                                        "report it; `phasemap --debug ...` shows the traceback)"]
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "show", str(tmp_path)])


@pytest.mark.parametrize("argv,code,says", [
    (["run"], 2, "Missing argument"),
    (["run", "sweeps/quickstart.yaml", "--chunk", "0"], 2, "--chunk"),
    (["critical", "nowhere"], 2, "--metric"),
    (["run", "sweeps/quickstart.yaml", "--device", "tpu", "--dry-run"], 2, "'tpu' is not one of auto, cpu, cuda"),
])
def test_usage_errors_exit_2_without_a_traceback(capsys, argv, code, says):
    got, out, err = run_main(capsys, *argv)
    assert got == code and says in err and "Traceback" not in err + out


def test_a_sweep_file_that_is_not_utf8_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\n\xff\xfe")
    code, out, err = run_main(capsys, "run", bad, "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a UTF-8 text file" in err


def test_a_grid_over_the_limit_is_refused_with_the_count(capsys, tmp_path):
    code, out, err = run_main(capsys, "run", ROOT / "sweeps" / "quickstart.yaml", "--dry-run", "--out", tmp_path,
                              "--set", "grid.seed={range: 1000000000}")
    assert code == 2 and "12,000,000,000 configs" in err and "--max-configs" in err
    code, out, err = run_main(capsys, "run", ROOT / "sweeps" / "quickstart.yaml", "--dry-run", "--out", tmp_path,
                              "--max-configs", "40")
    assert code == 2 and "48 configs" in err and "limit of 40" in err


def test_piped_output_is_not_cut_at_80_columns(tmp_path):
    """critical's table has more columns than 80 characters hold; piped, every number is printed whole."""
    gammas = np.geomspace(0.01, 10, 12)
    rows = [{"run_id": f"{g}-{s}-{t}", "status": "ok", "sweep": "wide", "gamma": float(g), "seed": s,
             "temperature_of_the_stochastic_gradient_noise": t, "weight_rank": int(g < 1.2345678)}
            for g in gammas for s in range(2) for t in (0.0, 0.1)]
    folder = tmp_path / ("a-long-folder-name-" * 4)
    folder.mkdir()
    pl.DataFrame(rows).write_parquet(folder / "part-0.parquet")
    done = subprocess.run([sys.executable, "-m", "phasemap.cli", "critical", str(folder), "--metric", "weight_rank",
                           "--axis", "gamma"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "…" not in done.stdout and max(map(len, lines)) > 100
    assert any("temperature_of_the_stochastic_gradient_noise" in line for line in lines)
    shown = subprocess.run([sys.executable, "-m", "phasemap.cli", "show", str(folder)], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert str(folder) in shown.stdout.splitlines()[0]


def test_a_damaged_file_is_one_warning_line_and_the_rest_is_read(capsys, tmp_path):
    for i in range(2):
        pl.DataFrame({"run_id": [f"r{i}"], "status": ["ok"], "sweep": ["s"], "gamma": [float(i)]}).write_parquet(
            tmp_path / f"part-{i}.parquet")
    damaged = tmp_path / "part-1.parquet"
    damaged.write_bytes(damaged.read_bytes()[:20])
    code, out, err = run_main(capsys, "show", tmp_path, "--json")
    assert code == 0 and '"runs": 1' in out
    assert err.strip().splitlines() == [f"warning: {damaged} is not a readable Parquet file (Parquet magic bytes "
                                        "not found in footer. Either the file is corrupted or this is not a parquet "
                                        "file.): skipped"]


def test_show_says_which_rank_column_to_read_for_scalar_outputs(capsys, tmp_path):
    for out_dim, folder in ((1, tmp_path / "scalar"), (5, tmp_path / "vector")):
        folder.mkdir()
        pl.DataFrame({"run_id": ["a", "b"], "status": ["ok", "ok"], "sweep": ["s", "s"], "gamma": [0.1, 0.2],
                      "output_dim": [out_dim] * 2, "weight_rank": [1, 1]}).write_parquet(folder / "part-0.parquet")
    code, out, _ = run_main(capsys, "show", tmp_path / "scalar")
    assert code == 0 and "note: weight_rank is the rank of the whole product" in out and "layer_weight_rank" in out
    code, out, _ = run_main(capsys, "show", tmp_path / "vector")
    assert code == 0 and "note:" not in out
    (tmp_path / "attention").mkdir()          # a transformer's weight_rank is its readout's: no note
    pl.DataFrame({"run_id": ["a", "b"], "status": ["ok", "ok"], "sweep": ["s", "s"], "gamma": [0.1, 0.2],
                  "output_dim": [1, 1], "family": ["transformer"] * 2, "weight_rank": [1, 1]}).write_parquet(
        tmp_path / "attention" / "part-0.parquet")
    code, out, _ = run_main(capsys, "show", tmp_path / "attention")
    assert code == 0 and "note:" not in out


def test_run_refuses_to_add_rows_beside_an_earlier_definition_of_n_dos(capsys, tmp_path):
    # A file from before symmetry-aware Delta: metric columns, but no sign_identify config column.
    old = pl.DataFrame({"run_id": ["a"], "status": ["ok"], "sweep": ["quickstart"], "gamma": [0.1], "n_dos": [7]})
    old.write_parquet(tmp_path / "part-old.parquet")
    code, out, err = run_main(capsys, "run", ROOT / "sweeps" / "quickstart.yaml", "--dry-run", "--out", tmp_path)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {tmp_path} holds 1 file(s) written before phasemap measured Delta with the "
                          "sign-flip symmetry") and "part-old.parquet" in err and "--out" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-old.parquet"]
    code, out, _ = run_main(capsys, "show", tmp_path, "--json")      # readers still read it
    assert code == 0 and '"runs": 1' in out
    (tmp_path / "part-old.parquet").unlink()                       # a transformer's rows carry family instead
    pl.DataFrame({"run_id": ["b"], "status": ["ok"], "sweep": ["quickstart"], "gamma": [0.1], "n_dos": [2],
                  "family": ["transformer"]}).write_parquet(tmp_path / "part-new.parquet")
    code, out, err = run_main(capsys, "run", ROOT / "sweeps" / "quickstart.yaml", "--dry-run", "--out", tmp_path)
    assert code == 0 and "48 to run" in out and err == ""
