"""Unit parsers: durations, sizes, percents (basis points) and rates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.units import (
    DURATION_FORM,
    PERCENT_FORM,
    RATE_FORM,
    SIZE_FORM,
    parse_duration,
    parse_percent_bp,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(("value", "seconds"), [
    ("250ms", 0.25),
    ("1ms", 0.001),
    ("30s", 30.0),
    ("1.5s", 1.5),
    ("5m", 300.0),
    ("2h", 7200.0),
    ("0.5h", 1800.0),
    ("0", 0.0),
    ("10", 10.0),
    (" 10 s ", 10.0),
    (0, 0.0),
    (5, 5.0),
    (0.25, 0.25),
])
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds, rel=1e-12, abs=0.0)


def test_parse_duration_250ms_exact() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2h") == 7200


@pytest.mark.parametrize("value", [
    True, False, -1, -0.25, "-5s", "5 parsecs", "5d", "", "   ", "abc", "s", "1.s", ".5s",
    "1e3", "5 MS", "1h30m", None, [], {}, math.nan, math.inf, -math.inf, "nan", "inf",
])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(value)
    assert str(info.value) == DURATION_FORM


@pytest.mark.parametrize(("value", "size"), [
    ("64KiB", 65536),
    ("64k", 65536),
    ("64K", 65536),
    ("1KB", 1000),
    ("10MiB", 10 * 1024**2),
    ("10M", 10 * 1024**2),
    ("10MB", 10_000_000),
    ("1GiB", 1024**3),
    ("1G", 1024**3),
    ("2GB", 2_000_000_000),
    ("512B", 512),
    ("65536", 65536),
    (" 2 MiB ", 2 * 1024**2),
    (65536, 65536),
    (0, 0),
])
def test_parse_size(value: object, size: int) -> None:
    result = parse_size(value)
    assert isinstance(result, int)
    assert result == size


@pytest.mark.parametrize("value", [
    True, False, -1, 1.5, 64.0, "1.5KiB", "-1", "64 kib", "64TB", "lots", "", "KiB", None,
    [1024], math.nan,
])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == SIZE_FORM


@pytest.mark.parametrize(("value", "bp"), [
    ("12.34", 1234),
    (12.34, 1234),
    ("1%", 100),
    ("1 %", 100),
    (" 50 % ", 5000),
    ("10", 1000),
    (10, 1000),
    (12.5, 1250),
    ("0.01", 1),
    (0.01, 1),
    ("0.10", 10),
    ("0.010", 1),  # trailing zeros are not a third decimal
    (0, 0),
    ("0%", 0),
    (100, 10000),
    ("100.00", 10000),
    ("100%", 10000),
    (99.99, 9999),
    (0.29, 29),
    (0.57, 57),
    (1.15, 115),
    ("1E+1", 1000),
])
def test_parse_percent_bp(value: object, bp: int) -> None:
    result = parse_percent_bp(value)
    assert isinstance(result, int)
    assert result == bp


@pytest.mark.parametrize("value", [
    True, False, "12.345", 12.345, "0.001", 100.01, "101", 101, -1, "-0.01", "abc", "", "%",
    "10%%", None, [10], {"new": 10}, "NaN", "sNaN", "inf", "-inf", math.nan, math.inf,
    "1e999999", "1e-5", "ten",
])
def test_parse_percent_bp_rejects(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_percent_bp(value)
    assert str(info.value) == PERCENT_FORM


@given(bp=st.integers(0, 10000))
def test_percent_round_trip_two_decimals(bp: int) -> None:
    assert parse_percent_bp(f"{bp / 100:.2f}") == bp
    assert parse_percent_bp(f"{bp / 100:.2f}%") == bp


@given(bp=st.integers(0, 10000))
def test_percent_float_round_trip(bp: int) -> None:
    # A float as YAML gives it (e.g. 12.34) maps to the bp it reads as, never one off.
    assert parse_percent_bp(bp / 100) == bp


@pytest.mark.parametrize(("value", "rate"), [
    ("1%", 0.01),
    (" 1 % ", 0.01),
    ("0.5%", 0.005),
    ("100%", 1.0),
    ("0%", 0.0),
    (0.01, 0.01),
    ("0.01", 0.01),
    (0, 0.0),
    (1, 1.0),
    ("1", 1.0),
])
def test_parse_rate(value: object, rate: float) -> None:
    result = parse_rate(value)
    assert isinstance(result, float)
    assert result == pytest.approx(rate, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("value", [
    True, False, 1.5, 2, -0.1, "-1%", "101%", "abc", "x%", "%", "", None, [0.1], "nan",
    math.nan, math.inf, "inf%",
])
def test_parse_rate_rejects(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_rate(value)
    assert str(info.value) == RATE_FORM
