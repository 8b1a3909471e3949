"""The one clock protocol: wall time for what people and files read, monotonic for intervals.

The controller, the state store and the telemetry source take a ``Clock``;
tests pass a ``ManualClock`` and move it by hand, so nothing waits on real time.
The data plane's hot path reads ``time.monotonic`` directly (the same clock as
``SystemClock.monotonic``), as a method call per request would cost more.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where time comes from."""

    def wall(self) -> float:
        """Unix seconds (events, state, anything a person reads)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back (intervals, telemetry slots)."""
        ...


class SystemClock:
    """The process's real clocks."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told (tests, simulations)."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._monotonic += seconds
