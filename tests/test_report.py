"""`phasemap report`: one self-contained HTML page, its sections from the same data functions as the
other commands, refusals, and (slow) the page in a real browser: no console error, every figure
drawn, no request leaving the file."""

import os
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap import executor, store
from phasemap.cli import app
from phasemap.report import report
from phasemap.spec import parse_spec

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small trained sweep (gamma x temperature x 2 seeds), one run forced to diverge, recorded."""
    from conftest import tiny_raw

    out = tmp_path_factory.mktemp("report") / "res"
    raw = tiny_raw(train={"steps": 300, "record": {"log": 8}},
                   grid={"gamma": [0.0, 0.003, 0.03, 0.3], "temperature": [0.0, 0.005], "seed": {"range": 2}})
    executor.run_sweep(parse_spec(raw), out, executor="process")
    rows = pl.read_parquet(store.files(out))
    bad = rows.head(1).with_columns(pl.lit("diverged").alias("status"), pl.lit(120).alias("diverged_step"),
                                    pl.lit("x" * 32).alias("run_id"), pl.lit(9).alias("seed"))
    store.write_rows(bad.drop("finished_at").to_dicts(), out)
    return out


def test_the_page_holds_every_section_that_applies_and_nothing_outside_the_file(trained):
    page = report([str(trained)])
    for heading in ("the study", "phase diagram of", "training dynamics", "diverged and failed runs"):
        assert heading in page, heading
    assert "refinement" not in page                       # no refine.db: left out, not shown empty
    assert page.count("<svg") >= 2 and "1 diverged runs" in page and "x" * 32 in page
    # no network reference of any kind (SVG namespace names are not fetched)
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)
    assert "@import" not in page and "url(http" not in page
    assert "<script src" not in page and "<link" not in page
    # the sweep file and the versions that trained it, from the runs files' metadata
    assert "Sweep file tiny" in page and "steps: 300" in page and "record:" in page
    assert f"torch {__import__('torch').__version__}" in page


def test_the_critical_table_is_the_phase_figures_own(trained):
    from phasemap.plots import phase_data

    page = report([str(trained)], metric="n_distinct")
    found = phase_data(str(trained), "gamma", "temperature", "n_distinct")["critical"]
    for value in found["critical"].to_list():
        assert f'data-v="{value!r}"' in page


def test_a_missing_or_empty_folder_is_one_line_and_exit_2(tmp_path):
    for folder in (tmp_path / "nothing", tmp_path):
        result = CliRunner().invoke(app, ["report", str(folder), "-o", str(tmp_path / "r.html")])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert "no phasemap results" in result.output and not (tmp_path / "r.html").exists()
    bad = CliRunner().invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.png")])
    assert bad.exit_code == 2 and "end it in .html" in bad.output


def test_a_metric_the_results_do_not_have_is_refused(trained, tmp_path):
    result = CliRunner().invoke(app, ["report", str(trained), "-o", str(tmp_path / "r.html"), "--metric", "bogus"])
    assert result.exit_code == 2 and "metric 'bogus' is not a column" in result.output
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_the_page_in_a_real_browser(trained, tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", str(trained), "-o", str(page)]).exit_code == 0
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        sizes = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure svg')).map(s => s.getBoundingClientRect())"
            ".map(r => [r.width, r.height]);")
        requests = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        driver.find_element("css selector", "table.sortable th").click()       # sorting runs without error
        errors += [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        Path(tmp_path / "report.png").write_bytes(driver.get_screenshot_as_png())
        driver.set_window_size(380, 900)                  # a narrow window: figures shrink, nothing breaks
        narrow = driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
        Path(tmp_path / "report-narrow.png").write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.quit()
    assert len(sizes) >= 2 and all(w > 100 and h > 50 for w, h in sizes), sizes
    assert requests == [] and errors == []
    assert narrow
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_refined_study_gets_its_rounds(tmp_path):
    spec = tmp_path / "lin.yaml"
    spec.write_text("name: lin\ntask: {teacher: linear, input_dim: 3, output_dim: 2, n_train: 32, n_test: 8, "
                    "spectrum: [1.0, 0.4], whiten: true}\nmodel: {depth: 2, width: 3, activation: linear, init_scale: 0.01}\n"
                    "train: {optimizer: sgd, lr: 0.2, steps: 1500}\ngrid:\n  gamma: {logspace: [0.1, 2.0, 4]}\n  seed: {range: 2}\n")
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["refine", str(spec), "--metric", "weight_rank", "--axis", "gamma",
                                    "--out", str(out), "--budget", "24"]).exit_code in (0, 1)
    page = report([str(out)])
    assert "refinement" in page and "Rounds of lin:weight_rank:gamma:boundary" in page
    assert "round (0: the coarse grid)" in page
