"""`phasemap bench`: the engine against one-config-per-trial Ray Tune, or the analysis on synthetic rows."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from phasemap.cli.common import app, check_device, console, err_console, fail


def _batch_sizes(device: str, models: str | None, backend: str | None, family: str, as_json: bool) -> None:
    from phasemap.bench import GPU_BATCHES, batch_size_bench

    if family != "mlp":
        fail("--models / --device cuda measure the ref-mlp workload: leave out --family")
    try:
        sizes = tuple(int(m) for m in models.split(",")) if models else GPU_BATCHES
    except ValueError:
        fail(f"--models {models}: give positive integers separated by commas, e.g. 256,4096")
    if not sizes or min(sizes) < 1:
        fail(f"--models {models}: give positive integers separated by commas, e.g. 256,4096")
    rows = batch_size_bench(device, sizes, backend)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for r in rows:
        console.print(f"{device}, {r['models']:>6} models per batch ({r['backend']} step): {r['runs_per_s']:,.1f} runs/s, "
                      f"{r['gflops']:,.1f} GFLOP/s = {100 * r['peak_fraction']:.1f}% of the "
                      f"{r['peak_gflops']:,.0f} GFLOP/s batched-matmul peak", highlight=False)


def _scale(n: int, out: str | None, num_cpus: int | None) -> dict:
    import shutil
    import tempfile

    from phasemap.bench import scale_bench

    folder = out or tempfile.mkdtemp(prefix="phasemap-scale-")
    try:
        return scale_bench(n, folder, num_cpus)
    except ValueError as err:
        fail(str(err))
    finally:
        if out is None:
            shutil.rmtree(folder, ignore_errors=True)


@app.command()
def bench(
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    family: str = typer.Option("mlp", "--family", help="The reference workload: mlp (ref-mlp.yaml) or transformer (ref-transformer.yaml)."),
    configs: Optional[int] = typer.Option(None, "--configs", min=1, help="Train only N of the reference configs."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="CPU worker processes (default: one per core)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Force the step: fused, compiled, eager or autograd (default: the fastest that applies)."),
    baseline: int = typer.Option(8, "--baseline", min=0, help="Configs for the naive baseline (0: skip it)."),
    record: Optional[str] = typer.Option(None, "--record", help="Record every engine config's training, as "
                                         "train.record would: log:N or every:K (e.g. log:100)."),
    analysis: bool = typer.Option(False, "--analysis", help="Time the analysis on synthetic rows instead."),
    models: Optional[str] = typer.Option(None, "--models", help="Models per batch to measure, e.g. 256,4096 "
                                         "(default with --device cuda: 256,1024,4096,16384)."),
    scale: Optional[int] = typer.Option(None, "--scale", min=50, help="Run a sweep of N trivial configs end to end "
                                        "through Ray Tune instead: everything but training, timed."),
    out: Optional[str] = typer.Option(None, "--out", help="Results folder of --scale (default: a temporary one, removed)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the embedded Ray (--scale)."),
    rows: int = typer.Option(1_000_000, "--rows", min=10_000, help="Synthetic rows for --analysis."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Benchmark the engine on sweeps/bench/ref-mlp.yaml against one-config-per-trial Ray Tune, or on
    ref-transformer.yaml against one model at a time (--family transformer)."""
    def with_record(configs: list[dict], record: str) -> list[dict]:
        from phasemap.recording import schedule

        try:
            schedule(record, configs[0]["steps"])
        except ValueError:
            fail(f"--record: {record!r} is not log:N or every:K")
        return [{**c, "record": record} for c in configs]

    from phasemap.bench import REFERENCES, analysis_bench, baseline_bench, engine_bench, load_configs, one_at_a_time_bench

    if scale is not None:
        result = _scale(scale, out, num_cpus)
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        r = result
        console.print(f"{r['configs']:,} trivial configs through Ray Tune in {r['chunks']} chunks: plan {r['plan_s']:.1f} s, "
                      f"Ray start {r['ray_start_s']:.1f} s, run {r['run_s']:.1f} s = [bold]{r['configs_per_s']:,.0f} "
                      f"configs/s[/], resume index {r['index_s']:.1f} s, replan {r['replan_s']:.1f} s; "
                      f"{r['rows']:,} rows, {r['run_ids']:,} run_ids, {r['missing']} missing; peak memory: driver "
                      f"{r['driver_peak_mb']:.0f} MB, largest trial {r['trial_peak_mb'] or 0:.0f} MB")
        return
    if analysis:
        out = analysis_bench(rows)
        if as_json:
            sys.stdout.write(json.dumps(out, indent=2) + "\n")
        else:
            console.print(f"{out['rows']} synthetic runs: critical {out['critical_seconds']:.2f} s "
                          f"({out['critical_rows']} critical points), scaling {out['scaling_seconds']:.2f} s")
        return

    check_device(device, ("cpu", "cuda"))
    if family not in REFERENCES:
        fail(f"--family: {family!r} is not one of {', '.join(REFERENCES)}")
    from phasemap.engine import BACKENDS

    if backend is not None and backend not in BACKENDS:
        fail(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "fused" and device != "cpu":
        fail("--backend fused runs on the CPU only")
    if models is not None or device == "cuda":
        _batch_sizes(device, models, backend, family, as_json)
        return
    reference = REFERENCES[family]
    engine_configs = load_configs(reference, configs)
    if record is not None:
        engine_configs = with_record(engine_configs, record)
    result = {"engine": engine_bench(engine_configs, device, workers, backend)}
    if baseline and family == "transformer":     # per core: the engine's workers are single-threaded
        result["baseline"] = one_at_a_time_bench(load_configs(reference, baseline))
        per_core = result["engine"]["runs_per_s"] / result["engine"]["workers"]
        result["speedup_per_core"] = per_core / result["baseline"]["runs_per_s"]
    elif baseline:
        try:
            result["baseline"] = baseline_bench(load_configs(n=baseline))
            result["speedup"] = result["engine"]["runs_per_s"] / result["baseline"]["runs_per_s"]
        except ImportError:
            err_console.print("ray is not installed here: baseline skipped")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    e = result["engine"]
    flops = (f", {e['gflops']:.1f} GFLOP/s = {100 * e['peak_fraction']:.0f}% of the {e['peak_gflops']:.0f} GFLOP/s "
             "batched-matmul peak") if "gflops" in e else ""
    console.print(f"engine ({e['device']}, {e['backend']} step, {e['workers']} worker(s)): {e['runs']} runs in {e['seconds']:.1f} s "
                  f"= [bold]{e['runs_per_s']:.1f} runs/s[/]{flops} (warm-up {e['warmup_seconds']:.1f} s)")
    if "speedup_per_core" in result:
        b = result["baseline"]
        console.print(f"baseline (one model at a time, autograd + torch.optim, 1 thread): {b['runs']} runs in "
                      f"{b['seconds']:.1f} s = {b['runs_per_s']:.2f} runs/s; engine per core / baseline = "
                      f"[bold]{result['speedup_per_core']:.1f}x[/]")
    elif "baseline" in result:
        b = result["baseline"]
        console.print(f"baseline (one config per Ray Tune trial, plain autograd): {b['runs']} runs in "
                      f"{b['seconds']:.1f} s = {b['runs_per_s']:.2f} runs/s; engine/baseline = "
                      f"[bold]{result['speedup']:.0f}x[/]")
