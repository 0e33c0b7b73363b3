"""Grid expansion, derived values and run ids."""

import pytest

from phasemap.grid import axis_values, expand, run_id
from phasemap.spec import SpecError, parse_spec


def test_axis_kinds():
    assert axis_values("g", {"logspace": [1e-4, 1e-1, 4]}) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert axis_values("g", {"linspace": [0, 1, 3]}) == [0.0, 0.5, 1.0]
    assert axis_values("s", {"range": 3}) == [0, 1, 2]
    assert axis_values("s", {"range": [2, 4]}) == [2, 3]
    assert axis_values("g", [3, 1]) == [3, 1]


def test_product_over_axes_in_file_order(tiny):
    configs = expand(parse_spec(tiny(grid={"gamma": [0.0, 0.1, 0.2], "seed": {"range": 2}, "width": [4, 8]})))
    assert len(configs) == 12
    assert [(c["gamma"], c["seed"], c["width"]) for c in configs[:3]] == [(0.0, 0, 4), (0.0, 0, 8), (0.0, 1, 4)]
    assert len({c["run_id"] for c in configs}) == 12


def test_any_scalar_key_is_sweepable_bare_or_qualified(tiny):
    configs = expand(parse_spec(tiny(grid={"input_scale": [0.5, 1.0], "train.lr": [0.01, 0.1], "depth": [2, 3]})))
    assert {(c["input_scale"], c["lr"], c["depth"]) for c in configs} == {
        (s, lr, d) for s in (0.5, 1.0) for lr in (0.01, 0.1) for d in (2, 3)}


def test_linspace_over_an_integer_key_gives_integers(tiny):
    configs = expand(parse_spec(tiny(grid={"width": {"linspace": [4, 16, 4]}})))
    assert [c["width"] for c in configs] == [4, 8, 12, 16]
    assert all(isinstance(c["width"], int) for c in configs)


def test_temperature_holds_lr_and_derives_batch_size(tiny):
    configs = expand(parse_spec(tiny(train={"lr": 0.1}, grid={"temperature": [0.0, 0.01, 0.05]})))
    assert [c["batch_size"] for c in configs] == [32, 10, 2]
    assert {c["lr"] for c in configs} == {0.1}
    assert [c["temperature"] for c in configs] == [0.0, 0.01, 0.05]
    assert [c["temperature_effective"] for c in configs] == [0.0, 0.01, 0.05]


def test_temperature_can_hold_batch_size_and_derive_lr(tiny):
    configs = expand(parse_spec(tiny(train={"hold": "batch_size", "batch_size": 8}, grid={"temperature": [0.001, 0.01]})))
    assert [c["lr"] for c in configs] == [0.008, 0.08]
    assert {c["batch_size"] for c in configs} == {8}


def test_without_temperature_every_row_still_has_one(tiny):
    full, mini = expand(parse_spec(tiny(grid={"batch_size": ["full", 8]})))
    assert (full["batch_size"], full["temperature"]) == (32, 0.0)
    assert (mini["batch_size"], mini["temperature"]) == (8, pytest.approx(0.1 / 8))


def test_power_law_spectrum_is_resolved_and_truncated_by_rank():
    raw = {"name": "p", "task": {"teacher": "linear", "input_dim": 6, "output_dim": 5,
                                 "spectrum": {"power_law": {"c": 2.0, "alpha": 1.0}}},
           "grid": {"teacher_rank": [2, 5]}}
    two, five = expand(parse_spec(raw))
    assert two["spectrum"] == [2.0, 1.0]
    assert five["spectrum"] == pytest.approx([2.0, 1.0, 2 / 3, 0.5, 0.4])
    assert five["spectrum_alpha"] == 1.0 and five["spectrum_c"] == 2.0


def test_run_id_ignores_key_order_and_changes_with_any_value(tiny):
    cfg = expand(parse_spec(tiny()))[0]
    reordered = dict(reversed(list(cfg.items())))
    assert run_id(reordered) == cfg["run_id"]
    assert run_id({**cfg, "gamma": cfg["gamma"] + 1e-9}) != cfg["run_id"]
    assert run_id({**cfg, "delta_threshold": 0.2}) != cfg["run_id"]


def test_run_id_is_pinned():
    # A golden id: a change here means every existing dataset would rerun from scratch.
    cfg = expand(parse_spec({"name": "golden", "task": {"teacher_rank": 4}}))[0]
    assert cfg["run_id"] == GOLDEN_ID


def test_sweep_name_is_not_part_of_the_id(tiny):
    a = expand(parse_spec(tiny(name="one")))
    b = expand(parse_spec(tiny(name="two")))
    assert [c["run_id"] for c in a] == [c["run_id"] for c in b]


def test_axis_given_twice_is_refused(tiny):
    with pytest.raises(SpecError, match="given twice"):
        expand(parse_spec(tiny(grid={"gamma": [0.1], "train.gamma": [0.2]})))


def test_section_qualified_axis_in_the_wrong_section_is_refused(tiny):
    with pytest.raises(SpecError, match="grid.model.gamma"):
        expand(parse_spec(tiny(grid={"model.gamma": [0.1]})))


GOLDEN_ID = "bce7a0b08d8cbfd55618ebe6715047d2"


def test_every_shipped_sweep_file_is_valid():
    from pathlib import Path

    from phasemap.spec import load_spec

    files = sorted((Path(__file__).resolve().parents[1] / "sweeps").rglob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        assert expand(load_spec(path)), path
