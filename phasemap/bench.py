"""`phasemap bench`: the engine on a reference workload, against the naive way.

- engine: every config of sweeps/bench/ref-mlp.yaml (or ref-transformer.yaml) through
  `runner.run_chunk` (training and metrics, no Ray), on the CPU one single-threaded worker
  process per core (as Ray runs trials), on a GPU one process. Reports runs/s and, for the MLP,
  achieved GFLOP/s of matmul and that as a fraction of this machine's batched-matmul peak
  measured in the same run.
- baseline, MLP: the usual way, one config per Ray Tune trial running a plain torch autograd
  loop (nn.Linear layers, torch.optim.SGD, the penalty in the loss), Ray start-up included.
- baseline, transformer: one model at a time in this process on one thread, plain autograd
  through the family's forward and torch.optim (AdamW), so the ratio is the batching's alone.

    phasemap bench                  # CPU, all 2048 configs, baseline on 8 configs
    phasemap bench --configs 256 --json
    phasemap bench --family transformer --configs 64 --baseline 4
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path


REF = Path(__file__).resolve().parent.parent / "sweeps" / "bench" / "ref-mlp.yaml"
REFERENCES = {"mlp": REF, "transformer": REF.with_name("ref-transformer.yaml")}


def matmul_flops(cfg: dict) -> float:
    """Matmul FLOPs of one training step of one model: forward, weight and hidden gradients."""
    sizes = [cfg["input_dim"]] + [cfg["width"]] * (cfg["depth"] - 1) + [cfg["output_dim"]]
    layers = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2.0 * cfg["batch_size"] * (2 * sum(layers) + sum(layers[1:]))


def load_configs(path: str | Path = REF, n: int | None = None) -> list[dict]:
    """The reference configs (spread evenly over the grid when only n are asked for)."""
    from phasemap.grid import expand
    from phasemap.spec import load_spec

    configs = expand(load_spec(path))
    if n and n < len(configs):
        stride = len(configs) / n
        configs = [configs[int(i * stride)] for i in range(n)]
    return configs


def _worker(configs: list[dict], device: str, warmup: bool, backend: str | None = None) -> dict:
    import torch

    torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())
    from phasemap import engine
    from phasemap.runner import DEFAULT_MAX_MODELS, run_chunk

    started = time.perf_counter()
    if warmup and configs:  # build or compile the step for a block's shape, outside the timed part
        batch = engine.build_batch(configs[:DEFAULT_MAX_MODELS[device]], device)
        backend = backend or engine.pick_backend(batch)
        batch.steps = 1
        engine.fit(batch, backend)
    ready = time.perf_counter()
    rows = run_chunk(configs, device, backend=backend)
    done = time.perf_counter()
    return {"runs": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "warmup_s": ready - started, "seconds": done - ready, "backend": backend}


def batched_matmul_peak(device: str, threads: int) -> float:
    """GFLOP/s of a large batched matmul on this machine (the same kind of kernel the engine uses)."""
    import torch

    torch.set_num_threads(threads)
    m, n = (64, 256) if device == "cpu" else (512, 512)
    a, b = torch.randn(m, n, n, device=device), torch.randn(m, n, n, device=device)
    torch.bmm(a, b)
    best = math.inf
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.bmm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2.0 * m * n**3 / best / 1e9


def engine_bench(configs: list[dict], device: str = "cpu", workers: int | None = None,
                 backend: str | None = None) -> dict:
    """Train every config through the engine; return runs/s, GFLOP/s and the peak fraction.

    backend: force a step (fused, compiled, eager) instead of the fastest that applies.
    """
    workers = workers or (os.cpu_count() or 1) if device == "cpu" else 1
    shares = [configs[i::workers] for i in range(workers)]
    started = time.perf_counter()
    if workers == 1:
        parts = [_worker(shares[0], device, True, backend)]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_worker, shares, [device] * workers, [True] * workers, [backend] * workers))
    wall = time.perf_counter() - started
    train = max(p["seconds"] for p in parts)          # the workers run side by side
    runs = sum(p["runs"] for p in parts)
    out = {"device": device, "backend": parts[0]["backend"], "workers": workers, "runs": runs,
           "ok": sum(p["ok"] for p in parts),
           "seconds": train, "warmup_seconds": max(p["warmup_s"] for p in parts), "wall_seconds": wall,
           "runs_per_s": runs / train}
    if all("width" in c for c in configs):           # matmul FLOPs are counted for the MLP
        flops = sum(matmul_flops(c) * c["steps"] for c in configs)
        peak = batched_matmul_peak(device, workers if device == "cpu" else 1)
        out.update(gflops=flops / train / 1e9, peak_gflops=peak, peak_fraction=flops / train / 1e9 / peak)
    return out


GPU_BATCHES = (256, 1024, 4096, 16384)


def batch_size_bench(device: str, sizes: tuple[int, ...] = GPU_BATCHES, backend: str | None = None) -> list[dict]:
    """The engine on ref-mlp at each number of models per batch (more seeds where the file has too
    few configs): runs/s, matmul GFLOP/s and that as a fraction of the device's batched-matmul
    peak, one process, warm (the first batch of each size, which builds or compiles its step, is
    not timed). Needs torch alone: no Ray."""
    import torch

    from phasemap.grid import expand
    from phasemap.runner import run_chunk
    from phasemap.spec import load_spec

    peak = batched_matmul_peak(device, torch.get_num_threads())
    out = []
    for m in sizes:
        seeds = max(32, -(-m // 64))              # ref-mlp has 64 gamma values
        configs = expand(load_spec(REF, [f"grid.seed={{range: {seeds}}}"]))[:m]
        run_chunk(configs[:m], device, max_models=m, backend=backend)     # build / compile, untimed
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        rows = run_chunk(configs, device, max_models=m, backend=backend)
        seconds = time.perf_counter() - started
        flops = sum(matmul_flops(c) * c["steps"] for c in configs)
        out.append({"models": m, "runs": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
                    "backend": rows[0]["backend"], "seconds": seconds, "runs_per_s": len(rows) / seconds,
                    "gflops": flops / seconds / 1e9, "peak_gflops": peak,
                    "peak_fraction": flops / seconds / 1e9 / peak})
    return out


def one_at_a_time(cfg: dict) -> None:
    """Train one model of any family the plain way: autograd through the family's forward and
    torch.optim, on random minibatches (the baseline of the transformer workload)."""
    import torch

    from phasemap import models
    from phasemap.tasks import make_data

    family = models.get(models.family_of(cfg))
    data = make_data(cfg)
    params = [p.clone().requires_grad_() for p in family.init_params(cfg)]
    betas = (cfg["beta1"], cfg["beta2"])
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=cfg["lr"]),
           "adam": lambda: torch.optim.Adam(params, lr=cfg["lr"], betas=betas, eps=cfg["eps"]),
           "adamw": lambda: torch.optim.AdamW(params, lr=cfg["lr"], betas=betas, eps=cfg["eps"],
                                              weight_decay=cfg["gamma"])}[cfg["optimizer"]]()
    arch, n = family.arch(cfg), cfg["n_train"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    for _ in range(cfg["steps"]):
        idx = torch.randperm(n, generator=gen)[:cfg["batch_size"]]
        out = family.forward([p[None] for p in params], data["x_train"][idx][None], **arch)[0]
        loss = ((out - data["y_train"][idx]) ** 2).sum(dim=1).mean()
        if cfg["optimizer"] != "adamw":
            loss = loss + cfg["gamma"] * sum((p * p).sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()


def one_at_a_time_bench(configs: list[dict]) -> dict:
    """Runs/s of one_at_a_time on one thread, in this process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for cfg in configs:
            one_at_a_time(cfg)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return {"runs": len(configs), "seconds": seconds, "runs_per_s": len(configs) / seconds, "threads": 1}


def _naive_trial(config: dict) -> None:
    """One config, the straightforward way: nn.Linear layers, autograd, torch.optim.SGD."""
    import torch

    from ray import tune

    from phasemap.tasks import make_data

    torch.set_num_threads(1)
    cfg = config["cfg"]
    data = make_data(cfg)
    torch.manual_seed(cfg["seed"])
    sizes = [cfg["input_dim"]] + [cfg["width"]] * (cfg["depth"] - 1) + [cfg["output_dim"]]
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b, bias=False))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"])
    for _ in range(cfg["steps"]):
        loss = ((net(data["x_train"]) - data["y_train"]) ** 2).sum(1).mean()
        loss = loss + cfg["gamma"] * sum((p * p).sum() for p in net.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tune.report({"loss": float(loss)})


def baseline_bench(configs: list[dict]) -> dict:
    """Runs/s of one-config-per-trial Ray Tune with a plain autograd loop, Ray start-up included."""
    import tempfile

    from phasemap.executor import init_ray  # sets Tune's quiet output before ray loads

    started = time.perf_counter()
    init_ray(None, None)
    import ray
    from ray import tune

    try:
        with tempfile.TemporaryDirectory() as tmp:
            tuner = tune.Tuner(
                tune.with_resources(_naive_trial, {"cpu": 1}),
                param_space={"cfg": tune.grid_search(configs)},
                run_config=tune.RunConfig(storage_path=tmp, verbose=0))
            tuner.fit()
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - started
    return {"runs": len(configs), "seconds": seconds, "runs_per_s": len(configs) / seconds}


SCALE_SEEDS = 50


def scale_spec(n: int):
    """A sweep of n trivial configs (width 2, 10 steps, 8 samples): n / 50 gamma values x 50 seeds,
    so that a run measures everything but training."""
    from phasemap.spec import parse_spec

    return parse_spec({
        "name": f"scale-{n}",
        "task": {"teacher": "mlp", "teacher_rank": 1, "input_dim": 2, "output_dim": 1, "n_train": 8, "n_test": 8},
        "model": {"depth": 2, "width": 2, "activation": "tanh"},
        "train": {"optimizer": "sgd", "lr": 0.1, "steps": 10},
        "grid": {"gamma": {"logspace": [1e-4, 1e-1, max(1, n // SCALE_SEEDS)]}, "seed": {"range": SCALE_SEEDS}},
    })


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_bench(n: int, out: str | Path, num_cpus: int | None = None, chunk: int | None = None) -> dict:
    """Run a sweep of n trivial configs end to end through Ray Tune into `out` (a fresh folder):
    seconds for planning, Ray's start, the run (Tune, trials, metrics, Parquet) and the resume
    index, the driver's and the largest trial's peak memory, and rows/run_ids on disk."""
    from phasemap import store
    from phasemap.executor import init_ray, ray_session, run_configs
    from phasemap.plan import pending

    spec = scale_spec(n)
    if store.files(out):
        raise ValueError(f"{out} already holds results: give a fresh folder")
    t0 = time.perf_counter()
    todo = pending(spec, str(out))
    t_plan = time.perf_counter()
    with ray_session(None, num_cpus):
        init_ray(None, num_cpus)                 # timed apart from the run
        t_ray = time.perf_counter()
        summary = run_configs(spec.name, todo, executor="ray", chunk=chunk)
        t_run = time.perf_counter()
    t_down = time.perf_counter()
    done = store.finished(out)
    t_index = time.perf_counter()
    again = pending(spec, str(out))
    t_replan = time.perf_counter()
    rows = sum(store.pq.ParquetFile(p).metadata.num_rows for p in store.files(out))
    return {"configs": todo.total, "chunks": summary.chunks, "rows": rows, "run_ids": len(done),
            "missing": summary.missing, "left_after": again.count,
            "plan_s": t_plan - t0, "ray_start_s": t_ray - t_plan, "run_s": t_run - t_ray,
            "ray_stop_s": t_down - t_run, "index_s": t_index - t_down, "replan_s": t_replan - t_index,
            "configs_per_s": todo.total / (t_run - t_ray), "driver_peak_mb": _peak_mb(),
            "trial_peak_mb": summary.trial_peak_mb}


def synthetic_results(path: str | Path, rows: int = 1_000_000, seed: int = 0) -> Path:
    """A results folder of `rows` synthetic runs over gamma x temperature x sigma x seeds, where
    m = floor((c / gamma)^(1/2)) with c shifted by T, sigma and per-run noise (for timing analysis)."""
    import numpy as np
    import polars as pl

    n_seed = max(1, rows // 10_000)
    g, t, s = np.geomspace(1e-3, 1, 100), np.linspace(0, 0.1, 10), np.linspace(0, 1, 10)
    grid = [a.ravel() for a in np.meshgrid(g, t, s, np.arange(n_seed), indexing="ij")]
    rng = np.random.default_rng(seed)
    c = 0.5 * (1 + 0.05 * rng.standard_normal(len(grid[0]))) * (1 - 2 * grid[1]) * (1 - 0.3 * grid[2])
    m = np.floor(np.clip(c / grid[0], 0, None) ** 0.5).astype(np.int64)
    frame = pl.DataFrame({"run_id": np.arange(len(m)).astype(str), "status": "ok", "sweep": "synthetic",
                          "gamma": grid[0], "temperature": grid[1], "sigma": grid[2],
                          "seed": grid[3].astype(np.int64), "width": 64, "n_distinct": m,
                          "weight_rank": np.minimum(m, 10)})
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(frame.iter_slices(250_000)):
        part.write_parquet(path / f"part-{i}.parquet")
    return path


def analysis_bench(rows: int = 1_000_000) -> dict:
    """Seconds for critical() and scaling() on a synthetic results folder of `rows` runs."""
    import tempfile

    from phasemap.analysis import critical, scaling

    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_results(tmp, rows)
        started = time.perf_counter()
        found = critical(path, "weight_rank", "gamma")
        middle = time.perf_counter()
        fit = scaling(path, "n_distinct", "gamma")
        done = time.perf_counter()
    return {"rows": rows, "critical_seconds": middle - started, "critical_rows": found.height,
            "scaling_seconds": done - middle, "beta": fit["beta"]}
