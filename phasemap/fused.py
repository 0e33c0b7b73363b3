"""The CPU fast path: SGD for one-hidden-layer networks, fused per model in C++.

Most phase-diagram sweeps train two-layer students (x -> act(x W1) W2, no biases) with SGD. On
the CPU their step is bound by the (samples x width) activations, not by the matmuls, so
phasemap/csrc/mlp2.cpp runs all of a model's steps in one loop that keeps its weights and data
in the core's cache and each sample block's activations in registers and L1. It gives the
results of `kernels.step` (optimizer "sgd") to float rounding, with the same tanh approximation.

The source is compiled once per machine by torch.utils.cpp_extension (the C++ compiler that
torch.compile needs anyway; about 2 s, cached on disk) and called through ctypes, which releases
the GIL, so the models of a batch are split over torch.get_num_threads() threads.

    if fused.supports(depth=2, bias=False, optimizer="sgd", activation="tanh", dtype=torch.float32,
                      device="cpu") is None and fused.available():
        loss = fused.sgd_steps(x, y, sample_weight, w1, w2, lr, gamma, steps=100, activation="tanh")
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

Tensor = torch.Tensor
SOURCE = Path(__file__).resolve().parent / "csrc" / "mlp2.cpp"
ACTIVATIONS = {"tanh": 0, "relu": 1}
log = logging.getLogger(__name__)


def supports(depth: int, bias: bool, optimizer: str, activation: str, dtype: torch.dtype,
             device: torch.device | str) -> str | None:
    """None when the fused kernel can train this model family, else the reason it cannot."""
    if torch.device(device).type != "cpu":
        return "not on the CPU"
    if depth != 2 or bias:
        return "not a two-layer network without biases"
    if optimizer != "sgd":
        return f"optimizer {optimizer}"
    if activation not in ACTIVATIONS:
        return f"activation {activation}"
    if dtype != torch.float32:
        return f"dtype {dtype}"
    return None


def _cpu_tag() -> str:
    """Names the build after this CPU's features: it is compiled with -march=native, and a cache
    directory shared by nodes with other CPUs must not hand them a build they cannot run."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def _put_ninja_on_path() -> None:
    """torch looks for `ninja` on PATH; the one installed with phasemap sits beside the venv's
    python, which is not on PATH when a venv's scripts are run without activating it."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


@functools.cache
def _library() -> ctypes.CDLL | None:
    from torch.utils import cpp_extension

    _put_ninja_on_path()
    try:
        path = cpp_extension.load(name=f"phasemap_mlp2_{_cpu_tag()}", sources=[str(SOURCE)],
                                  extra_cflags=["-O3", "-march=native", "-fno-math-errno"],
                                  is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - no compiler: the torch step still works
        log.warning("phasemap: the fused CPU kernel could not be built (%s); using the torch step",
                    str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        return None
    lib = ctypes.CDLL(path)
    fn = lib.phasemap_mlp2_sgd
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 7
    fn = lib.phasemap_mlp2_loss
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6
    return lib


def available() -> bool:
    """Whether the kernel is built (building it on first use)."""
    return _library() is not None


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="phasemap-fused")


def sgd_steps(x: Tensor, y: Tensor, sample_weight: Tensor, w1: Tensor, w2: Tensor, lr: Tensor,
              gamma: Tensor, steps: int, activation: str) -> Tensor:
    """Run `steps` SGD steps for every model, updating w1 (M, d, h) and w2 (M, h, k) in place.

    x (M, n, d), y (M, n, k), sample_weight (M, n, 1), lr and gamma (M,). Returns the data loss
    sum_n w_n ||y_n - f(x_n)||^2 (M,) of the last step, before its update, like kernels.step.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the fused CPU kernel is not available on this machine")
    for name, t in (("w1", w1), ("w2", w2)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: it is updated in place")
    x, y, sample_weight, lr, gamma = (t.contiguous() for t in (x, y, sample_weight, lr, gamma))
    m, n, d = x.shape
    h, k = w1.shape[2], w2.shape[2]
    loss = torch.empty(m, dtype=x.dtype)

    def run(lo: int, hi: int) -> int:
        def at(t: Tensor) -> int:  # address of model lo's slice
            return t.data_ptr() + lo * (t.numel() // m) * t.element_size()
        return lib.phasemap_mlp2_sgd(at(x), at(y), at(sample_weight), at(w1), at(w2), at(lr), at(gamma),
                                     at(loss), hi - lo, n, d, h, k, steps, ACTIVATIONS[activation])

    threads = min(torch.get_num_threads(), m)
    bounds = [m * i // threads for i in range(threads + 1)]
    if threads == 1:
        codes = [run(0, m)]
    else:
        codes = list(_pool(threads).map(run, bounds[:-1], bounds[1:]))
    if any(codes):
        raise ValueError(f"the fused kernel refused activation {activation!r}")
    return loss


def data_loss(x: Tensor, y: Tensor, w1: Tensor, w2: Tensor, activation: str) -> Tensor:
    """(M,) data loss (1/n) sum_n ||y_n - f(x_n)||^2 of M two-layer networks, nothing updated.

    x (M, n, d), y (M, n, k), w1 (M, d, h), w2 (M, h, k), float32 on the CPU; the forward of
    sgd_steps (the same tanh approximation), so it agrees with kernels.forward to float rounding.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the fused CPU kernel is not available on this machine")
    x, y, w1, w2 = (t.contiguous() for t in (x, y, w1, w2))
    m, n, d = x.shape
    h, k = w1.shape[2], w2.shape[2]
    loss = torch.empty(m, dtype=x.dtype)

    def run(lo: int, hi: int) -> int:
        def at(t: Tensor) -> int:
            return t.data_ptr() + lo * (t.numel() // m) * t.element_size()
        return lib.phasemap_mlp2_loss(at(x), at(y), at(w1), at(w2), at(loss), hi - lo, n, d, h, k,
                                      ACTIVATIONS[activation])

    threads = min(torch.get_num_threads(), m)
    bounds = [m * i // threads for i in range(threads + 1)]
    codes = [run(0, m)] if threads == 1 else list(_pool(threads).map(run, bounds[:-1], bounds[1:]))
    if any(codes):
        raise ValueError(f"the fused kernel refused activation {activation!r}")
    return loss
