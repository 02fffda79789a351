"""Argument checks shared by the package: one message format for every bad integer or number."""
from __future__ import annotations

import math
import numbers


def check_int(name: str, value, minimum: int = 0, *, allow_none: bool = False) -> int | None:
    """`value` must be an integer (Python or numpy; not a bool) >= `minimum`, or None when
    `allow_none`; ValueError naming `name` otherwise. Returns the value."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_number(name: str, value, minimum: float = 0.0) -> float:
    """`value` must be a finite real number (not a bool) >= `minimum`; ValueError naming
    `name` otherwise (NaN and ±inf included). Returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}: must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)
