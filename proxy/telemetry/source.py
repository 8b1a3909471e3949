"""What the controller reads (``TelemetrySource``) and the admin API shows (``Picture``).

Both are seams: ``LocalTelemetry`` reads this process's recorder;
``proxy.telemetry.merged.MergedTelemetry`` is the same two views merged from
several workers or replicas, and plugs in without the controller or the
admin API changing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

from proxy.routing.variant import NEW, ORIGINAL, SERIES, Series
from proxy.telemetry import latency
from proxy.telemetry.latency import WindowStats
from proxy.telemetry.outcomes import Outcomes
from proxy.telemetry.recorder import Recorder
from proxy.telemetry.report import Counters, EndpointReading, counters_of
from proxy.timing.clock import Clock

Histograms = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counts for one variant since telemetry started (or was re-armed)."""

    requests: int = 0
    failures: int = 0
    slow_p99: int = 0  # slower than the phase's p99 limit
    slow_p999: int = 0
    timed: int = -1  # requests the slow counts cover (-1: all of them, as in one process)
    mismatches: int = 0  # shadow: status other than original's for the same request

    @property
    def latency_sample(self) -> int:
        """The denominator of the slow counts."""
        return self.requests if self.timed < 0 else self.timed

    def __sub__(self, other: Totals) -> Totals:
        return Totals(self.requests - other.requests, self.failures - other.failures,
                      self.slow_p99 - other.slow_p99, self.slow_p999 - other.slow_p999,
                      self.latency_sample - other.latency_sample,
                      self.mismatches - other.mismatches)


class TelemetrySource(Protocol):
    """Where the controller reads traffic from."""

    @property
    def outcomes(self) -> Outcomes:
        """Per-user outcomes (metric gates)."""
        ...

    def totals(self, variant: Series) -> Totals:
        """Cumulative counts now (the controller takes differences per tick)."""
        ...

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        """Count requests slower than these limits (seconds) from now on."""
        ...

    def mark(self) -> None:
        """A phase begins: latency histograms count from here."""
        ...

    def latency_histograms(self, candidate: Series = NEW,
                           baseline: Series = ORIGINAL) -> Histograms:
        """Values (seconds) and since-mark counts for the candidate (new, or in a shadow
        phase the shadow) and its baseline (original, or the paired answers)."""
        ...


class Picture(Protocol):
    """The traffic the admin API shows: /status, /analysis and /metrics read only this."""

    @property
    def outcomes(self) -> Outcomes:
        """Per-user outcomes (experiments, metric gates)."""
        ...

    def requests_total(self, variant: Series) -> int:
        """Requests answered since start."""
        ...

    def in_flight(self, variant: Series) -> int:
        """Requests being served now."""
        ...

    def window(self, variant: Series, seconds: int) -> WindowStats:
        """The last ``seconds`` seconds."""
        ...

    def since_marked(self, variant: Series) -> WindowStats:
        """Since the phase began."""
        ...

    def cumulative(self, variant: Series) -> HdrHistogram:
        """Every latency since start (a copy)."""
        ...

    def counters(self, variant: Series) -> Counters:
        """Status codes, error kinds, bytes and the latency sum since start."""
        ...

    def endpoints(self) -> list[EndpointReading]:
        """Every upstream endpoint: health and connections opened."""
        ...


def histograms_of(new: HdrHistogram, orig: HdrHistogram) -> Histograms:
    """Values (seconds) and counts of two histograms, trimmed to the range with data."""
    new_counts = latency.counts(new)
    orig_counts = latency.counts(orig)
    used = np.flatnonzero(new_counts + orig_counts)
    end = int(used[-1]) + 1 if used.size else 1
    values = latency.index_values_us()[:end] / 1e6
    return values, new_counts[:end].astype(np.float64), orig_counts[:end].astype(np.float64)


class LocalTelemetry:
    """``TelemetrySource`` and ``Picture`` over this process's ``Recorder``."""

    def __init__(self, recorder: Recorder, clock: Clock,
                 endpoints: Callable[[], list[EndpointReading]] = list,
                 now: Callable[[], float] | None = None,
                 outcomes: Outcomes | None = None) -> None:
        self.recorder = recorder
        self._outcomes = outcomes or Outcomes()
        self.clock = clock
        self._endpoints = endpoints
        self._now = now or clock.monotonic  # the recorder's time base (the loop's)

    def totals(self, variant: Series) -> Totals:
        r = self.recorder.variants[variant]
        return Totals(r.requests, r.failures, r.exceed_a, r.exceed_b, -1, r.mismatches)

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        for v in SERIES:
            self.recorder.variants[v].watch(
                None if p99_limit is None else int(p99_limit * 1e6),
                None if p999_limit is None else int(p999_limit * 1e6))

    def mark(self) -> None:
        self.recorder.mark(self.clock.monotonic())

    def latency_histograms(self, candidate: Series = NEW,
                           baseline: Series = ORIGINAL) -> Histograms:
        """Trimmed to the range that has data."""
        now = self.clock.monotonic()
        v = self.recorder.variants
        return histograms_of(v[candidate].since_marked(now).histogram,
                             v[baseline].since_marked(now).histogram)

    # -- Picture -------------------------------------------------------------------
    @property
    def outcomes(self) -> Outcomes:
        return self._outcomes

    def requests_total(self, variant: Series) -> int:
        return self.recorder.variants[variant].requests

    def in_flight(self, variant: Series) -> int:
        return self.recorder.variants[variant].in_flight

    def window(self, variant: Series, seconds: int) -> WindowStats:
        return self.recorder.variants[variant].window(seconds, self._now())

    def since_marked(self, variant: Series) -> WindowStats:
        return self.recorder.variants[variant].since_marked(self._now())

    def cumulative(self, variant: Series) -> HdrHistogram:
        return self.recorder.variants[variant].cumulative_histogram()

    def counters(self, variant: Series) -> Counters:
        return counters_of(self.recorder.variants[variant])

    def endpoints(self) -> list[EndpointReading]:
        return self._endpoints()
