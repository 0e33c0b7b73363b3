"""Sweep files: malformed files are refused with the key named, exit 2 and nothing written."""

import io
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
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


ICL = textwrap.dedent("""\
    name: icl
    task: {teacher: icl_linear, input_dim: 4, n_ctx: 6, n_train: 16, n_test: 8}
    model: {family: transformer, d_k: 3}
    train: {optimizer: adamw, lr: 0.01, steps: 5}
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
    ("unknown-family", edit(ICL, "family: transformer", "family: rnn"), "model.family"),
    ("transformer-key-on-mlp", edit(GOOD, "depth: 2,", "depth: 2, n_layers: 2,"), "model.n_layers"),
    ("mlp-key-on-transformer", edit(ICL, "d_k: 3", "d_k: 3, width: 8"), "model.width"),
    ("n-ctx-under-2", edit(ICL, "n_ctx: 6", "n_ctx: 1"), "task.n_ctx"),
    ("d-k-zero", edit(ICL, "d_k: 3", "d_k: 0"), "model.d_k"),
    ("heads-negative", edit(ICL, "d_k: 3", "d_k: 3, heads: -1"), "model.heads"),
    ("icl-on-mlp", edit(ICL, "{family: transformer, d_k: 3}", "{depth: 2}"), "task.teacher"),
    ("transformer-on-mlp-teacher", edit(GOOD, "model: {depth: 2, width: 8, activation: tanh}",
                                        "model: {family: transformer}"), "model.family"),
    ("n-ctx-on-mlp-teacher", edit(GOOD, "n_test: 16", "n_test: 16, n_ctx: 5"), "task.n_ctx"),
    ("icl-vector-output", edit(ICL, "n_ctx: 6", "n_ctx: 6, output_dim: 2"), "task.output_dim"),
    ("icl-rank-over-dim", edit(ICL, "n_ctx: 6", "n_ctx: 6, teacher_rank: 5"), "task.teacher_rank"),
    ("icl-input-noise", edit(ICL, "n_ctx: 6", "n_ctx: 6, sigma: 0.1, noise_on: inputs"), "task.noise_on"),
    ("neuron-metric-on-transformer", ICL + "metrics: {distinct_threshold: 0.2}\n", "metrics.distinct_threshold"),
    ("unknown-teacher", edit(GOOD, "teacher: mlp", "teacher: rnn"),
     "task.teacher: unknown teacher 'rnn'"),
    ("task-not-mapping", edit(GOOD, "task: {teacher: mlp, teacher_rank: 3, input_dim: 4, n_train: 32, n_test: 16}", "task: 5"),
     "task: must be a mapping"),
    ("mlp-key-on-icl", edit(ICL, "n_ctx: 6", "n_ctx: 6, teacher_depth: 3"),
     "task.teacher_depth: does not apply to teacher: icl_linear (only to teacher: mlp)"),
    ("linear-key-on-mlp-in-grid", GOOD + "  whiten: [true]\n", "grid.whiten: value True: task.whiten: does not apply to teacher: mlp"),
    ("teacher-axis-leaves-a-key-behind", edit(GOOD, "teacher_rank: 3, ", "") + "  teacher_rank: [3]\n"
     "  teacher: [mlp, identity]\n", "task.teacher_rank: does not apply to teacher: identity"),
    ("record-not-a-mapping", edit(GOOD, "steps: 20", "steps: 20, record: 5"), "train.record: expected {every: K}"),
    ("record-both-kinds", edit(GOOD, "steps: 20", "steps: 20, record: {every: 5, log: 3}"), "train.record"),
    ("record-every-zero", edit(GOOD, "steps: 20", "steps: 20, record: {every: 0}"), "train.record.every"),
    ("record-every-past-steps", edit(GOOD, "steps: 20", "steps: 20, record: {every: 50}"), "train.record: every 50"),
    ("record-log-one-point", edit(GOOD, "steps: 20", "steps: 20, record: {log: 1}"), "train.record.log"),
    ("record-log-past-steps", edit(GOOD, "steps: 20", "steps: 20, record: {log: 30}"), "train.record: log 30"),
    ("record-log-float", edit(GOOD, "steps: 20", "steps: 20, record: {log: 2.5}"), "train.record.log"),
    ("record-as-axis", GOOD + "  record: [1, 2]\n", "grid.record"),
    ("teacher-axis-against-the-section", GOOD + "  teacher: [mlp, identity]\n",
     "grid.teacher: value 'identity': task.teacher_rank: does not apply to teacher: identity"),
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


@pytest.mark.parametrize("text", [GOOD, LINEAR, ICL], ids=["GOOD", "LINEAR", "ICL"])
def test_the_files_the_malformed_cases_edit_are_valid(text):
    # Otherwise every case would be refused for the base file's fault, not for its own edit.
    assert expand(parse_spec(yaml.safe_load(text)))


# Integer keys past these limits would hang a run or exhaust memory: refused, the key named.
TOO_LARGE = [
    ("train", "steps", 10**9 + 1, "1,000,000,000"),
    ("train", "seed", 2**63, "9,223,372,036,854,775,807"),
    ("model", "width", 10**5 + 1, "100,000"),
    ("model", "depth", 101, "100"),
    ("task", "input_dim", 10**5 + 1, "100,000"),
    ("task", "output_dim", 10**5 + 1, "100,000"),
    ("task", "n_train", 10**8 + 1, "100,000,000"),
    ("task", "n_test", 10**8 + 1, "100,000,000"),
    ("task", "teacher_rank", 10**5 + 1, "100,000"),
    ("task", "teacher_depth", 101, "100"),
    ("task", "data_seed", 2**63, "9,223,372,036,854,775,807"),
]


@pytest.mark.parametrize("section,key,value,limit", TOO_LARGE, ids=[c[1] for c in TOO_LARGE])
def test_a_value_past_its_limit_is_refused_naming_the_key(tiny, section, key, value, limit):
    with pytest.raises(SpecError) as err:
        parse_spec(tiny(**{section: {key: value}}))
    assert str(err.value) == f"<sweep>: {section}.{key}: must be at most {limit} (got {value})"


def test_a_batch_size_past_its_limit_is_refused(tiny):
    with pytest.raises(SpecError, match="train.batch_size: expected a positive integer up to 100,000,000"):
        parse_spec(tiny(train={"batch_size": 10**8 + 1}))


def test_values_at_the_limits_are_accepted(tiny):
    at_limit = {"task": {"input_dim": 10**5, "output_dim": 10**5, "n_train": 10**8, "n_test": 10**8,
                         "teacher_rank": 10**5, "teacher_depth": 100, "data_seed": 2**63 - 1},
                "model": {"width": 10**5, "depth": 100},
                "train": {"steps": 10**9, "seed": 2**63 - 1, "batch_size": 10**8}}
    spec = parse_spec(tiny(**at_limit))
    for section, values in at_limit.items():
        assert getattr(spec, section).model_dump(include=set(values)) == values


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


# Sweep files that cannot be read as text: (case id, how to make it at PATH, the message after "PATH: ").
UNREADABLE = [
    ("not-utf8", lambda p: p.write_bytes(b"name: x\n\xff\xfe"), "not a UTF-8 text file (byte 0xff on line 2)"),
    ("latin-1", lambda p: p.write_bytes(GOOD.replace("good", "caf\xe9").encode("latin-1")),
     "not a UTF-8 text file (byte 0xe9 on line 1)"),
    ("directory", lambda p: p.mkdir(), "is a directory, not a sweep file"),
    ("empty", lambda p: p.write_text(""), "the file is empty"),
    ("only-comments", lambda p: p.write_text("# a sweep, some day\n\n"), "the file is empty"),
    ("missing", lambda p: None, "no such sweep file"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_a_file_that_cannot_be_read_is_one_clear_error(tmp_path, make, message):
    path = tmp_path / "sweep.yaml"
    make(path)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_read_error_is_one_clear_error(tmp_path, monkeypatch):
    # Provoked directly: as root (how the tests run here) chmod 000 does not stop reading.
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(SpecError, match=r"sweep.yaml: cannot read the sweep file \(Permission denied\)$"):
        load_spec(path)


def test_standard_input_that_is_not_utf8_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name: x\n\xff\xfe")))
    with pytest.raises(SpecError, match=r"^<stdin>: not a UTF-8 text file \(byte 0xff on line 2\)"):
        load_spec("-")


def test_standard_input_and_a_byte_order_mark_are_read(tmp_path, monkeypatch):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_spec(path).name == "good"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(GOOD.encode())))
    assert load_spec("-").name == "good"
