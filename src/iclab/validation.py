"""Field types shared by the configuration classes of every floor."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator


def require_finite(v: float) -> float:
    """Refuse NaN and ±inf (pydantic accepts both for ``float`` fields)."""
    if not math.isfinite(v):
        raise ValueError("must be finite")
    return v


FiniteFloat = Annotated[float, AfterValidator(require_finite)]
"""A float that must be finite: ``inf`` and ``nan`` fail with "must be finite"."""
