"""From a validated sweep spec to resolved configs: axes, the Cartesian product, derivations, run ids.

A resolved config is a flat dict holding every key of task/model/train/metrics once, with
the derived values filled in (batch size, temperature, the linear teacher's spectrum):

    spec = load_spec("sweeps/quickstart.yaml")
    count(spec)           # 48: read from the axis definitions, nothing built
    configs = expand(spec)  # SpecError above max_configs (DEFAULT_MAX_CONFIGS), before any axis is built
    configs[0]["run_id"]  # a stable 32-hex hash of the config, the same on any machine
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
from typing import Any

import numpy as np
from pydantic import ValidationError

from phasemap import models
from phasemap.spec import (
    KEY_SECTION,
    MAX_RECORDS,
    SECTIONS,
    TASKS,
    VARIANTS,
    UNSWEEPABLE,
    SpecError,
    SweepSpec,
    axis_key,
    section_keys,
    suggest,
    variant_key_message,
    validate_section,
    value_reason,
)

# A flat config of a non-ICL teacher holds the mlp and linear teachers' keys whatever its teacher
# (at their defaults when they do not apply), as it did before the task section became one variant
# per teacher: run_ids hash the key set, so it stays. An icl_linear config holds only its own keys.
LEGACY_TASK_KEYS = {key: field.default for cls in (TASKS["mlp"], TASKS["linear"])
                    for key, field in cls.model_fields.items()}
# The key that names a run; everything else in a row describes or measures it.
RUN_ID = "run_id"
# The most configs `expand` builds unless told otherwise (--max-configs). A resolved config is a
# dict of about 40 entries, about 1 kB and 0.1 ms to build, so two million take ~2 GB of driver
# memory and a few minutes: past that a grid is more likely a typo than a plan.
DEFAULT_MAX_CONFIGS = 2_000_000


def canonical(value: float) -> float:
    """A computed axis value at 12 significant digits, so it (and its run_id) is the same on every platform."""
    return float(f"{value:.12g}")


def _axis_form(name: str, axis: Any) -> tuple[str, Any, int]:
    """Check a raw axis definition's form; return (kind, arguments, number of values), building nothing."""
    where = f"grid.{name}"
    if isinstance(axis, list):
        if not axis:
            raise SpecError(f"{where}: the axis is empty; give at least one value", key=where)
        return "list", axis, len(axis)
    if not isinstance(axis, dict) or len(axis) != 1:
        raise SpecError(
            f"{where}: an axis is a list of values or one of "
            "{logspace: [lo, hi, n]}, {linspace: [lo, hi, n]}, {range: n}",
            key=where,
        )
    (kind, args), = axis.items()
    if kind == "range":
        if isinstance(args, int) and not isinstance(args, bool):
            args = [0, args]
        if (not isinstance(args, list) or len(args) != 2
                or not all(isinstance(a, int) and not isinstance(a, bool) for a in args)):
            raise SpecError(f"{where}: range takes n or [start, stop] (integers)", key=where)
        if args[1] <= args[0]:
            raise SpecError(f"{where}: range {args} is empty", key=where)
        return kind, args, args[1] - args[0]
    if kind not in ("logspace", "linspace"):
        raise SpecError(
            f"{where}: unknown axis kind {kind!r}{suggest(kind, ['logspace', 'linspace', 'range'])}",
            key=where,
        )
    if (not isinstance(args, list) or len(args) != 3
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            or not isinstance(args[2], int)):
        raise SpecError(f"{where}: {kind} takes [lo, hi, n] with n an integer", key=where)
    lo, hi, n = args
    if n < 1:
        raise SpecError(f"{where}: {kind} needs n >= 1 points, got {n}", key=where)
    if kind == "logspace" and (lo <= 0 or hi <= 0):
        raise SpecError(
            f"{where}: logspace bounds are values, not exponents, and must be > 0 (got {lo}, {hi})",
            key=where,
        )
    return kind, args, n


def axis_length(name: str, axis: Any) -> int:
    """The number of values of one raw axis definition, read from its form without building it."""
    return _axis_form(name, axis)[2]


def axis_values(name: str, axis: Any) -> list:
    """Expand one raw axis definition (list, logspace, linspace or range) to its values.

    It builds every value: check the axis's size first (`check_size`) when it comes from a user.
    """
    kind, args, n = _axis_form(name, axis)
    if kind == "list":
        return list(args)
    if kind == "range":
        return list(range(*args))
    lo, hi, _ = args
    raw = np.geomspace(lo, hi, n) if kind == "logspace" else np.linspace(lo, hi, n)
    return [canonical(v) for v in raw]


def count(spec: SweepSpec) -> int:
    """The number of configs of the sweep (the product of its axis lengths), without building any axis."""
    return math.prod(axis_length(name, axis) for name, axis in spec.grid.items())


def check_size(spec: SweepSpec, max_configs: int | None = DEFAULT_MAX_CONFIGS) -> int:
    """Return `count(spec)`; raise SpecError when it exceeds `max_configs` (None: no limit).

    Cheap (nothing is built), so a billion-config grid is refused at once instead of filling memory.
    One axis longer than the limit is refused too, since the product is at least its length.
    """
    if max_configs is not None and (isinstance(max_configs, bool) or not isinstance(max_configs, int)
                                    or max_configs < 1):
        raise SpecError(f"--max-configs: must be a positive integer (got {max_configs!r})", key="max_configs")
    lengths = {name: axis_length(name, axis) for name, axis in spec.grid.items()}
    total = math.prod(lengths.values())
    if max_configs is not None and total > max_configs:
        sizes = " x ".join(f"{name} {n:,}" for name, n in lengths.items())
        raise SpecError(f"grid: {total:,} configs ({sizes}) exceed the limit of {max_configs:,}; "
                        "pass --max-configs to raise it", key="grid")
    return total


def _validate_axis(spec: SweepSpec, name: str, values: list) -> list:
    """Check each value of an axis against its key's type and range; return coerced values."""
    key = axis_key(name)
    section = KEY_SECTION.get(key)
    if section is None or ("." in name and name.split(".", 1)[0] != section) or key in UNSWEEPABLE:
        hint = suggest(key, KEY_SECTION)
        raise SpecError(f"grid.{name}: not a sweepable config key{hint}", key=f"grid.{name}")
    base = getattr(spec, section).model_dump(exclude_unset=True)
    coerced = []
    for value in values:
        if isinstance(value, (dict, list)):
            raise SpecError(f"grid.{name}: axis values must be scalars, got {value!r}", key=f"grid.{name}")
        try:
            model = _validate_value(section, base, key, value)
        except ValidationError as err:
            raise SpecError(f"grid.{name}: value {value!r}: {value_reason(section, err)}",
                            key=f"grid.{name}") from None
        coerced.append(getattr(model, key))
    if len(set(map(repr, coerced))) != len(coerced):
        raise SpecError(f"grid.{name}: the axis repeats a value", key=f"grid.{name}")
    return coerced


def _validate_value(section: str, base: dict, key: str, value: Any):
    """The section with `key` set to one axis value; a whole float for an integer key (linspace over
    width) is taken as that integer."""
    try:
        return validate_section(section, {**base, key: value})
    except ValidationError as err:
        if not (isinstance(value, float) and value.is_integer() and err.errors()[0]["type"] == "int_type"):
            raise
        return validate_section(section, {**base, key: int(value)})


def axes(spec: SweepSpec, max_configs: int | None = DEFAULT_MAX_CONFIGS) -> dict[str, list]:
    """The sweep's axes as {bare key: validated values}, in file order; the size is checked first."""
    check_size(spec, max_configs)
    out: dict[str, list] = {}
    for name, axis in spec.grid.items():
        key = axis_key(name)
        if key in out:
            raise SpecError(f"grid.{name}: axis {key!r} is given twice", key=f"grid.{name}")
        out[key] = _validate_axis(spec, name, axis_values(name, axis))
    return out


def base_flat(spec: SweepSpec) -> dict[str, Any]:
    """Every config key of the sweep at its section's value (before a grid point and resolution)."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        flat.update(getattr(spec, section).model_dump())
    return flat if flat["teacher"] == "icl_linear" else {**LEGACY_TASK_KEYS, **flat}


def _check_kind(cfg: dict, explicit: set[str], section: str) -> None:
    """Refuse a key set in the task (model) section or on an axis that the config's teacher
    (family) does not take: a grid point may switch the teacher (family) away from it."""
    chooser, classes = VARIANTS[section]
    kind = cfg[chooser]
    for key in sorted(explicit):
        if KEY_SECTION.get(key) == section and key not in classes[kind].model_fields:
            raise SpecError(f"{section}.{key}: {variant_key_message(section, key, kind)}", key=f"{section}.{key}")


def _resolve_family(cfg: dict, explicit: set[str]) -> None:
    """Keep only the chosen family's model keys, derived ones filled in (an MLP config has no
    `family` key, so MLP runs keep their ids); a key of another family, a metric the family does
    not measure, or a task it does not train on is refused (models.FAMILIES says which)."""
    _check_kind(cfg, explicit, "model")
    name = cfg.pop("family")
    family = models.FAMILIES[name]
    for key in section_keys("model"):
        if key not in family.keys and key != "init_scale":
            cfg.pop(key, None)
    if cfg["teacher"] not in family.teachers:
        trains = [n for n, e in models.FAMILIES.items() if cfg["teacher"] in e.teachers]
        key = "model.family" if "family" in explicit else "task.teacher"
        raise SpecError(f"{key}: the {name} family trains on task.teacher {', '.join(family.teachers)}; "
                        f"{cfg['teacher']} needs model.family: {' or '.join(trains)}", key=key)
    for key in family.not_measured:
        if key in explicit:
            raise SpecError(f"metrics.{key}: does not apply to the {name} family", key=f"metrics.{key}")
        cfg.pop(key)
    for key, source in family.derived.items():
        if cfg[key] is None:
            cfg[key] = cfg[source] + 1
    if name != "mlp":
        cfg["family"] = name


def _resolve_icl(cfg: dict) -> None:
    """In-context linear regression: a scalar label per sequence, Gaussian tokens, a rank-r
    subspace of regressors (teacher_rank; default input_dim, no structure)."""
    if cfg["output_dim"] != 1:
        raise SpecError(f"task.output_dim: icl_linear predicts one number per sequence (got {cfg['output_dim']})",
                        key="task.output_dim")
    if cfg["input_dist"] != "gaussian":
        raise SpecError("task.input_dist: icl_linear tokens are Gaussian", key="task.input_dist")
    if cfg["noise_on"] == "inputs":
        raise SpecError("task.noise_on: icl_linear takes label noise (labels or fresh_labels), not inputs",
                        key="task.noise_on")
    if cfg.get("fresh_data"):
        raise SpecError("task.fresh_data: not available for icl_linear yet", key="task.fresh_data")
    rank = cfg["teacher_rank"] if cfg["teacher_rank"] is not None else cfg["input_dim"]
    if rank > cfg["input_dim"]:
        raise SpecError(f"task.teacher_rank: {rank} is larger than input_dim = {cfg['input_dim']}",
                        key="task.teacher_rank")
    cfg["teacher_rank"] = rank


def _resolve_teacher(cfg: dict, explicit: set[str]) -> None:
    _check_kind(cfg, explicit, "task")
    if cfg["teacher"] == "icl_linear":
        _resolve_icl(cfg)
        return
    cfg["spectrum_c"] = cfg["spectrum_alpha"] = None
    d_min = min(cfg["input_dim"], cfg["output_dim"])
    if cfg["teacher"] == "identity":
        if cfg["input_dim"] != cfg["output_dim"]:
            raise SpecError(f"task.teacher: identity (y = x) needs output_dim = input_dim "
                            f"(got {cfg['input_dim']} and {cfg['output_dim']})", key="task.teacher")
        cfg["teacher_rank"], cfg["spectrum"] = cfg["input_dim"], None   # the identity has full rank
        return
    if cfg["teacher"] == "mlp":
        if cfg["teacher_rank"] is None:
            raise SpecError("task.teacher_rank: required for an mlp teacher (its hidden units)", key="task.teacher_rank")
        cfg["spectrum"] = None
        return
    spectrum = cfg["spectrum"]
    if spectrum is None:
        raise SpecError("task.spectrum: a linear teacher needs a spectrum (a list, or {power_law: {c, alpha}})",
                        key="task.spectrum")
    if isinstance(spectrum, dict):  # power law, resolved to min(input_dim, output_dim) values
        c, alpha = spectrum["power_law"]["c"], spectrum["power_law"]["alpha"]
        cfg["spectrum_c"], cfg["spectrum_alpha"] = c, alpha
        spectrum = [canonical(c * i ** (-alpha)) for i in range(1, d_min + 1)]
    elif len(spectrum) > d_min:
        raise SpecError(f"task.spectrum: {len(spectrum)} values but min(input_dim, output_dim) = {d_min}",
                        key="task.spectrum")
    rank = cfg["teacher_rank"] if cfg["teacher_rank"] is not None else len(spectrum)
    if rank > len(spectrum):
        raise SpecError(f"task.teacher_rank: {rank} is larger than the spectrum ({len(spectrum)} values)",
                        key="task.teacher_rank")
    cfg["teacher_rank"] = rank
    cfg["spectrum"] = [float(s) for s in spectrum[:rank]]
    if cfg["whiten"] and cfg["n_train"] < cfg["input_dim"]:
        raise SpecError(f"task.whiten: needs n_train >= input_dim ({cfg['n_train']} < {cfg['input_dim']})",
                        key="task.whiten")


def _resolve_batch(cfg: dict, explicit: set[str]) -> None:
    """Fill batch_size (an int), lr, temperature and temperature_effective; T = lr / batch_size."""
    n = cfg["n_train"]
    batch, temp = cfg["batch_size"], cfg["temperature"]
    if temp is not None:
        if cfg["hold"] == "lr":
            if "batch_size" in explicit and batch != "full":
                raise SpecError("train.batch_size: derived from train.temperature when hold is lr; "
                                "remove it or set hold: batch_size", key="train.batch_size")
            batch = n if temp == 0 else round(cfg["lr"] / temp)
            if not 1 <= batch <= n:
                raise SpecError(f"train.temperature: T={temp} with lr={cfg['lr']} needs batch size "
                                f"lr/T={cfg['lr'] / temp:.4g}, outside [1, n_train={n}]", key="train.temperature")
        else:
            if batch == "full" or temp == 0:
                raise SpecError("train.hold: hold: batch_size needs an integer train.batch_size and T > 0 "
                                "(T = 0 is full-batch GD: use hold: lr)", key="train.hold")
            cfg["lr"] = canonical(temp * batch)
    batch = n if batch == "full" else batch
    if batch > n:
        raise SpecError(f"train.batch_size: {batch} is larger than n_train={n}", key="train.batch_size")
    cfg["batch_size"] = batch
    cfg["temperature_effective"] = 0.0 if batch == n else canonical(cfg["lr"] / batch)
    if temp is None:
        cfg["temperature"] = cfg["temperature_effective"]


def _id_text(cfg: dict[str, Any]) -> str:
    payload = {k: v for k, v in cfg.items() if k != RUN_ID}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def run_id(cfg: dict[str, Any]) -> str:
    """A stable hash of a resolved config: sorted keys, shortest-repr floats, 32 hex digits."""
    return hashlib.blake2b(_id_text(cfg).encode(), digest_size=16).hexdigest()


def _resolve_fresh_data(cfg: dict) -> None:
    """fresh_data is kept only where it is on, so that every other run keeps its id."""
    if not cfg.pop("fresh_data"):
        return
    if cfg["whiten"]:
        raise SpecError("task.fresh_data: whitening makes one fixed train set exactly white; it cannot "
                        "apply to new samples at every step", key="task.fresh_data")
    cfg["fresh_data"] = True


def _resolve_record(cfg: dict) -> None:
    """train.record as a string, "every:K" or "log:N", kept only where it is on (other runs keep
    their ids; a recorded run is a new run, since its traces are part of it)."""
    record = cfg.pop("record")
    if record is None:
        return
    steps = cfg["steps"]
    if "every" in record:
        every = record["every"]
        if every > steps:
            raise SpecError(f"train.record: every {every} is more than train.steps = {steps}; "
                            "only the last step would be recorded", key="train.record")
        if steps // every > MAX_RECORDS:
            raise SpecError(f"train.record: every {every} of {steps} steps is {steps // every:,} records, "
                            f"more than {MAX_RECORDS:,}; record less often or use {{log: N}}", key="train.record")
        cfg["record"] = f"every:{every}"
    else:
        if record["log"] > steps:
            raise SpecError(f"train.record: log {record['log']} asks for more record steps than "
                            f"train.steps = {steps}", key="train.record")
        cfg["record"] = f"log:{record['log']}"


# Only configs that use torch's conventions carry these keys, so that every other run keeps its id.
TORCH_KEYS = ("weight_decay", "mse_reduction")


def _resolve_conventions(cfg: dict, explicit: set[str]) -> None:
    """torch's weight_decay (and MSELoss's mean over k outputs) to phasemap's gamma, exactly.

    torch minimises L/k_eff + (wd/2)|theta|^2 (coupled decay), with k_eff = k for mse_reduction
    mean, else 1: that is (1/k_eff)(L + (k_eff wd / 2)|theta|^2), so gamma = k_eff wd / 2, and the
    1/k_eff scale goes into the lr (SGD) or, Adam being scale-invariant, into eps (eps k_eff).
    AdamW's decay is decoupled, theta <- theta (1 - lr wd): gamma = wd, eps k_eff.
    """
    wd, reduction = cfg.pop("weight_decay"), cfg.pop("mse_reduction")
    if wd is None:
        if "mse_reduction" in explicit:
            raise SpecError("train.mse_reduction: applies only with train.weight_decay (torch's conventions); "
                            "with gamma the loss is phasemap's own", key="train.mse_reduction")
        return
    if "gamma" in explicit:
        raise SpecError("train.weight_decay: give gamma (phasemap's loss) or weight_decay (torch's), not both",
                        key="train.weight_decay")
    k = cfg["output_dim"] if reduction == "mean" else 1
    cfg["weight_decay"], cfg["mse_reduction"] = wd, reduction
    cfg["gamma"] = canonical(wd if cfg["optimizer"] == "adamw" else k * wd / 2)
    if cfg["optimizer"] == "sgd":
        cfg["lr"] = canonical(cfg["lr"] / k)      # torch's lr is recorded as torch_lr after _resolve_batch
    else:
        cfg["eps"] = canonical(cfg["eps"] * k)


def _torch_lr(cfg: dict) -> None:
    """Record the lr torch's SGD would take for this config (phasemap's lr, possibly derived from T)."""
    if "weight_decay" in cfg and cfg["optimizer"] == "sgd":
        k = cfg["output_dim"] if cfg["mse_reduction"] == "mean" else 1
        cfg["torch_lr"] = canonical(cfg["lr"] * k)


def resolve(base: dict[str, Any], point: dict[str, Any], explicit: set[str], hashed: bool = True) -> dict[str, Any]:
    """One grid point: base values, overridden by the point, derived and (unless hashed=False) hashed."""
    cfg = {**base, **point}
    try:
        _resolve_teacher(cfg, explicit)
        _resolve_family(cfg, explicit)
        _resolve_fresh_data(cfg)
        _resolve_record(cfg)
        _resolve_conventions(cfg, explicit)
        _resolve_batch(cfg, explicit)
        _torch_lr(cfg)
    except SpecError as err:
        if point:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            raise SpecError(f"{err} [at grid point {where}]", key=err.key) from None
        raise
    if hashed:
        cfg[RUN_ID] = run_id(cfg)
    return cfg


def expand(spec: SweepSpec, max_configs: int | None = DEFAULT_MAX_CONFIGS) -> list[dict[str, Any]]:
    """Every config of the sweep (the Cartesian product of its axes), resolved, in grid order.

    A sweep of more than `max_configs` configs (None: no limit) is refused before any axis is built.
    A big sweep is better held as its `Grid`, which resolves configs on demand.
    """
    grid = Grid.of(spec, max_configs)
    return grid.configs(range(grid.size))


class Grid:
    """A sweep as its grid, not its configs: config i is the i-th point of the Cartesian product of
    the axes (the last axis fastest, as itertools.product), resolved when asked for. Small (the
    base config and the axes' values) whatever the sweep's size, so it travels to every trial.

        grid = Grid.of(load_spec("sweeps/quickstart.yaml"))
        grid.size, grid.configs([0, 47]), grid.run_ids(np.arange(grid.size))
    """

    def __init__(self, base: dict[str, Any], explicit: set[str], axes: dict[str, list]):
        self.base, self.explicit = base, set(explicit)
        self.keys, self.values = list(axes), [list(v) for v in axes.values()]
        self.lengths = [len(v) for v in self.values]
        self.size = math.prod(self.lengths)
        # index = sum over axes of digit * stride
        self.strides = [math.prod(self.lengths[i + 1:]) for i in range(len(self.lengths))]

    @classmethod
    def of(cls, spec: SweepSpec, max_configs: int | None = DEFAULT_MAX_CONFIGS) -> "Grid":
        return cls(base_flat(spec), spec.explicit_keys(), axes(spec, max_configs))  # size checked first

    def point(self, index: int) -> dict[str, Any]:
        return {k: v[(index // stride) % n] for k, v, stride, n in
                zip(self.keys, self.values, self.strides, self.lengths)}

    def configs(self, indices, hashed: bool = True) -> list[dict[str, Any]]:
        """The resolved configs at these grid indices, in their order (SpecError at a bad point)."""
        return [resolve(self.base, self.point(int(i)), self.explicit, hashed) for i in indices]

    def seedless(self, indices: np.ndarray) -> np.ndarray:
        """Each index with its seed digit set to the first seed: configs that differ only in seed
        share their shape, their resolution and all of their run_id text but the seed."""
        indices = np.asarray(indices, dtype=np.int64)
        if "seed" not in self.keys:
            return indices
        i = self.keys.index("seed")
        return indices - ((indices // self.strides[i]) % self.lengths[i]) * self.strides[i]

    def run_ids(self, indices) -> np.ndarray:
        """The run_ids of the configs at `indices` (as `configs` would give them), as a numpy array
        of 32-byte ASCII hex strings (`ids_array`: 32 MB per million, no Python string each),
        about 1 µs each: each seedless config is resolved once, and its run_id text hashed from a
        shared prefix."""
        indices = np.asarray(indices, dtype=np.int64)
        if "seed" not in self.keys or not len(indices):
            return ids_array([c[RUN_ID] for c in self.configs(indices)])
        i = self.keys.index("seed")
        seeds = self.values[i]
        seed_text = [json.dumps(v).encode() for v in seeds]
        digits = (indices // self.strides[i]) % self.lengths[i]
        combos = indices - digits * self.strides[i]
        order = np.argsort(combos, kind="stable")
        digests = bytearray(16 * len(indices))
        starts = np.flatnonzero(np.r_[True, combos[order][1:] != combos[order][:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(order)]):
            members = order[a:b]
            text = _id_text(self.configs([combos[members[0]]], hashed=False)[0])     # at the first seed
            head, mark, tail = text.partition(f'"seed":{json.dumps(seeds[0])}')
            if not mark or tail[:1] not in (",", "}"):                    # not the flat text expected
                for m, cfg in zip(members.tolist(), self.configs(indices[members])):
                    digests[16 * m:16 * m + 16] = bytes.fromhex(cfg[RUN_ID])
                continue
            prefix = hashlib.blake2b((head + '"seed":').encode(), digest_size=16)
            tail_bytes = tail.encode()
            rest = [seed + tail_bytes for seed in seed_text]
            for m, d in zip(members.tolist(), digits[members].tolist()):
                h = prefix.copy()
                h.update(rest[d])
                digests[16 * m:16 * m + 16] = h.digest()
        return np.frombuffer(binascii.hexlify(digests), dtype="S32")


def ids_array(run_ids) -> np.ndarray:
    """run_ids (str) as a numpy array of 32-byte ASCII strings, the compact form plans compare."""
    return np.array([r.encode() for r in run_ids], dtype="S32")
