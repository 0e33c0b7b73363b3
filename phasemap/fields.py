"""The value types of sweep-file keys (pydantic annotations), with their bounds.

Plain pydantic, no torch: the sweep-file schema (`spec`) and the model families' registry lines
(`models.FAMILIES`, which declare each family's own keys) both use them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, StrictBool, StrictInt

Activation = Literal["tanh", "relu", "swish", "sin", "quadratic", "linear"]
ACTIVATIONS = get_args(Activation)


def to_float(value: Any) -> Any:
    """A number for a float key; a ValueError (pydantic's message) for anything else."""
    # PyYAML reads `1e-3` (no dot) as a string: accept numeric strings, refuse booleans.
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return value


PosFloat = Annotated[float, BeforeValidator(to_float), Field(gt=0)]
NonNegFloat = Annotated[float, BeforeValidator(to_float), Field(ge=0)]

# Upper bounds on integer keys. A value past them cannot be meant and would hang a run or exhaust
# memory (a width of 10^7 is a 10^7 x input_dim matrix per model), so it is refused with the key
# named. Each is generous for research: raise it here if a real experiment needs more.
MAX_DIM = 100_000               # input_dim, output_dim, width, teacher_rank
MAX_DEPTH = 100                 # weight layers of the student and of an mlp teacher
MAX_SAMPLES = 100_000_000       # n_train, n_test, batch_size
MAX_STEPS = 1_000_000_000       # optimizer steps of one run
MAX_SEED = 2**63 - 1            # seeds are stored in int64 Parquet columns

Dim = Annotated[StrictInt, Field(ge=1, le=MAX_DIM)]
Depth = Annotated[StrictInt, Field(ge=1, le=MAX_DEPTH)]
Samples = Annotated[StrictInt, Field(ge=1, le=MAX_SAMPLES)]
Steps = Annotated[StrictInt, Field(ge=1, le=MAX_STEPS)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Bool = StrictBool
