"""Checks of scalar arguments, shared by the step API, the routers, the generator and the trainers.

Integers: any ``numbers.Integral`` (Python or NumPy integers), never a bool (``True`` is not a
batch size). Reals: any ``numbers.Real`` but bool, finite, and returned as a Python float.
A wrong type is a ``TypeError``, a value out of range a ``ValueError``; each names the argument.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_ without numpy


def as_int(name: str, value, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``."""
    if type(value) is not int:  # the ABC check costs a microsecond, called once per decode step
        if _is_bool(value) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
        value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f">= {minimum}" if maximum is None else f"<= {maximum}" if minimum is None
                  else f"in [{minimum}, {maximum}]")
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def as_bool(name: str, value) -> bool:
    """``value``, which must be ``True`` or ``False`` (``"no"`` or ``1`` would read as a flag set by
    accident)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def as_float(name: str, value, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
             above: Optional[float] = None) -> float:
    """``value`` as a finite ``float`` with ``minimum <= value <= maximum`` and ``value > above``."""
    if type(value) is not float:
        if _is_bool(value) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {value!r}")
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value:g}")
    return value
