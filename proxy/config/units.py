"""Parsers for the human units used in config files: durations, sizes, percents.

Each returns the value or raises ``ValueError`` with the expected form, so the
config loader can name the key that held the bad value.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_SCALE = {
    None: 1, "B": 1,
    "KiB": 1024, "k": 1024, "K": 1024, "KB": 1000,
    "MiB": 1024**2, "M": 1024**2, "MB": 1000**2,
    "GiB": 1024**3, "G": 1024**3, "GB": 1000**3,
}

DURATION_FORM = "a duration such as 250ms, 30s, 5m or 2h (or a number of seconds)"
SIZE_FORM = "a size such as 65536, 64KiB, 10MiB or 1GiB"
PERCENT_FORM = "a percent 0..100 with at most two decimals, e.g. 10, 12.5 or '1%'"
RATE_FORM = "a rate as a percent ('1%') or a fraction 0..1 (0.01)"


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``30s``, ``5m``, ``2h`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(DURATION_FORM)
    seconds = math.nan
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError(DURATION_FORM) from None
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _DURATION_SCALE[m.group(2)]
    # Not finite: NaN, inf, or a string of digits too long for a float.
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(DURATION_FORM)
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``65536``, ``64KiB``, ``10MiB``, ``1GiB`` (binary) or ``10MB`` (decimal)."""
    if isinstance(value, bool):
        raise ValueError(SIZE_FORM)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(SIZE_FORM)
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_SCALE[m.group(2)]
    raise ValueError(SIZE_FORM)


def parse_percent_bp(value: object) -> int:
    """Basis points (0..10000) from a percent with at most two decimals.

    Decimal arithmetic so that ``12.34`` is exactly 1234 bp, not 1233.
    """
    if isinstance(value, bool):
        raise ValueError(PERCENT_FORM)
    text = value.strip().removesuffix("%").strip() if isinstance(value, str) else str(value)
    try:
        pct = Decimal(text)
        bp = pct * 100  # sNaN or a huge exponent trap here
    except ArithmeticError:  # InvalidOperation, Overflow
        raise ValueError(PERCENT_FORM) from None
    if not pct.is_finite() or bp != bp.to_integral_value() or not 0 <= bp <= 10000:
        raise ValueError(PERCENT_FORM)
    return int(bp)


def parse_rate(value: object) -> float:
    """A fraction 0..1 from ``'1%'`` or ``0.01``."""
    if isinstance(value, bool):
        raise ValueError(RATE_FORM)
    try:
        if isinstance(value, str) and value.strip().endswith("%"):
            rate = float(value.strip()[:-1]) / 100.0
        elif isinstance(value, int | float | str):
            rate = float(value)
        else:
            raise ValueError(RATE_FORM)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise ValueError(RATE_FORM) from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(RATE_FORM)
    return rate


def positive_duration(value: object) -> float:
    """A duration that must be more than zero (a tick, an interval, a timeout)."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError
    return seconds
