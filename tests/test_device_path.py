"""The GPU code path without a GPU: batches built and stepped on torch's `meta` device, which runs
every device-generic op for shapes and dtypes alone. A step that asked the device for a value
(a Python branch on a tensor, .item(), .tolist()) fails there, as it would stall a GPU."""

import pytest
import torch

from phasemap import backends, engine
from phasemap.bench import load_configs
from phasemap.grid import expand
from phasemap.spec import parse_spec


def test_the_reference_workload_builds_and_steps_on_the_meta_device():
    configs = load_configs(n=64)
    batch = engine.build_batch(configs, "meta")
    assert batch.x.device.type == "meta" and batch.full_batch and batch.max_batch == 300
    # what a GPU would train it with: the hand-written step (compiled when the batch is big), never the C++ kernel
    on_gpu = backends.choose(batch.family, batch.arch, batch.optimizer, torch.device("cuda"), torch.float32, batch.work)
    assert on_gpu.name in ("compiled", "eager")
    batch.steps = 150                                     # crosses a divergence check at step 100
    result = engine.fit(batch, "eager")
    assert result.train_loss.shape == (64,) and result.diverged_step.device.type == "meta"
    assert [p.shape for p in result.params] == [(64, 10, 64), (64, 64, 1)]


@pytest.mark.parametrize("train,noise", [({"optimizer": "sgd", "lr": 0.1, "batch_size": 8}, "inputs"),
                                         ({"optimizer": "adam", "lr": 0.01, "batch_size": 16}, "fresh_labels")])
def test_minibatches_noise_and_adam_step_on_the_meta_device(tiny, train, noise):
    configs = expand(parse_spec(tiny(train={**train, "steps": 120}, task={"sigma": 0.5, "noise_on": noise})))
    batch = engine.build_batch(configs, "meta")
    assert not batch.full_batch and batch.max_batch == train["batch_size"]
    assert batch.noisy == (noise == "inputs") and batch.fresh_labels == (noise == "fresh_labels")
    result = engine.fit(batch, "eager")
    assert result.test_loss.shape == (len(configs),)
