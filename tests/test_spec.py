"""Sweep files: malformed files are refused with the key named, exit 2 and nothing written."""

import textwrap

import pytest
from typer.testing import CliRunner

from phasemap.cli import app
from phasemap.grid import expand
from phasemap.spec import SpecError, load_spec, parse_spec

GOOD = textwrap.dedent("""\
    name: good
    task: {teacher: mlp, teacher_rank: 3, input_dim: 4, n_train: 32, n_test: 16}
    model: {depth: 2, width: 8, activation: tanh}
    train: {optimizer: sgd, lr: 0.1, steps: 20}
    grid:
      gamma: [0.0, 0.01]
    """)

LINEAR = textwrap.dedent("""\
    name: lin
    task: {teacher: linear, input_dim: 4, output_dim: 3, n_train: 32, spectrum: [1.0, 0.5, 0.2]}
    model: {depth: 2, width: 4, activation: linear}
    """)


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# (case id, file text, text the error must contain: the offending key)
MALFORMED = [
    ("unknown-top-key", GOOD + "grdi: {}\n", "grdi"),
    ("misspelled-key", edit(GOOD, "lr: 0.1", "lr: 0.1, gama: 0.1"), "train.gama"),
    ("width-zero", edit(GOOD, "width: 8", "width: 0"), "model.width"),
    ("width-string", edit(GOOD, "width: 8", "width: wide"), "model.width"),
    ("width-float", edit(GOOD, "width: 8", "width: 8.5"), "model.width"),
    ("depth-bool", edit(GOOD, "depth: 2", "depth: true"), "model.depth"),
    ("gamma-negative", edit(GOOD, "lr: 0.1", "lr: 0.1, gamma: -0.1"), "train.gamma"),
    ("grid-gamma-negative", edit(GOOD, "[0.0, 0.01]", "[0.01, -0.1]"), "grid.gamma"),
    ("empty-axis", edit(GOOD, "[0.0, 0.01]", "[]"), "grid.gamma"),
    ("lr-zero", edit(GOOD, "lr: 0.1", "lr: 0"), "train.lr"),
    ("lr-negative", edit(GOOD, "lr: 0.1", "lr: -0.5"), "train.lr"),
    ("logspace-zero-bound", edit(GOOD, "[0.0, 0.01]", "{logspace: [0, 0.1, 4]}"), "grid.gamma"),
    ("logspace-negative-bound", edit(GOOD, "[0.0, 0.01]", "{logspace: [-4, -1, 4]}"), "grid.gamma"),
    ("axis-kind-typo", edit(GOOD, "[0.0, 0.01]", "{logspce: [0.001, 0.1, 4]}"), "grid.gamma"),
    ("unknown-activation", edit(GOOD, "activation: tanh", "activation: gelu"), "model.activation"),
    ("unknown-optimizer", edit(GOOD, "optimizer: sgd", "optimizer: rmsprop"), "train.optimizer"),
    ("yaml-syntax", GOOD + "train: [unclosed\n", "line 8"),
    ("duplicate-yaml-key", GOOD + "name: again\n", "duplicate key 'name'"),
    ("missing-name", GOOD.replace("name: good\n", ""), "name"),
    ("bad-name", edit(GOOD, "name: good", "name: ../evil"), "name"),
    ("unknown-axis", edit(GOOD, "gamma: [0.0, 0.01]", "gammma: [0.0, 0.01]"), "grid.gammma"),
    ("axis-bad-type", GOOD + "  width: [8, many]\n", "grid.width"),
    ("axis-duplicate-value", edit(GOOD, "[0.0, 0.01]", "[0.01, 0.01]"), "grid.gamma"),
    ("empty-range", GOOD + "  seed: {range: 0}\n", "grid.seed"),
    ("rank-over-spectrum", edit(LINEAR, "spectrum:", "teacher_rank: 5, spectrum:"), "task.teacher_rank"),
    ("rank-over-spectrum-in-grid", LINEAR + "grid: {teacher_rank: [1, 2, 4]}\n", "task.teacher_rank"),
    ("linear-without-spectrum", edit(LINEAR, ", spectrum: [1.0, 0.5, 0.2]", ""), "task.spectrum"),
    ("spectrum-too-long", edit(LINEAR, "[1.0, 0.5, 0.2]", "[1.0, 0.5, 0.2, 0.1]"), "task.spectrum"),
    ("spectrum-on-mlp", edit(GOOD, "teacher_rank: 3,", "teacher_rank: 3, spectrum: [1.0],"), "task.spectrum"),
    ("spectrum-not-positive", edit(LINEAR, "[1.0, 0.5, 0.2]", "[1.0, 0.0]"), "task.spectrum"),
    ("mlp-without-rank", edit(GOOD, "teacher_rank: 3, ", ""), "task.teacher_rank"),
    ("whiten-too-few-samples", edit(LINEAR, "n_train: 32", "n_train: 3, whiten: true"), "task.whiten"),
    ("batch-over-n-train", edit(GOOD, "lr: 0.1", "lr: 0.1, batch_size: 64"), "train.batch_size"),
    ("temperature-batch-under-1", edit(GOOD, "lr: 0.1", "lr: 0.1, temperature: 1.0"), "train.temperature"),
    ("steps-float", edit(GOOD, "steps: 20", "steps: 1.5"), "train.steps"),
    ("section-not-mapping", edit(GOOD, "model: {depth: 2, width: 8, activation: tanh}", "model: 5"), "model"),
    ("sigma-negative", edit(GOOD, "n_test: 16", "n_test: 16, sigma: -1"), "task.sigma"),
    ("nan-value", edit(GOOD, "lr: 0.1", "lr: .nan"), "train.lr"),
]


@pytest.mark.parametrize("text,key", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_file_is_refused_naming_the_key(tmp_path, monkeypatch, text, key):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert key in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "results").exists()


def test_there_are_at_least_twenty_distinct_malformed_cases():
    assert len({c[1] for c in MALFORMED}) >= 20


def test_good_file_loads_and_runs_dry(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 configs" in result.output
    assert not (tmp_path / "out").exists()


def test_set_overrides_any_key(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    spec = load_spec(path, ["train.steps=500", "model.width=16", "grid.seed={range: 3}", "sigma=0.5"])
    configs = expand(spec)
    assert {c["steps"] for c in configs} == {500}
    assert {c["width"] for c in configs} == {16}
    assert {c["sigma"] for c in configs} == {0.5}
    assert len(configs) == 6


def test_set_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    with pytest.raises(SpecError, match="train.stepz"):
        load_spec(path, ["train.stepz=5"])
    result = CliRunner().invoke(app, ["run", str(path), "--set", "model.widht=3", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "model.widht" in result.output
    assert "width" in result.output  # the suggestion


def test_scientific_notation_without_dot_is_a_number():
    # PyYAML reads 1e-3 as a string; the spec must still take it as a float.
    spec = parse_spec({"name": "x", "task": {"teacher_rank": 2}, "train": {"gamma": "1e-3"}})
    assert spec.train.gamma == pytest.approx(1e-3)


def test_cuda_without_a_gpu_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(app, ["run", str(path), "--device", "cuda", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--device cuda" in result.output
    assert not (tmp_path / "o").exists()
