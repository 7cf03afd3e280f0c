"""The one check of every number a guard is configured with.

Guards validate their numbers when they are built (at decoration time), never
on the first call, and every refusal names the guard and the parameter:

* a value of the wrong type (a ``bool`` included: ``True`` is an ``int`` to
  Python but never a count or a duration) is a `TypeError`;
* NaN, infinities and values out of range are a `ValueError`. An infinite
  limit is refused rather than taken as "no limit": each parameter has its
  own way to say that (``None``, or leaving it out).
"""

from __future__ import annotations

import datetime as dt
import math
import numbers

from decimal import Decimal
from typing import overload


def _bound(minimum: float, exclusive: bool, maximum: float | None) -> str:
    if maximum is None:
        return f"{'>' if exclusive else '>='} {minimum:g}"
    return f"in {'(' if exclusive else '['}{minimum:g}, {maximum:g}]"


@overload
def number(
    guard: str, name: str, value: object, *, integer: bool = ..., minimum: float = ...,
    exclusive: bool = ..., maximum: float | None = ..., kind: str = ..., optional: bool, real: bool = ...,
) -> float | None: ...
@overload
def number(
    guard: str, name: str, value: object, *, integer: bool = ..., minimum: float = ...,
    exclusive: bool = ..., maximum: float | None = ..., kind: str = ..., real: bool = ...,
) -> float: ...
def number(
    guard: str,
    name: str,
    value: object,
    *,
    integer: bool = False,
    minimum: float = 0.0,
    exclusive: bool = True,
    maximum: float | None = None,
    kind: str = "",
    optional: bool = False,
    real: bool = False,
) -> float | None:
    """*value* checked as ``guard(name=...)``: a finite number above *minimum* (and at most *maximum*).

    *integer* asks for an ``int``; *exclusive* False allows *minimum* itself;
    *optional* lets None through; *kind* names what is expected in the
    `TypeError` ("a number of seconds or a timedelta"); *real* also takes
    any other `numbers.Real` (``Fraction``, a numpy number) and a ``Decimal``
    (not a `numbers.Real` to Python), as a ``float``. Returns the value (an
    ``int`` stays an ``int``).
    """
    if value is None and optional:
        return None
    if real and not isinstance(value, (int, float)) and isinstance(value, (numbers.Real, Decimal)):  # bool: an int
        try:
            value = float(value)
        except (ValueError, OverflowError):  # Decimal('sNaN'), a Fraction beyond a float
            value = math.nan
    bound = _bound(minimum, exclusive, maximum)
    what = kind or ("an int" if integer else "a number")
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        msg = f"{guard}({name}=...) must be {what} {bound}, got {value!r}"
        raise TypeError(msg)
    assert isinstance(value, (int, float))  # noqa: S101 - narrowed above, for the type checker
    try:
        finite = integer or math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        msg = f"{guard}({name}=...) must be finite and {bound}, got {value!r}"
        raise ValueError(msg)
    if value < minimum or (exclusive and value == minimum) or (maximum is not None and value > maximum):
        msg = f"{guard}({name}=...) must be {'an int ' if integer else ''}{bound}, got {value!r}"
        raise ValueError(msg)
    return value


@overload
def seconds(guard: str, name: str, value: object, *, optional: bool) -> float | None: ...
@overload
def seconds(guard: str, name: str, value: object) -> float: ...
def seconds(guard: str, name: str, value: object, *, optional: bool = False) -> float | None:
    """A duration parameter (seconds or a timedelta): finite and > 0, or the error names it.

    ``retry(initial=...) must be > 0, got -1``.
    """
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    checked = number(guard, name, value, kind="a number of seconds or a timedelta", optional=optional)
    return None if checked is None else float(checked)
