"""Grid expansion, derived values, run ids and the size limit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from phasemap.grid import DEFAULT_MAX_CONFIGS, axis_values, check_size, count, expand, run_id
from phasemap.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

REPO = Path(__file__).resolve().parents[1]


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
    # A golden id: a change here means every existing dataset would rerun from scratch. Changed
    # on purpose once, when sign_identify and delta_relative joined every config (n_dos changed
    # meaning; run refuses folders written before, see store.RESUME_COLUMNS).
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


GOLDEN_ID = "f479f7b34ce04a50b1b9b5aac2718678"


def test_every_shipped_sweep_file_is_valid():
    from phasemap.spec import load_spec

    files = sorted((REPO / "sweeps").rglob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        assert expand(load_spec(path)), path


@pytest.fixture
def no_big_arrays(monkeypatch):
    """Make building a long logspace/linspace fail the test at once instead of filling memory."""
    for name in ("geomspace", "linspace"):
        real = getattr(np, name)

        def guarded(lo, hi, n=50, *args, _real=real, **kwargs):
            assert n <= 100, f"built an axis of {n} values"
            return _real(lo, hi, n, *args, **kwargs)

        monkeypatch.setattr(np, name, guarded)


def test_count_reads_sizes_from_the_axis_definitions(tiny, no_big_arrays):
    spec = parse_spec(tiny(grid={"gamma": {"logspace": [1e-4, 1, 10**9]}, "seed": {"range": [5, 10**12]},
                                 "lr": {"linspace": [0.01, 0.1, 7]}, "width": [4, 8, 16]}))
    assert count(spec) == 10**9 * (10**12 - 5) * 7 * 3  # exact: Python ints, no overflow
    assert count(parse_spec(tiny(grid={}))) == 1


def test_count_checks_the_axis_form(tiny):
    with pytest.raises(SpecError, match="grid.gamma: logspace takes"):
        count(parse_spec(tiny(grid={"gamma": {"logspace": [1e-4, 1]}})))
    with pytest.raises(SpecError, match="grid.seed: range"):
        count(parse_spec(tiny(grid={"seed": {"range": [5, 2]}})))


def test_a_grid_over_the_limit_is_refused_before_any_axis_is_built(tiny, no_big_arrays):
    spec = parse_spec(tiny(grid={"gamma": {"logspace": [1e-4, 1, 1000]}, "seed": {"range": 1_000_000}}))
    with pytest.raises(SpecError) as err:
        expand(spec)
    assert str(err.value) == ("grid: 1,000,000,000 configs (gamma 1,000 x seed 1,000,000) exceed the limit "
                              f"of {DEFAULT_MAX_CONFIGS:,}; pass --max-configs to raise it")
    assert err.value.key == "grid"


def test_one_axis_longer_than_the_limit_is_refused_before_it_is_built(tiny, no_big_arrays):
    spec = parse_spec(tiny(grid={"gamma": {"logspace": [1e-4, 1, 10**9]}}))
    with pytest.raises(SpecError, match=r"1,000,000,000 configs \(gamma 1,000,000,000\)"):
        expand(spec)
    with pytest.raises(SpecError, match="exceed the limit of 999"):
        expand(parse_spec(tiny(grid={"seed": {"range": 1000}})), max_configs=999)


def test_max_configs_is_the_largest_size_allowed(tiny):
    spec = parse_spec(tiny(grid={"gamma": [0.0, 0.1, 0.2], "seed": {"range": 4}}))
    assert len(expand(spec, max_configs=12)) == 12
    assert len(expand(spec, max_configs=None)) == 12
    assert check_size(spec, 12) == 12
    with pytest.raises(SpecError, match="12 configs .* limit of 11"):
        expand(spec, max_configs=11)
    with pytest.raises(SpecError, match="max-configs: must be a positive integer"):
        check_size(spec, 0)


@pytest.mark.parametrize("axis", [[8, 10_000_000], {"linspace": [8, 10_000_000, 2]}])
def test_an_axis_value_above_a_key_limit_is_refused(tiny, axis):
    with pytest.raises(SpecError, match=r"grid.width: value 10000000(\.0)?: must be at most 100,000"):
        expand(parse_spec(tiny(grid={"width": axis})))


@pytest.mark.parametrize("key,value", [("steps", 2 * 10**9), ("seed", 2**63), ("depth", 101), ("n_train", 10**9)])
def test_grid_values_of_other_keys_are_bounded_too(tiny, key, value):
    with pytest.raises(SpecError, match=f"grid.{key}: value {value}: must be at most"):
        expand(parse_spec(tiny(grid={key: [value]})))


def test_no_shipped_file_cites_a_file_outside_the_repository():
    # Sweep comments and docstrings must stand alone: the notes they once cited are not shipped.
    outside = ("SCIENCE" + ".md", "../" + "shared", "paper" + ".txt")
    files = [*(REPO / "sweeps").rglob("*.yaml"), *(REPO / "sweeps").rglob("*.md"),
             *(REPO / "phasemap").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    assert len(files) > 20
    cited = [f"{path.relative_to(REPO)}: {word}" for path in files for word in outside
             if word in path.read_text(encoding="utf-8")]
    assert cited == []


def test_validation_readme_covers_every_validation_sweep():
    readme = (REPO / "sweeps" / "validation" / "README.md").read_text(encoding="utf-8")
    for sweep in (REPO / "sweeps" / "validation").glob("*.yaml"):
        assert f"`{sweep.name}`" in readme, sweep.name
        assert "sweeps/validation/README.md, result" in sweep.read_text(encoding="utf-8"), sweep.name


def test_the_identity_teacher_maps_inputs_to_themselves_and_refuses_what_cannot_apply():
    from phasemap.tasks import make_data

    raw = {"name": "id", "task": {"teacher": "identity", "input_dim": 6, "output_dim": 6, "n_train": 20,
                                  "n_test": 10, "sigma": 0.0}, "grid": {}}
    (cfg,) = expand(parse_spec(raw))
    assert cfg["teacher_rank"] == 6 and cfg["spectrum"] is None
    data = make_data(cfg)
    assert torch.equal(data["y_train"], data["x_train"]) and torch.equal(data["y_test"], data["x_test"])
    for task, message in (({"output_dim": 3}, "identity .y = x. needs output_dim = input_dim .got 6 and 3."),
                          ({"teacher_rank": 2}, "task.teacher_rank: does not apply to teacher: identity"),
                          ({"spectrum": [1.0]}, "task.spectrum: does not apply to teacher: identity .only to teacher: linear.")):
        with pytest.raises(SpecError, match=message):
            expand(parse_spec({**raw, "task": {**raw["task"], **task}}))


def test_fresh_data_cannot_be_whitened():
    raw = {"name": "w", "task": {"teacher": "linear", "spectrum": [1.0], "whiten": True, "fresh_data": True,
                                 "input_dim": 2, "output_dim": 2, "n_train": 8}, "grid": {}}
    with pytest.raises(SpecError, match="task.fresh_data: whitening makes one fixed train set"):
        expand(parse_spec(raw))


def test_the_task_section_is_the_variant_its_teacher_names():
    # Each teacher's keys and defaults live on its own class: icl_linear's input_dim defaults to 20
    # and its n_ctx to 50, and an mlp task has no n_ctx at all.
    from phasemap.spec import IclTask, LinearTask, MlpTask

    icl = parse_spec({"name": "i", "task": {"teacher": "icl_linear"}, "model": {"family": "transformer"}})
    assert isinstance(icl.task, IclTask) and (icl.task.input_dim, icl.task.n_ctx) == (20, 50)
    assert isinstance(parse_spec({"name": "m"}).task, MlpTask)
    assert not hasattr(parse_spec({"name": "m"}).task, "n_ctx")
    assert isinstance(parse_spec({"name": "l", "task": {"teacher": "linear", "spectrum": [1.0]}}).task, LinearTask)


# Pinned like GOLDEN_ID, with the ids the code gave before the task section became one class per
# teacher: the change kept every run_id (as it did for the 4,262 configs of sweeps/).
TEACHER_IDS = {
    "linear": ({"task": {"teacher": "linear", "input_dim": 3, "output_dim": 2, "spectrum": [1.0, 0.5]}},
               "7f657821ec6e664a5af355665e7664c8"),
    "identity": ({"task": {"teacher": "identity", "input_dim": 3, "output_dim": 3}}, "030d5529caa078723b9ef808ea79f3f9"),
    "icl_linear": ({"task": {"teacher": "icl_linear"}, "model": {"family": "transformer"}},
                   "47c08e4a3dbdb337a1dbadaf4a18f8ec"),
}


@pytest.mark.parametrize("teacher", TEACHER_IDS)
def test_run_ids_of_every_teacher_are_pinned(teacher):
    raw, expected = TEACHER_IDS[teacher]
    assert expand(parse_spec({"name": "golden", **raw}))[0]["run_id"] == expected


def test_each_familys_keys_come_from_its_registry_line_and_are_refused_elsewhere():
    # The model section is built from models.FAMILIES: every declared key is accepted with its
    # default under its own family and refused, naming the owner, under every other.
    from phasemap.models import FAMILIES

    teacher_of = {name: {"teacher": family.teachers[0]} for name, family in FAMILIES.items()}
    extra = {"mlp": {"teacher_rank": 2}, "transformer": {}}
    for name, family in FAMILIES.items():
        spec = parse_spec({"name": "f", "task": {**teacher_of[name], **extra[name]}, "model": {"family": name}})
        for key, (_, default) in family.fields.items():
            assert getattr(spec.model, key) == default
        for other in FAMILIES:
            if other == name:
                continue
            for key in family.fields:
                raw = {"name": "f", "task": {**teacher_of[other], **extra[other]},
                       "model": {"family": other, key: family.fields[key][1] or 3}}
                with pytest.raises(SpecError, match=f"model.{key}: does not apply to family: {other} "
                                                    rf"\(only to family: {name}\)"):
                    parse_spec(raw)


@pytest.mark.parametrize("sweep", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sweeps").rglob("*.yaml")))
def test_the_compact_run_ids_equal_each_resolved_configs(sweep):
    # Grid.run_ids hashes one text per seedless point with each seed spliced in; it must give
    # exactly the run_id that resolving the config gives, for every sweep shipped.
    from phasemap.grid import Grid

    grid = Grid.of(load_spec(ROOT / sweep))
    every = np.arange(grid.size)
    fast = grid.run_ids(every)
    sample = np.unique(np.r_[every[:64], every[-64:], np.random.default_rng(0).choice(grid.size, 64)])
    assert [fast[i].decode() for i in sample] == [c["run_id"] for c in grid.configs(sample)]
    assert len(set(fast.tolist())) == grid.size


def test_a_grid_point_is_its_place_in_the_cartesian_product(tiny):
    from phasemap.grid import Grid

    spec = parse_spec(tiny(grid={"gamma": [0.0, 0.1, 0.2], "temperature": [0.0, 0.01], "seed": {"range": 2}}))
    grid = Grid.of(spec)
    assert grid.size == 12 and [c["run_id"] for c in grid.configs(range(12))] == [c["run_id"] for c in expand(spec)]
    assert grid.point(7) == {"gamma": 0.1, "temperature": 0.01, "seed": 1}
    assert grid.seedless(np.array([7, 6, 11])).tolist() == [6, 6, 10]
