"""phasemap refine: brackets and proposals, the boundary sampler over an Optuna study, refusals, a real refine."""

import math

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from phasemap.cli import app
from phasemap.refine import objective
from phasemap.refine.boundary import brackets, relative_width, secant_root
from phasemap.refine.samplers import BoundarySampler


def test_a_linear_order_parameter_puts_the_secant_on_the_root_and_the_pair_closes_the_bracket():
    xs = np.array([0.1, 0.2, 0.4, 0.8])
    means = np.array([2.0, 2.0, 1.0, 1.0])
    svals = np.stack([np.full(4, 3.0), np.maximum(0.33 - xs, 0)], axis=1)      # sigma_2 = 0.33 - gamma
    (b,) = brackets(xs, means, 0.01, log=True, order=svals)
    assert (b.lo, b.hi, b.level_from, b.level_to, b.method) == (0.2, 0.4, 2, 1, "secant")
    assert b.estimate == pytest.approx(0.33)
    lo, hi = b.proposals
    assert lo < 0.33 < hi and relative_width(lo, hi, True) < 0.01


def test_without_an_order_parameter_a_bracket_is_bisected_until_done():
    xs, means = np.array([1.0, 4.0]), np.array([3.0, 0.0])
    (b,) = brackets(xs, means, 0.01, log=True)
    assert b.method == "bisect" and b.proposals == (2.0,)
    (lin,) = brackets(xs, means, 0.01, log=False)
    assert lin.proposals == (2.5,)
    (done,) = brackets(np.array([1.0, 1.005]), np.array([1.0, 0.0]), 0.01, log=True)
    assert done.method == "done" and done.proposals == ()


def test_the_secant_is_refused_where_the_order_parameter_does_not_fall_towards_the_bracket():
    xs = np.array([0.1, 0.2, 0.4])
    assert secant_root(xs, np.array([0.1, 0.2, 0.0]), 1, 2, high_on_left=True) is None   # rises towards it
    assert secant_root(xs, np.array([0.0, 0.2, 0.0]), 0, 1, high_on_left=True) is None   # no second point
    assert secant_root(xs, np.array([0.3, 0.2, 0.0]), 1, 2, high_on_left=True) == pytest.approx(0.4)


def test_the_objective_is_small_near_a_boundary():
    assert objective(2.0, [1.0, 0.01]) == pytest.approx(0.01)        # the second singular value nearly gone
    assert objective(2.0, [1.0, 0.9]) == pytest.approx(0.9)
    assert objective(1.5, None) == 0.0 and objective(2.0, None) == 0.5


def study_with(points):
    """An in-memory study holding (gamma, sigma, mean) points as complete trials."""
    study = optuna.create_study(direction="minimize")
    dist = {"gamma": optuna.distributions.FloatDistribution(0.1, 10, log=True),
            "sigma": optuna.distributions.CategoricalDistribution((0.0, 1.0))}
    for gamma, sigma, mean in points:
        study.add_trial(optuna.trial.create_trial(params={"gamma": gamma, "sigma": sigma}, distributions=dist,
                                                  value=0.5, user_attrs={"mean": mean, "order": None}))
    return study


def test_the_boundary_sampler_refines_each_group_and_is_an_optuna_sampler():
    study = study_with([(0.1, 0.0, 1), (1.0, 0.0, 1), (10.0, 0.0, 0),      # sigma 0: boundary in [1, 10]
                        (0.1, 1.0, 1), (1.0, 1.0, 0), (10.0, 1.0, 0)])     # sigma 1: in [0.1, 1]
    sampler = BoundarySampler("gamma", ["sigma"], precision=0.01, log=True)
    found = sampler.proposals(study)
    assert sorted((p["sigma"], round(p["gamma"], 6)) for p in found) == [(0.0, round(math.sqrt(10), 6)),
                                                                         (1.0, round(math.sqrt(0.1), 6))]
    study.sampler = sampler
    trial = study.ask()
    gamma = trial.suggest_float("gamma", 0.1, 10, log=True)
    sigma = trial.suggest_categorical("sigma", (0.0, 1.0))
    assert {"gamma": gamma, "sigma": sigma} in found
    assert len(sampler.proposals(study)) == 1                 # the one asked for is not proposed again


def write_spec(tmp_path, extra=""):
    path = tmp_path / "lin.yaml"
    path.write_text("name: lin\n"
                    "task: {teacher: linear, input_dim: 3, output_dim: 2, n_train: 32, n_test: 8, spectrum: [1.0, 0.4],"
                    " whiten: true}\n"
                    "model: {depth: 2, width: 3, activation: linear, init_scale: 0.01}\n"
                    "train: {optimizer: sgd, lr: 0.2, steps: 3000}\n"
                    "grid:\n  gamma: {logspace: [0.1, 2.0, 4]}\n  seed: {range: 2}\n" + extra)
    return path


@pytest.mark.parametrize("args,message", [
    (["--axis", "sigma"], "--axis sigma: not an axis of the sweep's grid"),
    (["--axis", "seed"], "--axis seed: refine needs a continuous axis"),
    (["--precision", "0"], "--precision 0"),
    (["--budget", "5"], "--budget 5: smaller than the coarse grid (8 runs)"),
    (["--metric", "train_loss"], "--metric train_loss"),
    (["--sampler", "cmaes"], "--sampler cmaes"),
    (["--storage", "sqlite:////no/such/folder/x.db"], "--storage sqlite:////no/such/folder/x.db: cannot open"),
])
def test_bad_input_is_refused_with_one_line_and_nothing_runs(tmp_path, args, message):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    base = ["refine", str(spec), "--metric", "weight_rank", "--axis", "gamma", "--out", str(out)]
    for flag in ("--axis", "--metric"):
        if flag in args:
            i = base.index(flag)
            del base[i:i + 2]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not list(out.glob("*.parquet"))


@pytest.mark.slow
def test_refine_brackets_every_rank_transition_and_critical_reads_the_refined_points(tmp_path):
    from phasemap.analysis import critical

    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    args = ["refine", str(spec), "--metric", "weight_rank", "--axis", "gamma", "--out", str(out), "--precision", "0.02",
            "--num-cpus", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    found = critical(str(out), "weight_rank", "gamma")
    assert found["resolved"].all() and found.height == 2
    for row, exact in zip(found.sort("critical").iter_rows(named=True), (0.4, 1.0)):
        assert row["ci_high"] / row["ci_low"] - 1 <= 0.02
        assert abs(row["critical"] / exact - 1) < 0.03
    again = CliRunner().invoke(app, args)                       # resumed from the study: nothing left to do
    assert again.exit_code == 0 and '"rounds": 0' in again.output


def test_a_bracket_around_split_seeds_bisects_its_parts():
    # Seeds split evenly at 2.0 (mean 0.5, on the boundary): the bracket spans 1..4 with 2 inside.
    xs, means = np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.5, 0.0])
    (b,) = brackets(xs, means, 0.01, log=True)
    assert (b.lo, b.hi) == (1.0, 4.0)
    assert b.proposals == pytest.approx((math.sqrt(2), math.sqrt(8)))


def test_with_two_axes_a_new_row_goes_where_the_boundary_moves_between_rows():
    study = optuna.create_study(direction="minimize")
    dist = {"gamma": optuna.distributions.FloatDistribution(0.1, 10, log=True),
            "temperature": optuna.distributions.FloatDistribution(0.01, 0.1)}
    # rows T = 0.01 and 0.1: the boundary sits in [1, 1.009] and in [2, 2.018], both brackets done
    for t, points in ((0.01, [(0.5, 1), (1.0, 1), (1.009, 0), (4.0, 0)]), (0.1, [(0.5, 1), (2.0, 1), (2.018, 0), (4.0, 0)])):
        for gamma, mean in points:
            study.add_trial(optuna.trial.create_trial(params={"gamma": gamma, "temperature": t}, distributions=dist,
                                                      value=0.5, user_attrs={"mean": mean, "order": None}))
    sampler = BoundarySampler("gamma", [], precision=0.01, log=True, rows="temperature", rows_log=False)
    found = sampler.proposals(study)
    assert found == [{"gamma": 1.0, "temperature": pytest.approx(0.055)},
                     {"gamma": 2.018, "temperature": pytest.approx(0.055)}]
    flat = BoundarySampler("gamma", ["temperature"], precision=0.01, log=True)
    assert flat.proposals(study) == []            # one axis: each row is done


def test_two_axes_must_differ_and_both_be_continuous(tmp_path):
    spec = write_spec(tmp_path, "  lr: [0.1, 0.2]\n")
    base = ["refine", str(spec), "--metric", "weight_rank", "--out", str(tmp_path / "out")]
    same = CliRunner().invoke(app, base + ["--axis", "gamma", "--axis", "gamma"])
    assert same.exit_code == 2 and "two different ones" in same.output
    seed = CliRunner().invoke(app, base + ["--axis", "gamma", "--axis", "seed"])
    assert seed.exit_code == 2 and "--axis seed: refine needs a continuous axis" in seed.output
    three = CliRunner().invoke(app, base + ["--axis", "gamma", "--axis", "lr", "--axis", "seed"])
    assert three.exit_code == 2 and "give one axis, or two" in three.output


@pytest.mark.slow
def test_with_two_axes_optunas_samplers_refine_on_the_grids_rows(tmp_path):
    # Rows sampled anywhere would each hold one point and no bracket; on the grid's rows they are comparable.
    spec = write_spec(tmp_path, "  lr: [0.1, 0.2]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["refine", str(spec), "--metric", "weight_rank", "--axis", "gamma", "--axis", "lr",
                                      "--sampler", "random", "--budget", "24", "--out", str(out), "--num-cpus", "2",
                                      "--set", "train.steps=500", "--json"])
    assert result.exit_code == 1, result.output                 # the budget ends it
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'refine.db'}")
    trials = study.get_trials()
    assert len(trials) == 12 and {t.params["lr"] for t in trials} == {0.1, 0.2}
    assert len({t.params["gamma"] for t in trials}) == 8       # 4 coarse values and 4 sampled ones
    assert '"budget"' in result.output
