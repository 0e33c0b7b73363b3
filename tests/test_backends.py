"""Every backend against plain autograd + torch.optim: one suite, so the next backend is covered.

Each (backend, case) pair either trains the case to the reference's numbers (rtol 1e-4, atol 1e-6
in float32, after 25 steps) or, where the backend does not cover the case, refuses it with its
reason; `compiled` compiles per shape (seconds each), so its cases are marked slow.
"""

import pytest
import torch

from conftest import configs_of, reference_fit
from phasemap import backends, columns, engine, models

CASES = {
    "mlp-sgd-2-layers": dict(model={"activation": "tanh"}, train={"optimizer": "sgd", "lr": 0.05}),
    "mlp-sgd-minibatch-bias": dict(model={"activation": "relu", "depth": 3, "bias": True},
                                   train={"optimizer": "sgd", "lr": 0.05, "batch_size": 8}),
    "mlp-adam-swish": dict(model={"activation": "swish", "depth": 3},
                           train={"optimizer": "adam", "lr": 0.01, "batch_size": 8}),
    "mlp-adamw-sin": dict(model={"activation": "sin"}, train={"optimizer": "adamw", "lr": 0.01}),
    "transformer-adamw": dict(task={"teacher": "icl_linear", "input_dim": 3, "n_ctx": 5, "n_train": 24,
                                    "n_test": 8, "teacher_rank": None},
                              model={"family": "transformer", "init_scale": 1.0, "depth": None},
                              train={"optimizer": "adamw", "lr": 0.01, "batch_size": 6}),
    "transformer-sgd-2-heads": dict(task={"teacher": "icl_linear", "input_dim": 3, "n_ctx": 4, "n_train": 16,
                                          "n_test": 8, "teacher_rank": 2},
                                    model={"family": "transformer", "heads": 2, "d_k": 2, "residual": False,
                                           "init_scale": 1.0, "depth": None},
                                    train={"optimizer": "sgd", "lr": 0.05}),
}


def case_config(tiny, case: str) -> dict:
    raw = tiny(**CASES[case], grid={})
    raw["train"] = {**raw["train"], "steps": 25, "gamma": 0.05}
    if raw["model"].get("family") == "transformer":          # the tiny sweep's MLP and teacher keys do not apply
        raw["model"] = {k: v for k, v in raw["model"].items() if k not in ("depth", "width", "activation")}
        raw["task"] = {k: v for k, v in raw["task"].items() if v is not None and k not in ("output_dim",)}
    return configs_of(raw)[0]


BACKEND_CASES = [pytest.param(name, case, marks=[pytest.mark.slow] if name == "compiled" else [])
                 for name in backends.NAMES for case in CASES]


@pytest.mark.parametrize("name,case", BACKEND_CASES)
def test_every_backend_trains_like_autograd_and_torch_optim_or_says_why_not(tiny, name, case):
    cfg = case_config(tiny, case)
    batch = engine.build_batch([cfg])
    backend = backends.get(name)
    reason = backend.supports(batch.family, batch.arch, batch.optimizer, batch.x.device, batch.x.dtype)
    if reason is not None:
        with pytest.raises(ValueError, match=f"backend {name} cannot train this batch: "):
            engine.fit(batch, name)
        assert name != "autograd", "autograd must train every family"
        return
    result = engine.fit(batch, name)
    assert result.backend == name
    expected = reference_fit(cfg)
    assert len(result.params) == len(expected)
    moved = max((e - p[0]).abs().max() for e, p in zip(expected, batch.params))
    assert moved > 1e-3                       # training did something the comparison can see
    for e, got in zip(expected, result.params):
        assert torch.allclose(e, got[0], rtol=1e-4, atol=1e-6), (name, case, (e - got[0]).abs().max())


def test_the_mlp_fast_paths_are_chosen_and_autograd_takes_the_rest(tiny):
    mlp = engine.build_batch([case_config(tiny, "mlp-adam-swish")])
    transformer = engine.build_batch([case_config(tiny, "transformer-adamw")])
    assert engine.pick_backend(mlp) == "eager"
    assert engine.pick_backend(transformer) == "autograd"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.get("numba")


@pytest.mark.parametrize("case", ["mlp-sgd-minibatch-bias", "transformer-sgd-2-heads"])
def test_every_family_measures_exactly_the_metric_columns(tiny, case):
    cfg = case_config(tiny, case)
    batch = engine.build_batch([cfg, cfg])
    th = {k: torch.tensor([cfg[k]] * 2) for k in columns.THRESHOLDS if k in cfg}
    out = models.get(batch.family).measure(batch.params, batch.x_test, th, **batch.arch)
    assert list(out) == list(columns.METRICS)
    assert all(len(values) == 2 for values in out.values())
    assert out["n_dos"][0] is not None and out["weight_rank"][0] is not None
