"""Every column phasemap writes besides the sweep's own keys, with its type: the one list that the
runner, the metrics, the store and the readers follow.

Plain Python (types as names, mapped to Arrow by phasemap.store), so the engine side can import
it without pyarrow:

    RESULTS["n_dos"]          # "int64"
    METRICS                   # what every model family's measure() returns, key for key
"""

from __future__ import annotations

INT, FLOAT, STR, BOOL, TIME = "int64", "float64", "string", "bool", "timestamp"


def list_of(kind: str) -> str:
    return f"list<{kind}>"


# What happened to a run.
RUN: dict[str, str] = {
    "run_id": STR, "sweep": STR, "status": STR, "error": STR,
    "train_loss": FLOAT, "test_loss": FLOAT, "diverged_step": INT,
}
# The trained network's symmetry: scalar columns describe the first hidden (or attention) layer,
# layer_* columns hold one entry per layer. A family returns None where a column does not apply.
METRICS: dict[str, str] = {
    "n_distinct": INT, "n_dead": INT, "n_dos": INT, "n_dosb": INT,
    "weight_rank": INT, "rep_rank": INT, "symmetry_class": STR,
    "layer_n_distinct": list_of(INT), "layer_n_dead": list_of(INT), "layer_n_dos": list_of(INT),
    "layer_n_dosb": list_of(INT), "layer_weight_rank": list_of(INT), "layer_symmetry_class": list_of(STR),
    "layer_groups": list_of(list_of(INT)), "deltas": list_of(FLOAT), "layer_qk_rank": list_of(INT),
    "weight_svals": list_of(FLOAT),
}
# Whether the run's class had settled: the class metrics (n_distinct, or n_dos where a family has
# no neurons, and weight_rank) at SETTLE_FRACTION of training against the end (phasemap.recording).
SETTLE: dict[str, str] = {"settled": BOOL, "settle_change": FLOAT}
# Where and how fast it ran.
TIMING: dict[str, str] = {
    "train_seconds": FLOAT, "batch_seconds": FLOAT, "batch_models": INT, "backend": STR,
    "device": STR, "host": STR, "finished_at": TIME,
}
RESULTS: dict[str, str] = RUN | METRICS | SETTLE | TIMING

# The training traces (train.record): one row per (run_id, step), in the results folder's _traces/.
# The metrics are a family's trace(): the first layer's (or attention layer's) and weight_rank.
TRACE_METRICS: dict[str, str] = {
    "deltas": list_of(FLOAT), "n_dos": INT, "n_distinct": INT, "weight_rank": INT, "layer_n_dos": list_of(INT),
}
TRACE: dict[str, str] = {"run_id": STR, "step": INT, "train_loss": FLOAT, "test_loss": FLOAT} | TRACE_METRICS

# Config keys that the resolution step adds beside the sweep file's sections, and config keys
# whose type is not a plain int/float/bool/str (the others take their type from the spec).
DERIVED: dict[str, str] = {
    "batch_size": INT, "temperature": FLOAT, "temperature_effective": FLOAT,
    "spectrum": list_of(FLOAT), "spectrum_c": FLOAT, "spectrum_alpha": FLOAT, "torch_lr": FLOAT,
    "record": STR,
}
# Config keys the metrics read, per model (a family may lack some: the transformer has no neurons).
THRESHOLDS = ("delta_threshold", "dead_threshold", "dead_relative", "distinct_threshold",
              "rank_tol", "rank_atol", "sign_identify", "delta_relative")
# Columns that are never a sweep's axis: results, and config values computed from other keys.
NOT_AXES = set(RESULTS) | {"temperature_effective", "spectrum_c", "spectrum_alpha"}
