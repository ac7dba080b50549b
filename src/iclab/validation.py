"""Field types shared by the configuration classes of every floor."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, ConfigDict


def require_finite(v: float) -> float:
    """Refuse NaN and ±inf (pydantic accepts both for ``float`` fields)."""
    if not math.isfinite(v):
        raise ValueError("must be finite")
    return v


FiniteFloat = Annotated[float, AfterValidator(require_finite)]
"""A float that must be finite: ``inf`` and ``nan`` fail with "must be finite"."""


STRICT_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
"""The pydantic settings of every iclab configuration class: unknown keys are errors, values are
immutable, no type is coerced (``true`` is not the integer 1, ``"10"`` is not a number, ``2.0``
is not an integer) and no float is infinite or NaN."""
