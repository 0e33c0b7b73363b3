"""The fused C++ CPU kernel gives the torch step's results, and is used exactly where it applies."""

import pytest
import torch

from phasemap import backends, engine, fused, kernels

from conftest import configs_of, reference_fit


def test_the_kernel_builds_on_this_machine():
    # CI has the C++ compiler torch.compile needs; a failed build would silently cost the speed.
    assert fused.available()


@pytest.mark.parametrize("activation", sorted(fused.ACTIVATIONS))
@pytest.mark.parametrize("shape", [
    {"input_dim": 4, "output_dim": 1, "width": 8},      # width padded to one 16-unit tile
    {"input_dim": 7, "output_dim": 3, "width": 37},     # 5 + 2 input rows per tile, 3 tiles, k > 1
    {"input_dim": 10, "output_dim": 1, "width": 64},    # ref-mlp's shape
])
def test_fused_matches_the_eager_step(tiny, activation, shape):
    raw = tiny(task={"input_dim": shape["input_dim"], "output_dim": shape["output_dim"], "n_train": 45},
               model={"activation": activation, "width": shape["width"], "init_scale": 0.3},
               train={"steps": 120, "lr": 0.05},
               grid={"gamma": [0.0, 0.02], "batch_size": ["full", 8], "sigma": [0.0, 0.3],
                     "noise_on": ["labels", "inputs"], "seed": {"range": 2}})
    # Long enough to move the weights, short enough that no relu pre-activation lands within
    # rounding of its kink (rounding differences there grow into real ones, for either step).
    batch = engine.build_batch(configs_of(raw))
    assert engine.pick_backend(batch) == "fused"
    plain = engine.fit(batch, "eager")
    fast = engine.fit(batch, "fused")
    assert fast.backend == "fused" and plain.backend == "eager"
    moved = (plain.weights[0] - batch.weights[0]).abs().max()
    assert moved > 1e-2                                  # training did something to compare
    for a, b in zip(plain.weights, fast.weights):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    assert torch.allclose(plain.train_loss, fast.train_loss, rtol=1e-4)


@pytest.mark.parametrize("batch_size", ["full", 8])
def test_fused_matches_the_eager_step_with_fresh_label_noise(tiny, batch_size):
    # tanh only: smooth, so rounding differences between the steps do not grow (see above for relu)
    raw = tiny(task={"noise_on": "fresh_labels", "input_dim": 7, "output_dim": 3, "n_train": 45},
               model={"width": 37, "init_scale": 0.3}, train={"steps": 120, "lr": 0.05, "batch_size": batch_size},
               grid={"sigma": [0.0, 0.3], "seed": {"range": 2}})
    batch = engine.build_batch(configs_of(raw))
    plain, fast = engine.fit(batch, "eager"), engine.fit(batch, "fused")
    assert fast.backend == "fused"
    for a, b in zip(plain.weights, fast.weights):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    # the noise reached the fused step: noisy and clean runs of one seed differ
    assert not torch.allclose(fast.weights[0][0], fast.weights[0][2])    # sigma 0 and 0.3, seed 0


@pytest.mark.parametrize("batch_size", ["full", 8])
def test_fused_matches_plain_autograd_and_torch_optim(tiny, batch_size):
    raw = tiny(train={"steps": 30, "lr": 0.05, "gamma": 0.05, "batch_size": batch_size})
    cfg = configs_of({**raw, "grid": {}})[0]
    expected = reference_fit(cfg)
    result = engine.fit(engine.build_batch([cfg]), "fused")
    for e, g in zip(expected, [w[0] for w in result.weights]):
        assert torch.allclose(e, g, rtol=1e-4, atol=1e-6), (e - g).abs().max()


def test_a_diverging_model_is_caught_at_the_same_check_as_with_the_torch_step(tiny):
    raw = tiny(model={"activation": "relu"}, train={"steps": 300}, grid={"lr": [0.05, 40.0], "seed": {"range": 2}})
    batch = engine.build_batch(configs_of(raw))
    plain, fast = engine.fit(batch, "eager"), engine.fit(batch, "fused")
    assert torch.equal(plain.diverged_step, fast.diverged_step)
    assert fast.diverged.tolist() == [lr == 40.0 for lr in batch.lr.tolist()]
    healthy = ~fast.diverged
    assert torch.allclose(plain.train_loss[healthy], fast.train_loss[healthy], rtol=1e-4)


def test_the_models_of_a_batch_are_split_over_threads_without_changing_results(tiny):
    raw = tiny(train={"steps": 80}, grid={"gamma": [0.0, 0.01, 0.1], "seed": {"range": 3}})
    batch = engine.build_batch(configs_of(raw))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine.fit(batch, "fused")
        torch.set_num_threads(4)
        four = engine.fit(batch, "fused")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one.weights, four.weights):
        assert torch.equal(a, b)


@pytest.mark.parametrize("change,reason", [
    ({"model": {"depth": 3}}, "two-layer"),
    ({"model": {"bias": True}}, "without biases"),
    ({"train": {"optimizer": "adam"}}, "optimizer adam"),
    ({"model": {"activation": "swish"}}, "activation swish"),
])
def test_other_model_families_use_the_torch_step(tiny, change, reason):
    batch = engine.build_batch(configs_of(tiny(**change)))
    got = fused.supports(len(batch.weights), bool(batch.biases), batch.optimizer, batch.activation,
                         batch.x.dtype, batch.x.device)
    assert reason in got
    assert engine.pick_backend(batch) in ("eager", "compiled")
    assert engine.fit(batch).backend != "fused"


def test_float64_and_unknown_backends_are_refused(tiny):
    assert "float64" in fused.supports(2, False, "sgd", "tanh", torch.float64, "cpu")
    batch = engine.build_batch(configs_of(tiny()))
    with pytest.raises(ValueError, match="unknown backend"):
        engine.fit(batch, "numba")


def test_a_short_last_block_is_not_padded_with_copies_when_fused(tiny):
    from phasemap.runner import run_chunk
    configs = configs_of(tiny(train={"steps": 5}, grid={"gamma": [0.0, 0.01, 0.1, 0.2, 0.3], "seed": {"range": 4}}))
    rows = run_chunk(configs, "cpu", max_models=8)               # blocks of 8, 8 and 4
    assert sorted(r["batch_models"] for r in rows) == [4] * 4 + [8] * 16
    assert {r["backend"] for r in rows} == {"fused"}
    deeper = configs_of(tiny(model={"depth": 3}, train={"steps": 5},
                             grid={"gamma": [0.0, 0.01, 0.1, 0.2, 0.3], "seed": {"range": 4}}))
    eager = run_chunk(deeper, "cpu", max_models=8)
    assert {r["backend"] for r in eager} == {"eager"} and {r["batch_models"] for r in eager} == {4, 8}


def test_a_short_last_block_is_padded_for_a_backend_that_compiles_per_shape(tiny, monkeypatch):
    from phasemap import backends, engine
    from phasemap.runner import run_chunk
    assert backends.get("compiled").fixed_shapes and not backends.get("eager").fixed_shapes
    per_shape = backends.get("eager")
    per_shape.fixed_shapes = True            # eager, planned as if it compiled per shape (no compile wait)
    monkeypatch.setattr(engine, "backend_for", lambda *args, **kwargs: per_shape)
    deeper = configs_of(tiny(model={"depth": 3}, train={"steps": 5},
                             grid={"gamma": [0.0, 0.01, 0.1, 0.2, 0.3], "seed": {"range": 4}}))
    padded = run_chunk(deeper, "cpu", max_models=8)
    assert len(padded) == 20 and {r["batch_models"] for r in padded} == {8}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_the_kernels_loss_is_the_torch_forwards_loss(activation):
    # backends.data_loss takes the C++ forward for these networks: the runs' and traces' losses.
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 37, 4, generator=gen), torch.randn(5, 37, 2, generator=gen)
    w1, w2 = torch.randn(5, 4, 19, generator=gen), torch.randn(5, 19, 2, generator=gen)
    expected = ((kernels.forward([w1, w2], [], x, activation)[0] - y) ** 2).sum(dim=2).mean(dim=1)
    got = fused.data_loss(x, y, w1, w2, activation)
    assert torch.allclose(got, expected, rtol=1e-5), (got, expected)
    assert torch.equal(backends.data_loss("mlp", {"n_weights": 2, "activation": activation, "bias": False},
                                          [w1, w2], x, y), got)
