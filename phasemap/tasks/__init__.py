"""Tasks: the teacher and the data of one model, one module per kind, chosen by `task.teacher`;
a new task is one module here and one line in TASKS.

Each task module has `make_data(cfg, dtype) -> {"x_train", "y_train", "x_test", "y_test"}`
(float tensors; y is (N, d_out), x is (N, ...) in the shape its model family reads), drawn from
the config's `data_seed` (or `seed`) alone.

    data = make_data(cfg)
"""

from __future__ import annotations

import importlib

import torch

from phasemap.tasks.supervised import teach, teacher_params

__all__ = ["TASKS", "make_data", "teach", "teacher_params"]

# task.teacher -> the module that draws its data (imported when first used)
TASKS: dict[str, str] = {
    "mlp": "phasemap.tasks.supervised",
    "linear": "phasemap.tasks.supervised",
    "identity": "phasemap.tasks.supervised",
    "icl_linear": "phasemap.tasks.icl_linear",
}


def make_data(cfg: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Train and test sets for one resolved config; a ValueError for an unknown task."""
    if cfg["teacher"] not in TASKS:
        raise ValueError(f"unknown task {cfg['teacher']!r}; use one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[cfg["teacher"]]).make_data(cfg, dtype)
