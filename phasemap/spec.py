"""Sweep files: the YAML schema, loading, `--set` overrides and clear errors.

A sweep file has the sections `name`, `task`, `model`, `train`, `metrics`, `grid`.
Every section is validated by a pydantic model that forbids unknown keys; any
problem becomes a `SpecError` whose message names the offending key.

    spec = load_spec("sweeps/quickstart.yaml", overrides=["train.steps=500"])
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    TypeAdapter,
    create_model,
    ValidationError,
)

from phasemap import fields
from phasemap.fields import (
    MAX_DIM,
    MAX_SAMPLES,
    Activation,
    Depth,
    Dim,
    NonNegFloat,
    PosFloat,
    Samples,
    Seed,
    Steps,
    to_float,
)
from phasemap.models import FAMILIES

class SpecError(ValueError):
    """A sweep file or override the user must fix; the message names the key."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PowerLaw(_Section):
    """Singular values s_i = c * i**(-alpha), i = 1..min(input_dim, output_dim)."""

    c: PosFloat = 1.0
    alpha: PosFloat = 1.0


class PowerLawSpectrum(_Section):
    power_law: PowerLaw


class _Task(_Section):
    """Teacher and data, the keys every teacher takes. x ~ N(0, input_scale^2) (or sin of it);
    y = teacher(x) + sigma * noise."""

    input_dim: Dim = 10
    output_dim: Dim = 1
    n_train: Samples = 300
    n_test: Samples = 500
    input_dist: Literal["gaussian", "sin_gaussian"] = "gaussian"
    input_scale: PosFloat = 1.0
    sigma: NonNegFloat = 0.0
    # labels: noise added once to the train targets; fresh_labels: new label noise at every step
    # (label-noise SGD); inputs: new input noise at every step
    noise_on: Literal["labels", "fresh_labels", "inputs"] = "labels"
    # new train samples at every step (online SGD): batch_size fresh inputs drawn from the input
    # distribution and labelled by the teacher; n_train samples still measure train_loss
    fresh_data: StrictBool = False
    data_seed: Seed | None = None


class MlpTask(_Task):
    """A random tanh (or other) MLP teacher with teacher_rank hidden units per layer."""

    teacher: Literal["mlp"] = "mlp"
    teacher_rank: Dim | None = None
    teacher_depth: Depth = 2
    teacher_activation: Activation = "tanh"
    output_scale: PosFloat = 1.0


class LinearTask(_Task):
    """y = W* x with W*'s singular values the spectrum (its first teacher_rank values)."""

    teacher: Literal["linear"]
    teacher_rank: Dim | None = None
    spectrum: Union[list[PosFloat], PowerLawSpectrum, None] = None
    whiten: StrictBool = False


class IdentityTask(_Task):
    """y = x (needs input_dim = output_dim)."""

    teacher: Literal["identity"]


class IclTask(_Task):
    """In-context linear regression sequences, for model.family: transformer."""

    teacher: Literal["icl_linear"]
    input_dim: Dim = 20
    teacher_rank: Dim | None = None
    n_ctx: Annotated[StrictInt, Field(ge=2, le=MAX_DIM)] = 50


# The task section is one of these, chosen by its `teacher` key (mlp when absent); each forbids
# the keys of the others. A new task kind adds its class here (and its module to phasemap.tasks).
TASKS: dict[str, type[_Task]] = {"mlp": MlpTask, "linear": LinearTask, "identity": IdentityTask,
                                 "icl_linear": IclTask}


def _one_of(classes: dict[str, type[_Section]], chooser: str, default: str) -> Any:
    """A section that is one of `classes`, chosen by its `chooser` key (`default` when absent)."""
    def kind(value: Any) -> Any:
        if isinstance(value, dict):
            return value.get(chooser, default)
        return getattr(value, chooser, None)
    tagged = tuple(Annotated[cls, Tag(name)] for name, cls in classes.items())
    return Annotated[Union[tagged], Discriminator(kind)]  # type: ignore[valid-type]


TaskSpec = _one_of(TASKS, "teacher", "mlp")


class _Model(_Section):
    """The student: the keys every family takes."""

    init_scale: NonNegFloat = 0.01


# The model section is one class per family, built from its registry line (models.FAMILIES):
# its own keys, typed there, and `family` (mlp when absent).
def _field(kind: str, default: Any) -> tuple[Any, Any]:
    value_type = getattr(fields, kind)
    return (value_type | None if default is None else value_type), default


MODELS: dict[str, type[_Model]] = {
    name: create_model(f"{name.title()}Model", __base__=_Model, __doc__=f"The {name} family's model section.",
                       family=(Literal[name], name),
                       **{key: _field(*typed) for key, typed in family.fields.items()})   # type: ignore[call-overload]
    for name, family in FAMILIES.items()
}

ModelSpec = _one_of(MODELS, "family", "mlp")


# The most record steps one run may take: each is a measurement of every model of a batch.
MAX_RECORDS = 10_000


class RecordEvery(_Section):
    """Record at steps K, 2K, ... and the last step."""

    every: Steps


class RecordLog(_Section):
    """Record at N steps spaced evenly in log(step) from 1 to `steps` (rounded; repeats merge)."""

    log: Annotated[StrictInt, Field(ge=2, le=MAX_RECORDS)]


def _record_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "log" if "log" in value and "every" not in value else "every" if "every" in value else None
    return "every" if isinstance(value, RecordEvery) else "log" if isinstance(value, RecordLog) else None


class TrainSpec(_Section):
    """Optimizer and the three symmetry-restoring knobs gamma, temperature and (task) sigma."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PosFloat = 0.05
    batch_size: Union[Samples, Literal["full"]] = "full"
    temperature: NonNegFloat | None = None
    hold: Literal["lr", "batch_size"] = "lr"
    gamma: NonNegFloat = 0.0
    steps: Steps = 2000
    seed: Seed = 0
    beta1: Annotated[float, BeforeValidator(to_float), Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, BeforeValidator(to_float), Field(ge=0, lt=1)] = 0.999
    eps: PosFloat = 1e-8
    # torch's conventions, as an alternative to gamma: the weight_decay torch's optimizers take,
    # and whether the squared error is summed (phasemap's loss) or averaged (torch's MSELoss) over
    # output dimensions; resolved exactly to gamma (and lr or eps), see the README
    weight_decay: NonNegFloat | None = None
    mse_reduction: Literal["sum", "mean"] = "sum"
    # metrics over training, written beside the runs (see the README's "Training dynamics")
    record: Annotated[Union[Annotated[RecordEvery, Tag("every")], Annotated[RecordLog, Tag("log")]],
                      Discriminator(_record_kind)] | None = None


class MetricsSpec(_Section):
    """Thresholds of the symmetry metrics (see phasemap.symmetry)."""

    delta_threshold: PosFloat = 0.1
    dead_threshold: NonNegFloat = 1e-3
    dead_relative: NonNegFloat = 0.05
    distinct_threshold: PosFloat = 0.1
    # odd activations: Delta between norm-neighbours is the nearer of v - w and v + w (false: the
    # plain distance); delta_relative: Delta divided by the larger norm of the pair
    sign_identify: StrictBool = True
    delta_relative: StrictBool = False
    rank_tol: PosFloat = 1e-3
    rank_atol: NonNegFloat = 1e-3


SECTIONS: dict[str, Any] = {
    "task": TaskSpec,
    "model": ModelSpec,
    "train": TrainSpec,
    "metrics": MetricsSpec,
}
# The sections that are one class per kind: the key that chooses the class, and the classes.
VARIANTS: dict[str, tuple[str, dict[str, type[_Section]]]] = {"task": ("teacher", TASKS), "model": ("family", MODELS)}
_CLASSES: dict[str, list[type[_Section]]] = {
    section: list(VARIANTS[section][1].values()) if section in VARIANTS else [cls]
    for section, cls in SECTIONS.items()
}
_ADAPTERS = {section: TypeAdapter(kind) for section, kind in SECTIONS.items()}
# Every config key lives in exactly one section, so a grid axis may name it bare; FIELDS holds
# its pydantic field (a key several teachers take has the same type in each).
FIELDS: dict[str, Any] = {
    key: field for classes in _CLASSES.values() for cls in classes for key, field in cls.model_fields.items()
}
KEY_SECTION: dict[str, str] = {
    key: section for section, classes in _CLASSES.items() for cls in classes for key in cls.model_fields
}
UNSWEEPABLE = {"spectrum", "record"}  # mapping-valued keys (sweep teacher_rank instead of spectrum)


def validate_section(section: str, data: dict) -> _Section:
    """One section's mapping, validated (task and model as the class their teacher or family names)."""
    return _ADAPTERS[section].validate_python(data)


def section_keys(section: str) -> list[str]:
    """Every key the section can hold (for task and model: under any teacher or family)."""
    return list(dict.fromkeys(k for cls in _CLASSES[section] for k in cls.model_fields))


def variant_key_message(section: str, key: str, kind: str) -> str:
    """Why `key` is refused in a task (model) section of teacher (family) `kind`: it belongs to
    another teacher (family), or to none."""
    chooser, classes = VARIANTS[section]
    owners = [name for name, cls in classes.items() if key in cls.model_fields]
    if owners:
        return f"does not apply to {chooser}: {kind} (only to {chooser}: {', '.join(owners)})"
    return f"unknown key{suggest(key, section_keys(section))}"


class SweepSpec(BaseModel):
    """A whole sweep file, validated. `grid` maps axis keys to raw axis definitions."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=120)]
    description: str = ""
    task: TaskSpec = MlpTask()
    model: ModelSpec = MODELS["mlp"]()
    train: TrainSpec = TrainSpec()
    metrics: MetricsSpec = MetricsSpec()
    grid: dict[str, Any] = {}
    source: str = Field(default="", exclude=True)

    def explicit_keys(self) -> set[str]:
        """Config keys the user set in a section or as a grid axis (not defaults)."""
        keys = {key for section in SECTIONS for key in getattr(self, section).model_fields_set}
        return keys | {axis_key(a) for a in self.grid}


def axis_key(name: str) -> str:
    """Map a grid axis name (`gamma` or `train.gamma`) to its bare config key."""
    return name.split(".", 1)[1] if "." in name else name


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"{where}:{line}: YAML syntax error: {problem}") from None


def _set_override(raw: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the raw mapping."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.steps=500")
    dotted, text = assignment.split("=", 1)
    value = _parse_yaml(text, f"--set {dotted}")
    parts = dotted.strip().split(".")
    if parts[0] == "grid":
        if len(parts) != 2:
            raise SpecError(f"--set {dotted}: a grid override is grid.AXIS=VALUES", key=dotted)
        raw.setdefault("grid", {})
        raw["grid"][parts[1]] = value
        return
    if parts[0] in SECTIONS and len(parts) == 2:
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise SpecError(f"{parts[0]}: must be a mapping", key=parts[0])
        section[parts[1]] = value
        return
    if len(parts) == 1 and parts[0] in ("name", "description"):
        raw[parts[0]] = value
        return
    if len(parts) == 1 and parts[0] in KEY_SECTION:
        raw.setdefault(KEY_SECTION[parts[0]], {})[parts[0]] = value
        return
    raise SpecError(f"--set {dotted}: unknown key{suggest(dotted, _all_dotted_keys())}", key=dotted)


def _all_dotted_keys() -> list[str]:
    return [f"{s}.{k}" for s in SECTIONS for k in section_keys(s)] + list(KEY_SECTION)


def suggest(word: str, choices) -> str:
    """A hint such as " (did you mean 'width'?)" for the closest of `choices` to `word`; "" if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Fields that accept several forms: say the forms instead of one branch's complaint.
UNION_FORMS = {
    "batch_size": f"a positive integer up to {MAX_SAMPLES:,} or 'full'",
    "spectrum": "a list of positive singular values or {power_law: {c: ..., alpha: ...}}",
    "record": f"{{every: K}} (K a positive number of steps) or {{log: N}} (N from 2 to {MAX_RECORDS:,})",
}


def _clean_loc(loc) -> list[str]:
    # Union branches add names like "list[...]" or "function-after[...]" to the location.
    return [str(p) for p in loc if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p))
            and str(p) not in ("PowerLawSpectrum", "RecordEvery", "RecordLog")]


def _variant_error(section: str, first: dict, loc: list[str], kind: str | None) -> str | None:
    """The message for an error of the task or model section's own union (None for any other)."""
    if section not in VARIANTS:
        return None
    chooser, classes = VARIANTS[section]
    if first["type"] == "union_tag_invalid":
        return f"{section}.{chooser}: unknown {chooser} {first['ctx']['tag']!r}; choose one of {', '.join(classes)}"
    if first["type"] == "union_tag_not_found":
        return f"{section}: must be a mapping of keys to values (got {first.get('input')!r})"
    if first["type"] == "extra_forbidden" and kind is not None:
        return f"{section}.{loc[-1]}: {variant_key_message(section, loc[-1], kind)}"
    return None


def format_validation_error(err: ValidationError) -> SpecError:
    """Turn pydantic's most specific error into one sentence naming the key."""
    first = max(err.errors(), key=lambda e: len(_clean_loc(e["loc"])))
    loc = _clean_loc(first["loc"])
    kind = None
    if len(loc) > 1 and loc[0] in VARIANTS and loc[1] in VARIANTS[loc[0]][1]:   # the union's tag, not a key
        kind = loc.pop(1)
    if loc[:2] == ["train", "record"] and len(loc) > 3:   # record's tag (every or log), not a key
        loc.pop(2)
    key = ".".join(loc)
    msg = first["msg"]
    variant = _variant_error(loc[0], first, loc, kind) if loc else None
    if variant is not None:
        key, msg = variant.split(": ", 1)
    elif loc[:2] == ["train", "record"] and first["type"] == "extra_forbidden":
        key, msg = "train.record", f"expected {UNION_FORMS['record']}, one key (got {loc[-1]!r} too)"
    elif first["type"] == "extra_forbidden":
        cls: Any = SweepSpec
        for part in loc[:-1]:
            cls = SECTIONS.get(part, PowerLaw if part == "power_law" else cls)
        msg = f"unknown key{suggest(loc[-1], list(getattr(cls, 'model_fields', {})))}"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif loc and loc[-1] in UNION_FORMS:
        msg = f"expected {UNION_FORMS[loc[-1]]} (got {first.get('input')!r})"
    else:
        msg = f"{reason(first)} (got {first.get('input')!r})"
    return SpecError(f"{key}: {msg}", key=key)


def value_reason(section: str, err: ValidationError) -> str:
    """Why one section with one grid value failed validation, short (the caller names key and value)."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    kind = loc[0] if section in VARIANTS and loc and loc[0] in VARIANTS[section][1] else None
    variant = _variant_error(section, first, loc, kind)
    return variant if variant is not None else reason(first)


def reason(error: dict) -> str:
    """One item of `ValidationError.errors()` as a short reason, e.g. "must be at most 100,000"."""
    if error["type"] == "less_than_equal":
        return f"must be at most {error['ctx']['le']:,}"
    return error["msg"]


def parse_spec(raw: Any, source: str = "<sweep>") -> SweepSpec:
    """Validate a raw mapping (already parsed YAML) into a SweepSpec."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a sweep file must be a YAML mapping with a `name` key")
    for section in SECTIONS:
        if raw.get(section) is None and section in raw:
            raw[section] = {}
    if raw.get("grid") is None:
        raw["grid"] = {}
    if not isinstance(raw["grid"], dict):
        raise SpecError(f"{source}: grid: must be a mapping of axis name to values", key="grid")
    try:
        spec = SweepSpec(**raw, source=source)
    except ValidationError as err:
        raise _with_source(format_validation_error(err), source) from None
    except TypeError as err:  # a non-string top-level key
        raise SpecError(f"{source}: {err}") from None
    return spec


def _with_source(err: SpecError, source: str) -> SpecError:
    return SpecError(f"{source}: {err}", key=err.key)


def _decode(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SpecError(f"{where}: not a UTF-8 text file (byte 0x{data[err.start]:02x} on line {line}); "
                        "save it as UTF-8") from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


def _read(path: Path) -> str:
    """The text of a sweep file; every way it cannot be read is one SpecError naming the file."""
    try:
        if path.is_dir():
            raise SpecError(f"{path}: is a directory, not a sweep file")
        if not path.exists():
            raise SpecError(f"{path}: no such sweep file")
        if not path.is_file():  # a FIFO or a device would block or never end
            raise SpecError(f"{path}: not a regular file")
        data = path.read_bytes()
    except OSError as err:  # permission denied, I/O error
        raise SpecError(f"{path}: cannot read the sweep file ({err.strerror or err})") from None
    return _decode(data, str(path))


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep file ("-": standard input); raise SpecError on any problem."""
    if str(path) == "-":
        path = Path("<stdin>")
        buffer = getattr(sys.stdin, "buffer", None)
        text = _decode(buffer.read(), str(path)) if buffer is not None else sys.stdin.read()
    else:
        path = Path(path)
        text = _read(path)
    raw = _parse_yaml(text, str(path))
    if raw is None:
        raise SpecError(f"{path}: the file is empty; a sweep file is a YAML mapping with a `name` key")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep file must be a YAML mapping with a `name` key")
    for assignment in overrides or []:
        _set_override(raw, assignment)
    return parse_spec(raw, str(path))
