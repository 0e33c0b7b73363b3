"""The batched engine: exact semantics, batch independence, NaN isolation, the linear global minimum."""

import pytest
import torch

from conftest import configs_of, reference_fit
from phasemap import engine, rng, symmetry
from phasemap.columns import THRESHOLDS
from phasemap.models.mlp import init_params
from phasemap.runner import run_chunk
from phasemap.fields import ACTIVATIONS
from phasemap.tasks import make_data


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_engine_matches_plain_autograd_and_torch_optim(tiny, optimizer, activation):
    lr = 0.01 if optimizer != "sgd" else 0.05
    raw = tiny(model={"activation": activation, "depth": 3, "bias": True},
               train={"optimizer": optimizer, "lr": lr, "steps": 25, "gamma": 0.05, "batch_size": 8})
    cfg = configs_of({**raw, "grid": {}})[0]
    expected = reference_fit(cfg)
    result = engine.fit(engine.build_batch([cfg]))
    got = [p[0] for p in result.weights + result.biases]
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, rtol=1e-4, atol=1e-6), (e - g).abs().max()


def mixed_configs(tiny, n_seeds=4):
    """256 configs of one shape that differ in gamma, lr, batch size, sigma, noise target and seed."""
    raw = tiny(train={"steps": 40},
               grid={"gamma": [0.0, 0.01, 0.1, 0.3], "lr": [0.02, 0.1], "batch_size": ["full", 5],
                     "sigma": [0.0, 0.3], "noise_on": ["labels", "inputs"], "seed": {"range": n_seeds}})
    return configs_of(raw)


def test_a_config_trains_the_same_alone_or_among_255_others(tiny):
    configs = mixed_configs(tiny)
    assert len(configs) == 256
    together = engine.fit(engine.build_batch(configs))
    for i in (0, 77, 200, 255):
        alone = engine.fit(engine.build_batch([configs[i]]))
        for w_all, w_one in zip(together.weights, alone.weights):
            assert torch.allclose(w_all[i], w_one[0], rtol=1e-5, atol=1e-7)
        assert torch.allclose(together.train_loss[i], alone.train_loss[0], rtol=1e-5)


def test_run_chunk_rows_do_not_depend_on_batch_splitting(tiny):
    configs = mixed_configs(tiny, n_seeds=1)[:40]
    big = {r["run_id"]: r for r in run_chunk(configs, "cpu", max_models=256)}
    small = {r["run_id"]: r for r in run_chunk(configs, "cpu", max_models=7)}
    for run, row in big.items():
        assert row["train_loss"] == pytest.approx(small[run]["train_loss"], rel=1e-5)
        assert row["symmetry_class"] == small[run]["symmetry_class"]


def test_a_diverging_model_is_isolated(tiny):
    raw = tiny(model={"activation": "quadratic"}, train={"steps": 200},
               grid={"lr": [0.05, 50.0], "seed": {"range": 2}})
    configs = configs_of(raw)
    rows = {(r["lr"], r["seed"]): r for r in run_chunk(configs, "cpu")}
    for seed in (0, 1):
        bad, good = rows[(50.0, seed)], rows[(0.05, seed)]
        assert bad["status"] == "diverged" and bad["diverged_step"] > 0
        assert bad["train_loss"] is None and bad["n_distinct"] is None
        assert good["status"] == "ok"
    healthy = [c for c in configs if c["lr"] == 0.05]
    alone = {r["run_id"]: r for r in run_chunk(healthy, "cpu")}
    for run, row in alone.items():
        together = next(r for r in rows.values() if r["run_id"] == run)
        assert together["train_loss"] == pytest.approx(row["train_loss"], rel=1e-6)
        assert together["deltas"] == pytest.approx(row["deltas"], rel=1e-5, abs=1e-8)


def test_input_noise_is_per_step_and_reproducible(tiny):
    raw = tiny(task={"noise_on": "inputs"}, train={"steps": 30}, grid={"sigma": [0.0, 0.5]})
    clean, noisy = configs_of(raw)
    first = engine.fit(engine.build_batch([clean, noisy]))
    again = engine.fit(engine.build_batch([noisy]))
    assert not torch.allclose(first.weights[0][0], first.weights[0][1])
    assert torch.allclose(first.weights[0][1], again.weights[0][0], rtol=1e-5, atol=1e-7)


def test_fresh_label_noise_is_new_every_step_and_the_same_alone_or_in_a_batch(tiny):
    raw = tiny(task={"noise_on": "fresh_labels"}, train={"steps": 40, "batch_size": 8},
               grid={"sigma": [0.0, 0.5], "seed": {"range": 2}})
    configs = configs_of(raw)
    together = engine.fit(engine.build_batch(configs))
    for i, cfg in enumerate(configs):
        alone = engine.fit(engine.build_batch([cfg]))
        assert torch.allclose(together.weights[0][i], alone.weights[0][0], rtol=1e-5, atol=1e-7)
    # the train targets stay clean: the noise is drawn per step, not stored
    noisy = next(c for c in configs if c["sigma"] == 0.5)
    clean_targets = make_data({**noisy, "sigma": 0.0})["y_train"]
    assert torch.equal(engine.build_batch([noisy]).y[0], clean_targets)
    sample = engine._Minibatches(engine.build_batch([noisy]))
    (_, y0), (_, y1), (_, y0_again) = sample(0), sample(1), sample(0)
    assert torch.equal(y0, y0_again) and not torch.allclose(y0, y1)
    # sigma = 0 trains exactly like fixed label noise of 0
    zero = next(c for c in configs if c["sigma"] == 0.0 and c["seed"] == 0)
    fixed = configs_of(tiny(train={"steps": 40, "batch_size": 8}, grid={"sigma": [0.0], "seed": [0]}))[0]
    a, b = engine.fit(engine.build_batch([zero])), engine.fit(engine.build_batch([fixed]))
    assert torch.equal(a.weights[0], b.weights[0])


def test_fresh_label_noise_is_not_memorised_like_fixed_noise(tiny):
    # the student fits fixed noisy targets; with fresh noise each step it cannot, and ends nearer the teacher
    base = {"task": {"n_train": 16, "n_test": 64, "sigma": 1.0}, "model": {"width": 32, "init_scale": 0.5},
            "train": {"steps": 1500, "lr": 0.1}, "grid": {"seed": {"range": 3}}}
    fixed = run_chunk(configs_of(tiny(**{**base, "task": {**base["task"], "noise_on": "labels"}})), "cpu")
    fresh = run_chunk(configs_of(tiny(**{**base, "task": {**base["task"], "noise_on": "fresh_labels"}})), "cpu")
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)      # noqa: E731
    assert mean(fresh, "test_loss") < mean(fixed, "test_loss")


def test_subset_prefix_does_not_depend_on_the_largest_batch():
    keys = torch.tensor([3, 99, 12345678901])
    small = rng.subset(keys, step=7, n=50, k=5)
    large = rng.subset(keys, step=7, n=50, k=20)
    assert torch.equal(small, large[:, :5])
    assert all(len(set(row.tolist())) == 20 for row in large)
    assert not torch.equal(rng.subset(keys, 8, 50, 5), small)
    assert int(large.max()) < 50 and int(large.min()) >= 0


def test_two_layer_linear_student_reaches_the_known_global_minimum():
    """sigma_i(W2 W1) = max(s_i - gamma, 0), s_i the singular values of (1/N) sum_n y_n x_n^T."""
    raw = {"name": "lin",
           "task": {"teacher": "linear", "input_dim": 8, "output_dim": 6, "n_train": 64, "n_test": 64,
                    "spectrum": [2.0, 1.0, 0.5, 0.25], "whiten": True, "sigma": 0.2},
           "model": {"depth": 2, "width": 8, "activation": "linear", "init_scale": 0.1},
           "train": {"lr": 0.05, "steps": 5000},
           "grid": {"gamma": [0.1, 0.3, 0.6, 1.2, 2.5]}}
    configs = configs_of(raw)
    batch = engine.build_batch(configs)
    result = engine.fit(batch)
    th = {k: torch.tensor([c[k] for c in configs]) for k in THRESHOLDS}
    ranks = symmetry.measure(result.weights, result.biases, batch.x_test, "linear", th)["weight_rank"]
    for i, cfg in enumerate(configs):
        x, y = batch.x[i].double(), batch.y[i].double()
        assert torch.allclose(x.T @ x / 64, torch.eye(8, dtype=torch.float64), atol=1e-5)
        s = torch.linalg.svdvals(y.T @ x / 64)
        expected = (s - cfg["gamma"]).clamp(min=0)
        got = torch.linalg.svdvals((result.weights[0][i] @ result.weights[1][i]).double())
        survivors = expected > 0
        assert torch.allclose(got[survivors], expected[survivors], rtol=0.02)
        assert (got[~survivors] < 0.02 * s[0]).all()
        assert ranks[i] == int(survivors.sum())
    assert ranks[-1] == 0 and ranks == sorted(ranks, reverse=True) and len(set(ranks)) >= 4


def test_a_batch_that_raises_becomes_failed_rows_and_others_still_run(tiny, monkeypatch):
    configs = configs_of(tiny(grid={"width": [4, 8]}))
    real_fit = engine.fit

    def flaky(batch, backend=None, observe=None):
        if batch.weights[0].shape[2] == 4:
            raise RuntimeError("out of memory (simulated)")
        return real_fit(batch, backend, observe)

    monkeypatch.setattr(engine, "fit", flaky)
    rows = {r["width"]: r for r in run_chunk(configs, "cpu")}
    assert rows[4]["status"] == "failed" and "out of memory (simulated)" in rows[4]["error"]
    assert rows[8]["status"] == "ok" and rows[8]["error"] is None


def test_engine_and_metrics_import_only_torch_and_numpy():
    import subprocess
    import sys
    code = ("import sys, phasemap.engine, phasemap.symmetry, phasemap.runner, phasemap.tasks, phasemap.optim, "
            "phasemap.models.mlp, phasemap.models.transformer, phasemap.tasks.icl_linear, phasemap.backends.kernel, "
            "phasemap.backends.cpp, phasemap.backends.autograd; "
            "print(sorted(m for m in ('ray', 'polars', 'pyarrow', 'pandas', 'pydantic', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow   # torch.compile: tens of seconds per shape
@pytest.mark.parametrize("optimizer,activation", [("sgd", "tanh"), ("adam", "relu"), ("adamw", "swish")])
def test_the_compiled_step_gives_the_same_results_as_the_straightforward_one(tiny, optimizer, activation):
    raw = tiny(model={"activation": activation, "depth": 3, "bias": activation == "relu"},
               train={"optimizer": optimizer, "lr": 0.02, "steps": 40, "gamma": 0.01},
               grid={"batch_size": ["full", 8], "seed": {"range": 2}})
    batch = engine.build_batch(configs_of(raw))
    plain = engine.fit(batch, "eager")
    compiled = engine.fit(batch, "compiled")
    assert compiled.backend == "compiled" and plain.backend == "eager"
    for a, b in zip(plain.weights + plain.biases, compiled.weights + compiled.biases):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_fast_tanh_is_tanh_to_float_precision():
    from phasemap.kernels import fast_tanh
    z = torch.linspace(-30, 30, 200_001)
    assert (fast_tanh(z) - torch.tanh(z)).abs().max() < 1e-6
    assert torch.equal(fast_tanh(-z), -fast_tanh(z))


def torch_convention_fit(cfg, weight_decay, reduction):
    """One model trained the way torch users write it: MSELoss(reduction) over outputs, the optimizer's
    own weight_decay, on phasemap's data, init and minibatches."""
    data = make_data(cfg)
    params = [p.clone().requires_grad_() for p in init_params(cfg)[:cfg["depth"]]]
    lr, betas, eps = cfg["torch_lr"] if cfg["optimizer"] == "sgd" else cfg["lr"], (cfg["beta1"], cfg["beta2"]), 1e-8
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=weight_decay),
           "adam": lambda: torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
           "adamw": lambda: torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
           }[cfg["optimizer"]]()
    key = torch.tensor([rng.derive_seed(cfg["seed"], "sgd")])
    n, s = cfg["n_train"], cfg["batch_size"]
    for step in range(cfg["steps"]):
        idx = torch.arange(n) if s == n else rng.subset(key, step, n, s)[0]
        out = torch.tanh(data["x_train"][idx] @ params[0]) @ params[1]
        err = (out - data["y_train"][idx]) ** 2
        loss = err.mean() if reduction == "mean" else err.sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_torch_weight_decay_and_mse_reduction_resolve_to_the_same_training(tiny, optimizer, reduction):
    raw = tiny(task={"output_dim": 3}, train={"optimizer": optimizer, "lr": 0.01 if optimizer != "sgd" else 0.1,
                                               "steps": 30, "batch_size": 8, "weight_decay": 0.2,
                                               "mse_reduction": reduction})
    cfg = configs_of({**raw, "grid": {}})[0]
    k = 3 if reduction == "mean" else 1
    assert cfg["gamma"] == pytest.approx(0.2 if optimizer == "adamw" else 0.2 * k / 2)
    assert cfg["weight_decay"] == 0.2 and cfg["mse_reduction"] == reduction
    expected = torch_convention_fit(cfg, 0.2, reduction)
    got = engine.fit(engine.build_batch([cfg]), "eager").weights
    for e, g in zip(expected, got):
        assert torch.allclose(e, g[0], rtol=1e-4, atol=1e-6), (e - g[0]).abs().max()


def test_torch_conventions_are_refused_where_they_cannot_mean_anything(tiny):
    from phasemap.spec import SpecError

    with pytest.raises(SpecError, match="give gamma .* or weight_decay .*, not both"):
        configs_of(tiny(train={"gamma": 0.1, "weight_decay": 0.1}))
    with pytest.raises(SpecError, match="mse_reduction: applies only with train.weight_decay"):
        configs_of(tiny(train={"mse_reduction": "mean"}))
    with pytest.raises(SpecError, match="weight_decay"):
        configs_of(tiny(train={"weight_decay": -0.1}))
    with pytest.raises(SpecError, match="mse_reduction"):
        configs_of(tiny(train={"weight_decay": 0.1, "mse_reduction": "median"}))
    # a sweep without them keeps its keys (and so its run_ids)
    assert not {"weight_decay", "mse_reduction", "torch_lr"} & set(configs_of(tiny())[0])


@pytest.mark.parametrize("task", [
    {"teacher": "mlp", "teacher_rank": 3},
    {"teacher": "linear", "spectrum": [2.0, 1.0], "teacher_rank": None, "output_dim": 2},
    {"teacher": "identity", "teacher_rank": None, "output_dim": 4},
])
def test_the_teacher_labels_fresh_samples_as_it_labels_the_train_set(tiny, task):
    from phasemap.tasks import teach, teacher_params

    raw = tiny(task={k: v for k, v in task.items() if v is not None})
    if task["teacher"] != "mlp":
        raw["task"].pop("teacher_rank", None)
    cfg = configs_of({**raw, "grid": {}})[0]
    data = make_data(cfg, torch.float64)
    scale = cfg["output_scale"] if cfg["teacher"] == "mlp" else 1.0
    again = teach(cfg["teacher"], teacher_params(cfg), data["x_train"], cfg["teacher_activation"], scale)
    assert torch.allclose(again, data["y_train"], atol=1e-12)


def test_fresh_data_draws_new_samples_every_step_the_same_alone_or_in_a_batch(tiny):
    raw = tiny(task={"fresh_data": True, "sigma": 0.2}, train={"steps": 40, "batch_size": 8},
               grid={"gamma": [0.0, 0.01], "seed": {"range": 2}})
    configs = configs_of(raw)
    assert all(c["fresh_data"] for c in configs)
    batch = engine.build_batch(configs)
    sample = engine._Minibatches(batch)
    (x0, y0), (x1, _), (x0_again, y0_again) = sample(0), sample(1), sample(0)
    assert torch.equal(x0, x0_again) and torch.equal(y0, y0_again) and not torch.allclose(x0, x1)
    assert not any(torch.allclose(x0[0], batch.x[0, i:i + 8]) for i in range(batch.x.shape[1] - 8))
    together = engine.fit(batch)
    for i in (0, 3):
        alone = engine.fit(engine.build_batch([configs[i]]))
        assert torch.allclose(together.weights[0][i], alone.weights[0][0], rtol=1e-5, atol=1e-7)
    fused_result = engine.fit(batch, "fused")
    eager = engine.fit(batch, "eager")
    for a, b in zip(eager.weights, fused_result.weights):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_online_sgd_learns_the_identity_from_fresh_samples(tiny):
    # two samples a step: two fixed samples cannot pin down a 4-d identity, fresh ones can
    raw = tiny(task={"teacher": "identity", "input_dim": 4, "output_dim": 4, "n_train": 2, "fresh_data": True},
               model={"activation": "linear", "width": 8, "init_scale": 0.5},
               train={"steps": 600, "lr": 0.05, "batch_size": 2}, grid={"seed": {"range": 2}})
    raw["task"].pop("teacher_rank")
    fixed_raw = {**raw, "task": {**raw["task"], "fresh_data": False}}
    online, fixed = run_chunk(configs_of(raw), "cpu"), run_chunk(configs_of(fixed_raw), "cpu")
    assert all(r["test_loss"] < 0.01 for r in online)
    assert all(r["test_loss"] > 0.5 for r in fixed)
    assert all("fresh_data" not in c for c in configs_of(fixed_raw))      # off: the key (and run_id) as before
