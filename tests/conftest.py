"""Tests run on the CPU with fixed seeds and tiny sizes."""

import os
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
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


def configs_of(raw: dict) -> list[dict]:
    from phasemap.grid import expand
    from phasemap.spec import parse_spec
    return expand(parse_spec(raw))


ACTIVATION_TORCH = {"tanh": torch.tanh, "relu": torch.relu, "swish": torch.nn.functional.silu, "sin": torch.sin,
                    "quadratic": torch.square, "linear": lambda z: z}


def reference_fit(cfg: dict) -> list[torch.Tensor]:
    """The straightforward way: one model, torch autograd and torch.optim, on phasemap's data, init
    and minibatches (an MLP's forward written out here; another family's from its module)."""
    from phasemap import models, rng
    from phasemap.tasks import make_data

    data = make_data(cfg)
    family = models.get(models.family_of(cfg))
    params = [p.clone().requires_grad_() for p in family.init_params(cfg)]

    def forward(x):
        if models.family_of(cfg) != "mlp":
            return family.forward([p[None] for p in params], x[None], **family.arch(cfg))[0]
        ws, bs = params[:cfg["depth"]], params[cfg["depth"]:]
        h = x
        for l, w in enumerate(ws):
            h = h @ w + (bs[l] if bs else 0)
            if l < len(ws) - 1:
                h = ACTIVATION_TORCH[cfg["activation"]](h)
        return h

    betas = (cfg["beta1"], cfg["beta2"])
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=cfg["lr"])
    elif cfg["optimizer"] == "adam":
        opt = torch.optim.Adam(params, lr=cfg["lr"], betas=betas, eps=cfg["eps"])
    else:
        opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=betas, eps=cfg["eps"], weight_decay=cfg["gamma"])
    key = torch.tensor([rng.derive_seed(cfg["seed"], "sgd")])
    n, s = cfg["n_train"], cfg["batch_size"]
    for step in range(cfg["steps"]):
        idx = torch.arange(n) if s == n else rng.subset(key, step, n, s)[0]
        loss = ((forward(data["x_train"][idx]) - data["y_train"][idx]) ** 2).sum(dim=1).mean()
        if cfg["optimizer"] != "adamw":
            loss = loss + cfg["gamma"] * sum((p * p).sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in params]


def trend_frame(axis: str, values, metric: str, value, seeds: int = 4, noise: float = 0.0, **extra) -> pl.DataFrame:
    """Runs along one axis, all ok: metric = value(x) + noise * N(0, 1), one run per value and
    seed, with constant `extra` columns (a group's values)."""
    rng = np.random.default_rng(0)
    rows = [{axis: x, "seed": seed, metric: float(value(x)) + noise * rng.standard_normal(), **extra}
            for seed in range(seeds) for x in values]
    return pl.DataFrame(rows)


@pytest.fixture
def trend_runs():
    return trend_frame


@pytest.fixture
def results_folder(tmp_path):
    """Writes a frame as a results folder (one Parquet file; run_id, sweep and, where missing,
    status added) and returns the folder."""
    def write(frame: pl.DataFrame, name: str = "results") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if "status" not in frame.columns:
            frame = frame.with_columns(pl.lit("ok").alias("status"))
        frame.with_columns(pl.format("r{}", pl.int_range(pl.len())).alias("run_id"),
                           pl.lit(name).alias("sweep")).write_parquet(folder / "part-0.parquet")
        return folder
    return write


@pytest.fixture
def run_cli(capsys):
    """Runs the console script: (exit code, stdout, stderr)."""
    from phasemap import cli

    def run(*argv) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as done:
            cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return done.value.code, out, err
    return run


def wait_for_a_chunk(out, driver, tries: int = 600) -> None:
    """Until a `phasemap run` driver (a Popen) has written its first results file, or has ended;
    fail when no chunk finished."""
    import time

    from phasemap import store

    for _ in range(tries):
        if store.files(out) or driver.poll() is not None:
            break
        time.sleep(0.2)
    assert store.files(out), "no chunk finished"


def interrupt_after_a_chunk(args: list, out, signum: int, before_signal=None) -> tuple[int, str, int]:
    """Start `phasemap ARGS` in its own session, send `signum` once its first chunk is on disk
    (after before_signal(pid), if given), and return (exit code, stderr, pid); never leaves it running."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen([sys.executable, "-m", "phasemap.cli", *map(str, args)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_a_chunk(out, driver)
        if before_signal:
            before_signal(driver.pid)
        driver.send_signal(signum)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return driver.returncode, stderr, driver.pid
