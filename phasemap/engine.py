"""Batched training: M students of one family and shape trained as one computation.

Every tensor has a leading model axis M. Each model has its own gamma, lr, batch size, input
noise, seeds and data; a step is a handful of batched tensor operations, so there is no Python
work per model per step. Models never mix: a model that diverges (NaN/inf) is frozen and
reported, and leaves the others' numbers unchanged.

Loss, per model:  L(theta) = (1/B) sum_n ||y_n - f(x_n)||^2 + gamma ||theta||^2
(squared error summed over output dims, averaged over the B samples of the batch; the
penalty covers every weight and bias). With adamw, gamma is the decoupled decay instead:
theta <- theta (1 - lr gamma) each step, as torch.optim.AdamW(weight_decay=gamma).

    batch = build_batch(configs)          # configs of one shape_key
    result = fit(batch)                   # result.params: the family's parameters, (M, ...) each

The models are phasemap.models' families, the steps phasemap.backends' (hand-written, C++ or
autograd), the updates phasemap.optim's; this module owns batches, minibatches and the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from phasemap import backends, models, optim, rng
from phasemap.shapes import shape_key, work
from phasemap.tasks import make_data, teach, teacher_params

Tensor = torch.Tensor

CHECK_EVERY = 100  # steps between divergence checks


@dataclass
class Batch:
    """M models of one family and shape, ready to train. Shapes in comments; x's trailing
    dimensions are the family's input (d for an MLP, (n_ctx, d + 1) for a transformer)."""

    x: Tensor                 # (M, N, ...) train inputs
    y: Tensor                 # (M, N, k) train targets (fixed label noise included; fresh noise is per step)
    x_test: Tensor            # (M, Nt, ...)
    y_test: Tensor            # (M, Nt, k) noiseless
    params: list[Tensor]      # the family's parameters, (M, ...) each
    family: str               # phasemap.models family name
    arch: dict                # the family's arch(cfg): what forward and measure need
    gamma: Tensor             # (M,)
    lr: Tensor                # (M,)
    batch_size: Tensor        # (M,) int64
    input_noise: Tensor       # (M,) sigma of per-step input noise (0 unless noise_on is inputs)
    label_noise: Tensor       # (M,) sigma of per-step label noise (fresh_labels, or labels with fresh_data)
    beta1: Tensor             # (M,)
    beta2: Tensor             # (M,)
    eps: Tensor               # (M,)
    keys: Tensor              # (M,) int64 per-model stream key for minibatches
    noise_keys: Tensor        # (M,) int64 per-model stream key for input noise
    label_keys: Tensor        # (M,) int64 per-model stream key for fresh label noise
    optimizer: str
    steps: int
    work: float               # M x steps x samples x width x depth: decides whether an MLP step is compiled
    fresh: "FreshData | None" = None   # the teacher and input distribution, with task.fresh_data
    # Read from the configs, not the tensors: the step loop never waits on the device to decide.
    full_batch: bool = False  # every model steps on its whole train set
    max_batch: int = 0        # the largest minibatch
    noisy: bool = False       # some model has per-step input noise
    fresh_labels: bool = False  # some model has per-step label noise

    @property
    def n_models(self) -> int:
        return self.x.shape[0]

    @property
    def weights(self) -> list[Tensor]:
        """An MLP's weights W_l (M, fan_in, fan_out)."""
        return self.params[:self.arch["n_weights"]]

    @property
    def biases(self) -> list[Tensor]:
        """An MLP's biases b_l (M, 1, fan_out); empty without biases."""
        return self.params[self.arch["n_weights"]:]

    @property
    def activation(self) -> str:
        return self.arch["activation"]


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

    params: list[Tensor]      # the family's parameters, (M, ...) each
    train_loss: Tensor        # (M,) data term on the whole train set
    test_loss: Tensor         # (M,) on the noiseless test set
    diverged_step: Tensor     # (M,) int64, -1 where the model stayed finite
    seconds: float
    backend: str              # the backend that trained the batch
    n_weights: int = 0        # for an MLP: params[:n_weights] are the weights, the rest biases

    @property
    def diverged(self) -> Tensor:
        return self.diverged_step >= 0

    @property
    def weights(self) -> list[Tensor]:
        return self.params[:self.n_weights]

    @property
    def biases(self) -> list[Tensor]:
        return self.params[self.n_weights:]


def build_batch(configs: list[dict], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Batch:
    """Draw data and initial students for configs that share one shape_key."""
    keys = {shape_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs of {len(keys)} different shapes in one batch")
    first = configs[0]
    family = models.get(models.family_of(first))
    data = [make_data(c, dtype) for c in configs]
    students = [family.init_params(c, dtype) for c in configs]

    def stack(items) -> Tensor:
        return torch.stack(list(items)).to(device)

    def per_model(key, dt=dtype) -> Tensor:
        return torch.tensor([c[key] for c in configs], dtype=dt, device=device)

    return Batch(
        x=stack(d["x_train"] for d in data),
        y=stack(d["y_train"] for d in data),
        x_test=stack(d["x_test"] for d in data),
        y_test=stack(d["y_test"] for d in data),
        params=[stack(s[i] for s in students) for i in range(len(students[0]))],
        family=models.family_of(first),
        arch=family.arch(first),
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
        keys=stream_keys(configs, "sgd", device),
        noise_keys=stream_keys(configs, "input_noise", device),
        label_keys=stream_keys(configs, "label_noise", device),
        fresh=_fresh_data(configs, dtype, device) if first.get("fresh_data") else None,
        optimizer=first["optimizer"],
        steps=first["steps"],
        work=work(first, len(configs)),
        full_batch=all(c["batch_size"] == len(d["x_train"]) for c, d in zip(configs, data)),
        max_batch=max(c["batch_size"] for c in configs),
        noisy=any(c["sigma"] > 0 and c["noise_on"] == "inputs" for c in configs),
        fresh_labels=any(c["sigma"] > 0 and (c["noise_on"] == "fresh_labels"
                                             or (c["noise_on"] == "labels" and c.get("fresh_data")))
                         for c in configs),
    )


def stream_keys(configs: list[dict], purpose: str, device) -> Tensor:
    """(M,) int64 keys of each model's counter-based stream for one purpose (rng.derive_seed)."""
    return torch.tensor([rng.derive_seed(c["seed"], purpose) for c in configs], dtype=torch.int64, device=device)




def backend_for(cfg: dict, n_models: int, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> backends.Backend:
    """The backend that fit picks for n_models configs like cfg (backends.choose)."""
    family = models.family_of(cfg)
    return backends.choose(family, models.get(family).arch(cfg), cfg["optimizer"], device, dtype,
                           work(cfg, n_models))


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
        keys=stream_keys(configs, "fresh_data", device),
    )


def full_loss(batch: Batch, params: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """(1/N) sum_n ||y_n - f(x_n)||^2 per model, (M,) (backends.data_loss)."""
    return backends.data_loss(batch.family, batch.arch, params, x, y)


class _Minibatches:
    """Per-step batches for models with their own batch sizes; full-batch models skip sampling."""

    def __init__(self, batch: Batch):
        n = batch.x.shape[1]
        self.batch = batch
        self.full = batch.full_batch and batch.fresh is None
        self.k = batch.max_batch
        pos = torch.arange(self.k, device=batch.x.device)
        mask = (pos[None, :] < batch.batch_size[:, None]).to(batch.x.dtype)
        self.weight = (mask / batch.batch_size[:, None].to(batch.x.dtype))[..., None]   # (M, k, 1)
        self.rows = torch.arange(batch.n_models, device=batch.x.device)[:, None]
        # Full-batch models keep their samples in order, as they would in a batch of their own.
        self.in_order = (batch.batch_size == n)[:, None]
        self.noisy = batch.noisy
        self.fresh_labels = batch.fresh_labels

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
            noise = rng.normal(b.noise_keys, step, tuple(x.shape[1:]), x.dtype)
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


BACKENDS = backends.NAMES


def pick_backend(batch: Batch) -> str:
    """The name of the fastest backend that trains this batch (backends.choose)."""
    return _choose(batch).name


def _choose(batch: Batch) -> backends.Backend:
    return backends.choose(batch.family, batch.arch, batch.optimizer, batch.x.device, batch.x.dtype, batch.work)


def fit(batch: Batch, backend: str | None = None, observe=None) -> Result:
    """Train every model of the batch for batch.steps steps; return final params and losses.

    backend: one of BACKENDS (None: the fastest that applies). Results agree across backends to
    float rounding; a backend that cannot train the batch is a ValueError saying why.
    observe: None, or a callable with a sorted list `steps`: the loop stops after each of those
    steps (a backend's multi-step call ends there) and calls observe(step, params, diverged_step),
    step 0 (the initial state) before the first step; it must not change params. Stops change no
    numbers: a step is the same whichever call runs it.
    """
    start = time.perf_counter()
    if backend is None:
        chosen = _choose(batch)
    else:
        chosen = backends.get(backend)
        backends.check(chosen, batch.family, batch.arch, batch.optimizer, batch.x.device, batch.x.dtype)
    advance = chosen.stepper(batch.family, batch.arch, batch.optimizer)
    params = [p.clone() for p in batch.params]
    sample = _Minibatches(batch)
    adam = batch.optimizer in ("adam", "adamw")
    state = optim.init_state(params, batch.optimizer)
    hyper = {"lr": batch.lr.clone(), "gamma": batch.gamma}   # lr is zeroed for diverged models
    if adam:
        hyper.update(beta1=batch.beta1, beta2=batch.beta2, eps=batch.eps)
    diverged_step = torch.full((batch.n_models,), -1, dtype=torch.int64, device=batch.x.device)
    # The fused kernel runs up to the next divergence check in one call when the batch is the
    # same every step (full batch, no per-step noise); otherwise it gets each step's sample.
    span = chosen.span(sample.same_every_step, CHECK_EVERY)

    stops = iter(observe.steps if observe is not None else ())
    stop = next(stops, None)
    if stop == 0:                     # the initial state
        observe(0, params, diverged_step)
        stop = next(stops, None)
    t = 0
    while t < batch.steps:
        # A call ends at the next stop and at the next divergence check, so checks stay every CHECK_EVERY.
        n = min(span, batch.steps - t, CHECK_EVERY - t % CHECK_EVERY, (stop - t) if stop is not None else span)
        x, y = sample(t)
        step_hyper = optim.step_hyper(hyper, batch.beta1, batch.beta2, t + 1) if adam else hyper
        loss, params, state = advance(params, state, x, y, sample.weight, step_hyper, n)
        t += n
        if t % CHECK_EVERY == 0 or t == batch.steps:
            bad = ~torch.isfinite(loss)
            for p in params:
                bad |= ~torch.isfinite(p).flatten(1).all(dim=1)
            # Without a branch on the device's answer (a GPU would stall every CHECK_EVERY steps).
            new = bad & (diverged_step < 0)
            diverged_step = torch.where(new, t, diverged_step)
            hyper["lr"] = torch.where(new, 0.0, hyper["lr"])
            for p in params + state.m + state.v:  # zeroed: keeps inf/NaN arithmetic out of later steps
                p.masked_fill_(new.view(-1, *[1] * (p.dim() - 1)), 0.0)
        if t == stop:
            observe(t, params, diverged_step)
            stop = next(stops, None)

    nan = torch.tensor(float("nan"), dtype=batch.x.dtype, device=batch.x.device)
    dead = diverged_step >= 0
    with torch.no_grad():
        train_loss = torch.where(dead, nan, full_loss(batch, params, batch.x, batch.y))
        test_loss = torch.where(dead, nan, full_loss(batch, params, batch.x_test, batch.y_test))
    return Result(params, train_loss, test_loss, diverged_step, time.perf_counter() - start, chosen.name,
                  batch.arch.get("n_weights", 0))
