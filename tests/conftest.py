"""Tests run on the CPU with fixed seeds and tiny sizes."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


def tiny_raw(**sections) -> dict:
    """A small valid sweep as a raw mapping; keyword sections are merged over the defaults; `grid` is replaced."""
    raw = {
        "name": "tiny",
        "task": {"teacher": "mlp", "teacher_rank": 3, "input_dim": 4, "output_dim": 1, "n_train": 32, "n_test": 32},
        "model": {"depth": 2, "width": 8, "activation": "tanh", "init_scale": 0.1},
        "train": {"optimizer": "sgd", "lr": 0.1, "steps": 60},
        "grid": {"gamma": [0.0, 0.01], "seed": {"range": 2}},
    }
    for key, value in sections.items():
        if key != "grid" and isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


@pytest.fixture
def tiny():
    return tiny_raw
