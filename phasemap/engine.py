"""Batched training: M students of one shape trained as one computation.

Every tensor has a leading model axis M. Each model has its own gamma, lr, batch size, input
noise, seeds and data; a step is a handful of batched matmuls (bmm) with a hand-written
backward pass, so there is no Python work per model per step. Models never mix: a model that
diverges (NaN/inf) is frozen and reported, and leaves the others' numbers unchanged.

Loss, per model:  L(theta) = (1/B) sum_n ||y_n - f(x_n)||^2 + gamma ||theta||^2
(squared error summed over output dims, averaged over the B samples of the batch; the
penalty covers every weight and bias). With adamw, gamma is the decoupled decay instead:
theta <- theta (1 - lr gamma) each step, as torch.optim.AdamW(weight_decay=gamma).

    batch = build_batch(configs)          # configs of one shape_key
    result = fit(batch)                   # result.weights[l]: (M, fan_in, fan_out)

The step math lives in phasemap.kernels (torch, eager or compiled) and phasemap.fused (C++, for
two-layer SGD on the CPU); this module owns batches, minibatches, the loop and picks the backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from phasemap import fused, kernels, rng
from phasemap.shapes import shape_key
from phasemap.tasks import init_student, make_data, teach, teacher_params

Tensor = torch.Tensor

CHECK_EVERY = 100  # steps between divergence checks
COMPILE_WORK = 2e9  # model x step x sample x unit products above which a batch is compiled


@dataclass
class Batch:
    """M models of one shape, ready to train. Shapes in comments; d = d_in, k = d_out."""

    x: Tensor                 # (M, N, d) train inputs
    y: Tensor                 # (M, N, k) train targets (fixed label noise included; fresh noise is per step)
    x_test: Tensor            # (M, Nt, d)
    y_test: Tensor            # (M, Nt, k) noiseless
    weights: list[Tensor]     # W_l: (M, fan_in, fan_out)
    biases: list[Tensor]      # b_l: (M, 1, fan_out), empty without biases
    gamma: Tensor             # (M,)
    lr: Tensor                # (M,)
    batch_size: Tensor        # (M,) int64
    input_noise: Tensor       # (M,) sigma of per-step input noise (0 unless noise_on is inputs)
    label_noise: Tensor       # (M,) sigma of per-step label noise (fresh_labels, or labels with fresh_data)
    beta1: Tensor             # (M,)
    beta2: Tensor             # (M,)
    eps: Tensor               # (M,)
    keys: Tensor              # (M,) int64 per-model stream key for minibatches and input noise
    label_keys: Tensor        # (M,) int64 per-model stream key for fresh label noise
    activation: str
    optimizer: str
    steps: int
    fresh: "FreshData | None" = None   # the teacher and input distribution, with task.fresh_data

    @property
    def n_models(self) -> int:
        return self.x.shape[0]

    @property
    def params(self) -> list[Tensor]:
        return self.weights + self.biases


@dataclass
class FreshData:
    """What drawing new train samples at every step needs (task.fresh_data), per model."""

    teacher: str              # identity, linear or mlp (one kind per batch: it is part of the shape key)
    params: list[Tensor]      # the teacher's weights, (M, fan_in, fan_out) each
    activation: str           # of an mlp teacher
    output_scale: Tensor      # (M, 1, 1), 1 unless an mlp teacher
    input_scale: Tensor       # (M, 1, 1)
    sin_inputs: Tensor        # (M, 1, 1) bool: x = sin(z) rather than z
    keys: Tensor              # (M,) int64 per-model stream key for the samples

    def sample(self, step: int, n: int, d_in: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(M, n, d_in) new inputs and their (M, n, d_out) teacher outputs for this step."""
        z = rng.normal(self.keys, step, (n, d_in), dtype) * self.input_scale
        x = torch.where(self.sin_inputs, torch.sin(z), z)
        return x, teach(self.teacher, self.params, x, self.activation, 1.0) * self.output_scale


@dataclass
class Result:
    """Final state of a trained batch. Losses are NaN for diverged models."""

    weights: list[Tensor]
    biases: list[Tensor]
    train_loss: Tensor        # (M,) data term on the whole train set
    test_loss: Tensor         # (M,) on the noiseless test set
    diverged_step: Tensor     # (M,) int64, -1 where the model stayed finite
    seconds: float
    extras: dict = field(default_factory=dict)

    @property
    def diverged(self) -> Tensor:
        return self.diverged_step >= 0


def build_batch(configs: list[dict], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Batch:
    """Draw data and initial students for configs that share one shape_key."""
    keys = {shape_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs of {len(keys)} different shapes in one batch")
    data = [make_data(c, dtype) for c in configs]
    students = [init_student(c, dtype) for c in configs]

    def stack(items) -> Tensor:
        return torch.stack(list(items)).to(device)

    def per_model(key, dt=dtype) -> Tensor:
        return torch.tensor([c[key] for c in configs], dtype=dt, device=device)

    first = configs[0]
    return Batch(
        x=stack(d["x_train"] for d in data),
        y=stack(d["y_train"] for d in data),
        x_test=stack(d["x_test"] for d in data),
        y_test=stack(d["y_test"] for d in data),
        weights=[stack(s[0][l] for s in students) for l in range(first["depth"])],
        biases=[stack(s[1][l] for s in students) for l in range(len(students[0][1]))],
        gamma=per_model("gamma"),
        lr=per_model("lr"),
        batch_size=per_model("batch_size", torch.int64),
        input_noise=torch.tensor(
            [c["sigma"] if c["noise_on"] == "inputs" else 0.0 for c in configs], dtype=dtype, device=device),
        label_noise=torch.tensor(
            [c["sigma"] if c["noise_on"] == "fresh_labels" or (c["noise_on"] == "labels" and c.get("fresh_data"))
             else 0.0 for c in configs], dtype=dtype, device=device),
        beta1=per_model("beta1"),
        beta2=per_model("beta2"),
        eps=per_model("eps"),
        keys=torch.tensor([rng.derive_seed(c["seed"], "sgd") for c in configs], dtype=torch.int64, device=device),
        label_keys=torch.tensor([rng.derive_seed(c["seed"], "label_noise") for c in configs], dtype=torch.int64,
                                device=device),
        fresh=_fresh_data(configs, dtype, device) if first.get("fresh_data") else None,
        activation=first["activation"],
        optimizer=first["optimizer"],
        steps=first["steps"],
    )


def _fresh_data(configs: list[dict], dtype: torch.dtype, device) -> FreshData:
    teachers = [teacher_params(c) for c in configs]
    first = configs[0]

    def column(values, dt=dtype) -> Tensor:
        return torch.tensor(values, dtype=dt, device=device)[:, None, None]

    return FreshData(
        teacher=first["teacher"],
        params=[torch.stack([t[l] for t in teachers]).to(dtype=dtype, device=device) for l in range(len(teachers[0]))],
        activation=first["teacher_activation"],
        output_scale=column([c["output_scale"] if c["teacher"] == "mlp" else 1.0 for c in configs]),
        input_scale=column([c["input_scale"] for c in configs]),
        sin_inputs=column([c["input_dist"] == "sin_gaussian" for c in configs], torch.bool),
        keys=torch.tensor([rng.derive_seed(c["seed"], "fresh_data") for c in configs], dtype=torch.int64,
                          device=device),
    )


def full_loss(weights: list[Tensor], biases: list[Tensor], x: Tensor, y: Tensor, activation: str) -> Tensor:
    """(1/N) sum_n ||y_n - f(x_n)||^2 per model, (M,)."""
    out, _, _ = kernels.forward(weights, biases, x, activation)
    return ((out - y) ** 2).sum(dim=2).mean(dim=1)


class _Minibatches:
    """Per-step batches for models with their own batch sizes; full-batch models skip sampling."""

    def __init__(self, batch: Batch):
        n = batch.x.shape[1]
        self.batch = batch
        self.full = bool((batch.batch_size == n).all()) and batch.fresh is None
        self.k = int(batch.batch_size.max())
        pos = torch.arange(self.k, device=batch.x.device)
        mask = (pos[None, :] < batch.batch_size[:, None]).to(batch.x.dtype)
        self.weight = (mask / batch.batch_size[:, None].to(batch.x.dtype))[..., None]   # (M, k, 1)
        self.rows = torch.arange(batch.n_models, device=batch.x.device)[:, None]
        # Full-batch models keep their samples in order, as they would in a batch of their own.
        self.in_order = (batch.batch_size == n)[:, None]
        self.noisy = bool((batch.input_noise > 0).any())
        self.fresh_labels = bool((batch.label_noise > 0).any())

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        b = self.batch
        if b.fresh is not None:     # online SGD: k new samples from the input distribution, labelled by the teacher
            x, y = b.fresh.sample(step, self.k, b.x.shape[2], b.x.dtype)
        elif self.full:
            x, y = b.x, b.y
        else:
            idx = rng.subset(b.keys, step, b.x.shape[1], self.k)   # (M, k)
            idx = torch.where(self.in_order, pos_like(idx), idx)
            x, y = b.x[self.rows, idx], b.y[self.rows, idx]
        if self.noisy:
            noise = rng.normal(b.keys ^ 0x5DEECE66D, step, tuple(x.shape[1:]), x.dtype)
            x = x + b.input_noise[:, None, None] * noise
        if self.fresh_labels:   # label-noise SGD: new noise on the step's targets, from the model's own stream
            y = y + b.label_noise[:, None, None] * rng.normal(b.label_keys, step, tuple(y.shape[1:]), y.dtype)
        return x, y

    @property
    def same_every_step(self) -> bool:
        """Full batch and no per-step noise: every step sees the same x and y."""
        return self.full and not self.noisy and not self.fresh_labels


def pos_like(idx: Tensor) -> Tensor:
    """0, 1, ..., k-1 along the last axis of idx."""
    return torch.arange(idx.shape[1], device=idx.device).expand_as(idx)


BACKENDS = ("eager", "compiled", "fused")


def fusable(cfg: dict, device: str | torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether configs like cfg train in the fused C++ kernel on this device and machine."""
    reason = fused.supports(cfg["depth"], cfg["bias"], cfg["optimizer"], cfg["activation"], dtype, device)
    return reason is None and fused.available()


def pick_backend(batch: Batch) -> str:
    """fused where the C++ kernel covers the model family; else compiled when the batch's work
    dwarfs inductor's compile time (seconds, cached on disk); else eager."""
    family = {"depth": len(batch.weights), "bias": bool(batch.biases), "optimizer": batch.optimizer,
              "activation": batch.activation}
    if fusable(family, batch.x.device, batch.x.dtype):
        return "fused"
    width = batch.weights[0].shape[2]
    work = batch.n_models * batch.steps * batch.x.shape[1] * width * len(batch.weights)
    return "compiled" if work >= COMPILE_WORK else "eager"


def fit(batch: Batch, backend: str | None = None) -> Result:
    """Train every model of the batch for batch.steps steps; return final params and losses.

    backend: one of BACKENDS (None: pick_backend). Results agree across backends to float rounding.
    """
    start = time.perf_counter()
    backend = backend or pick_backend(batch)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    step = None if backend == "fused" else kernels.make_step(len(batch.weights), batch.activation,
                                                             batch.optimizer, backend == "compiled")
    params = [p.clone() for p in batch.params]
    n_w = len(batch.weights)
    sample = _Minibatches(batch)
    adam = batch.optimizer in ("adam", "adamw")
    m = [torch.zeros_like(p) for p in params] if adam else []
    v = [torch.zeros_like(p) for p in params] if adam else []
    hyper = {"lr": batch.lr.clone(), "gamma": batch.gamma}   # lr is zeroed for diverged models
    if adam:
        hyper.update(beta1=batch.beta1, beta2=batch.beta2, eps=batch.eps)
    diverged_step = torch.full((batch.n_models,), -1, dtype=torch.int64, device=batch.x.device)
    # The fused kernel runs up to the next divergence check in one call when the batch is the
    # same every step (full batch, no per-step noise); otherwise it gets each step's sample.
    span = CHECK_EVERY if backend == "fused" and sample.same_every_step else 1
    sample_weight = sample.weight[..., 0].contiguous() if backend == "fused" else None   # (M, k)

    t = 0
    while t < batch.steps:
        n = min(span, batch.steps - t)
        x, y = sample(t)
        if backend == "fused":
            loss = fused.sgd_steps(x, y, sample_weight, params[0], params[1], hyper["lr"], hyper["gamma"],
                                   n, batch.activation)
        else:
            if adam:
                hyper["bc1"] = 1 - batch.beta1 ** (t + 1)
                hyper["bc2"] = 1 - batch.beta2 ** (t + 1)
            loss, params, m, v = step(params, m, v, x, y, sample.weight, hyper)
        t += n
        if t % CHECK_EVERY == 0 or t == batch.steps:
            bad = ~torch.isfinite(loss)
            for p in params:
                bad |= ~torch.isfinite(p).flatten(1).all(dim=1)
            new = bad & (diverged_step < 0)
            if new.any():
                diverged_step[new] = t
                hyper["lr"][new] = 0.0
                for p in params + m + v:
                    p[new] = 0.0              # keeps inf/NaN arithmetic out of later steps

    weights, biases = params[:n_w], params[n_w:]
    nan = torch.tensor(float("nan"), dtype=batch.x.dtype, device=batch.x.device)
    dead = diverged_step >= 0
    train_loss = torch.where(dead, nan, full_loss(weights, biases, batch.x, batch.y, batch.activation))
    test_loss = torch.where(dead, nan, full_loss(weights, biases, batch.x_test, batch.y_test, batch.activation))
    return Result(weights, biases, train_loss, test_loss, diverged_step, time.perf_counter() - start,
                  extras={"backend": backend})
