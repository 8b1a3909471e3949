"""What the controller reads: counters per tick and latency since the phase began.

``TelemetrySource`` is the seam: ``LocalTelemetry`` reads this process's
recorder; a source merged from several workers or replicas (closed
``SecondSlot`` values) plugs in without the controller changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from proxy.routing.variant import NEW, ORIGINAL, VARIANTS, Variant
from proxy.telemetry import latency
from proxy.telemetry.recorder import Recorder
from proxy.telemetry.slots import SecondSlot
from proxy.timing.clock import Clock

Histograms = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counts for one variant since telemetry started (or was re-armed)."""

    requests: int = 0
    failures: int = 0
    slow_p99: int = 0  # slower than the phase's p99 limit
    slow_p999: int = 0

    def __sub__(self, other: Totals) -> Totals:
        return Totals(self.requests - other.requests, self.failures - other.failures,
                      self.slow_p99 - other.slow_p99, self.slow_p999 - other.slow_p999)


class TelemetrySource(Protocol):
    """Where the controller reads traffic from."""

    def totals(self, variant: Variant) -> Totals:
        """Cumulative counts now (the controller takes differences per tick)."""
        ...

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        """Count requests slower than these limits (seconds) from now on."""
        ...

    def mark(self) -> None:
        """A phase begins: latency histograms count from here."""
        ...

    def latency_histograms(self) -> Histograms:
        """Values (seconds) and since-mark counts for new and original."""
        ...

    def closed_slots(self, after: int) -> list[SecondSlot]:
        """Closed one-second slots of both variants later than second ``after``."""
        ...


class LocalTelemetry:
    """``TelemetrySource`` over this process's ``Recorder``."""

    def __init__(self, recorder: Recorder, clock: Clock) -> None:
        self.recorder = recorder
        self.clock = clock

    def totals(self, variant: Variant) -> Totals:
        r = self.recorder.variants[variant]
        return Totals(r.requests, r.failures, r.exceed_a, r.exceed_b)

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        for v in VARIANTS:
            self.recorder.variants[v].watch(
                None if p99_limit is None else int(p99_limit * 1e6),
                None if p999_limit is None else int(p999_limit * 1e6))

    def mark(self) -> None:
        self.recorder.mark(self.clock.monotonic())

    def latency_histograms(self) -> Histograms:
        """Trimmed to the range that has data."""
        now = self.clock.monotonic()
        new = latency.counts(self.recorder.variants[NEW].since_marked(now).histogram)
        orig = latency.counts(self.recorder.variants[ORIGINAL].since_marked(now).histogram)
        used = np.flatnonzero(new + orig)
        end = int(used[-1]) + 1 if used.size else 1
        values = latency.index_values_us()[:end] / 1e6
        return values, new[:end].astype(np.float64), orig[:end].astype(np.float64)

    def closed_slots(self, after: int) -> list[SecondSlot]:
        now = self.clock.monotonic()
        return [s for v in VARIANTS
                for s in self.recorder.variants[v].closed_slots(v, after, now)]
