"""Per-variant counters and HDR latency histograms in a ring of 1-second slots.

The hot path (``VariantRecorder.record``) adds to ints and records one value
into the current slot's histogram; nothing else. Closed slots are folded
into a cumulative histogram (for Prometheus) and a since-mark histogram (for
"since the phase began") once per second, adding counters with numpy.
Windows are merged only when someone asks (``window``, ``since``), so the
numbers are exact to HDR precision (3 significant digits), not sampled.

Time is passed in (loop time, seconds), so tests drive it with a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from proxy.routing.variant import SERIES, Series
from proxy.telemetry import latency
from proxy.telemetry.latency import WindowStats
from proxy.telemetry.slots import SecondSlot, encode
from proxy.wire.errors import COUNTED

NO_THRESHOLD = 1 << 62
RING_SECONDS = 60  # the longest window a query may ask for (each slot: up to 139 KiB)


class Slot:
    """One second of one variant: counts and a latency histogram."""

    __slots__ = ("errors", "hist", "requests", "second", "sum_us")

    def __init__(self) -> None:
        self.second = -1
        self.requests = 0
        self.sum_us = 0
        self.errors = 0  # 5xx answers and upstream failures after the response began
        self.hist: HdrHistogram | None = None

    def reset(self, second: int) -> None:
        self.second = second
        self.requests = 0
        self.sum_us = 0
        self.errors = 0
        if self.hist is not None and self.hist.get_total_count():
            self.hist.reset()


class VariantRecorder:
    """Everything recorded for one variant."""

    __slots__ = (
        "_mark_errors",
        "_mark_requests",
        "_mark_second",
        "_ring",
        "bytes_in",
        "bytes_out",
        "codes",
        "cumulative",
        "current",
        "dropped",
        "errors",
        "exceed_a",
        "exceed_b",
        "failures",
        "in_flight",
        "latency_sum_us",
        "mismatches",
        "requests",
        "since_mark",
        "threshold_a",
        "threshold_b",
    )

    def __init__(self, ring_seconds: int = RING_SECONDS) -> None:
        self._ring = [Slot() for _ in range(ring_seconds + 1)]
        self.current = self._ring[0]
        self.cumulative = latency.new_histogram()  # closed slots since start
        self.since_mark = latency.new_histogram()  # closed slots since mark()
        self._mark_second = 0
        self._mark_requests = 0  # closed slots since the mark
        self._mark_errors = 0
        self.requests = 0
        self.in_flight = 0
        self.codes = [0] * 600  # responses by status code; 0 = no response
        self.errors = dict.fromkeys(COUNTED, 0)
        self.bytes_in = 0
        self.bytes_out = 0
        self.latency_sum_us = 0
        self.failures = 0  # 5xx answers and upstream failures after the response began
        self.mismatches = 0  # shadow only: a status other than original's for the request
        self.dropped = 0  # shadow only: copies not sent, the mirror's queue being full
        # Exceedance counts for the controller's latency gates (p99/p999 limits, in us):
        # "p99 < L" holds exactly when under 1% of requests are slower than L.
        self.threshold_a = self.threshold_b = NO_THRESHOLD
        self.exceed_a = self.exceed_b = 0

    # -- hot path -------------------------------------------------------------
    def record(self, status: int, latency_us: int, failed: bool, now: float) -> None:
        """One finished request: its status (0 = none), latency and whether it failed."""
        slot = self.current
        if slot.second != int(now):
            slot = self._rotate(int(now))
        self.requests += 1
        self.codes[status] += 1
        slot.requests += 1
        if failed or status >= 500:
            slot.errors += 1
            self.failures += 1
        if latency_us > self.threshold_a:
            self.exceed_a += 1
        if latency_us > self.threshold_b:
            self.exceed_b += 1
        self.latency_sum_us += latency_us
        slot.sum_us += latency_us
        hist = slot.hist
        if hist is None:
            hist = slot.hist = latency.new_histogram()
        latency.record(hist, latency_us)

    # -- slots ----------------------------------------------------------------
    def _rotate(self, second: int) -> Slot:
        old = self.current
        if old.second >= 0 and old.hist is not None and old.hist.get_total_count():
            latency.add(self.cumulative, old.hist)
            if old.second >= self._mark_second:
                latency.add(self.since_mark, old.hist)
        if old.second >= self._mark_second:
            self._mark_requests += old.requests
            self._mark_errors += old.errors
        slot = self._ring[second % len(self._ring)]
        slot.reset(second)
        self.current = slot
        return slot

    def watch(self, threshold_a_us: int | None, threshold_b_us: int | None) -> None:
        """Count requests slower than these (None: not counted); counts restart at 0."""
        self.threshold_a = NO_THRESHOLD if threshold_a_us is None else threshold_a_us
        self.threshold_b = NO_THRESHOLD if threshold_b_us is None else threshold_b_us
        self.exceed_a = self.exceed_b = 0

    def mark(self, now: float) -> None:
        """Start a new "since" period (e.g. a rollout phase began) at the first whole
        second at or after ``now``: slots are whole seconds, and a part-second before the
        mark must not count in it (nor be dropped from anything else)."""
        self._mark_second = math.ceil(now)
        self._mark_requests = self._mark_errors = 0
        self.since_mark.reset()

    def _slots_since(self, first_second: int, now: float) -> list[Slot]:
        latest = int(now)
        return [s for s in self._ring if first_second <= s.second <= latest and s.requests]

    def window(self, seconds: float, now: float) -> WindowStats:
        """The last ``seconds`` seconds (whole slots, the current one included)."""
        if seconds > len(self._ring) - 1:
            raise ValueError(f"window of {seconds}s exceeds the ring of {len(self._ring) - 1}s")
        return _stats(self._slots_since(int(now) - int(seconds) + 1, now))

    def since_marked(self, now: float) -> WindowStats:
        """Everything since ``mark()``: the folded closed slots plus the current one."""
        merged = latency.new_histogram()
        latency.add(merged, self.since_mark)
        requests, errors = self._mark_requests, self._mark_errors
        cur = self.current
        if self._mark_second <= cur.second <= int(now):
            requests += cur.requests
            errors += cur.errors
            if cur.hist is not None:
                latency.add(merged, cur.hist)
        return latency.summarise(merged, requests, errors)

    def closed_slots(self, variant: Series, after: int, now: float) -> list[SecondSlot]:
        """Whole seconds later than ``after`` that are over by ``now``, as values another
        process can merge (``proxy.telemetry.slots``); oldest first."""
        current = int(now)
        return [SecondSlot(variant, s.second, s.requests, s.errors, s.sum_us, encode(s.hist))
                for s in sorted(self._ring, key=lambda s: s.second)
                if after < s.second < current and s.requests]

    def cumulative_histogram(self) -> HdrHistogram:
        """All latencies since start (closed slots plus the current one)."""
        merged = latency.new_histogram()
        latency.add(merged, self.cumulative)
        if self.current.hist is not None:
            latency.add(merged, self.current.hist)
        return merged


def _stats(slots: list[Slot]) -> WindowStats:
    merged = latency.new_histogram()
    requests = errors = sum_us = 0
    for s in slots:
        requests += s.requests
        errors += s.errors
        sum_us += s.sum_us
        if s.hist is not None:
            latency.add(merged, s.hist)
    return latency.summarise(merged, requests, errors, sum_us)


@dataclass(frozen=True, slots=True)
class CountersSnapshot:
    """A copy of one variant's counters at one moment."""

    requests: int
    in_flight: int
    codes: tuple[int, ...]
    errors: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def status_classes(self) -> tuple[int, ...]:
        """Responses by class: index 1..5 for 1xx..5xx, 0 for no response."""
        classes = [self.codes[0], 0, 0, 0, 0, 0]
        for code in range(100, 600):
            classes[code // 100] += self.codes[code]
        return tuple(classes)


class Recorder:
    """All variants' recorders."""

    def __init__(self, ring_seconds: int = RING_SECONDS) -> None:
        self.variants: dict[Series, VariantRecorder] = {
            v: VariantRecorder(ring_seconds) for v in SERIES}

    def mark(self, now: float) -> None:
        """Start a new "since" period for every variant."""
        for v in self.variants.values():
            v.mark(now)

    def snapshot(self, variant: Series) -> CountersSnapshot:
        """A consistent copy (one event loop: nothing changes while we copy)."""
        c = self.variants[variant]
        return CountersSnapshot(c.requests, c.in_flight, tuple(c.codes), dict(c.errors),
                                c.bytes_in, c.bytes_out)
