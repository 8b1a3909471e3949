"""The picture merged from many reporters: workers of a host, or every replica's.

``MergedTelemetry`` is both a ``TelemetrySource`` (the controller judges from
it) and a ``Picture`` (the admin API shows it). It keeps each reporter's
newest cumulative counters, so totals are exact sums however reports are
lost or repeated, and folds each closed one-second slot in once: into a ring
of merged seconds (windows), a cumulative histogram (/metrics), the
since-mark histograms (the phase's sample) and the exceedance counts of the
latency gates, read off the slot's HDR histogram (within HDR's 0.1%).

Slots arrive up to a report interval after their second closed, so merged
latency counts trail the request counters by about a second; the latency
gates therefore divide by ``Totals.timed`` (the requests those counts cover).
"""

from __future__ import annotations

import logging
import math

from hdrh.histogram import HdrHistogram

from proxy.routing.variant import NEW, ORIGINAL, SERIES, Series
from proxy.telemetry import latency
from proxy.telemetry.latency import WindowStats
from proxy.telemetry.outcomes import Outcomes
from proxy.telemetry.report import Counters, EndpointReading, Report
from proxy.telemetry.source import Histograms, Totals, histograms_of
from proxy.timing.clock import Clock

log = logging.getLogger("veer.telemetry")


class _Acc:
    """Requests, errors, latency sum and histogram of one variant over some seconds."""

    __slots__ = ("errors", "hist", "requests", "sum_us")

    def __init__(self) -> None:
        self.requests = self.errors = self.sum_us = 0
        self.hist = latency.new_histogram()

    def add(self, requests: int, errors: int, sum_us: int, hist: HdrHistogram) -> None:
        self.requests += requests
        self.errors += errors
        self.sum_us += sum_us
        latency.add(self.hist, hist)


class MergedTelemetry:
    """Counters and slots from many reporters, merged exactly."""

    def __init__(self, clock: Clock, window: int = 60, fresh: float = 5.0) -> None:
        self.clock = clock
        self.window_s = window
        self.fresh = fresh  # seconds: a reporter not heard for longer is gone (in-flight 0)
        self.latest: dict[str, Report] = {}  # every reporter's newest report
        self._newest_slot: dict[tuple[str, Series], int] = {}  # a slot sent twice counts once
        self._ring: dict[int, dict[Series, _Acc]] = {}
        self._cumulative = {v: latency.new_histogram() for v in SERIES}
        self._mark_second = 0
        self._since = {v: _Acc() for v in SERIES}
        self._limits_us: tuple[int | None, int | None] = (None, None)
        self._slow = {v: [0, 0] for v in SERIES}
        self._timed = dict.fromkeys(SERIES, 0)
        self.outcomes = Outcomes()  # every reporter's per-user outcomes, merged
        self._outcome_seq: dict[str, int] = {}
        self.bad_outcomes = 0  # reports whose outcomes could not be read

    # -- input -----------------------------------------------------------------
    def ingest(self, report: Report) -> None:
        """One report: its counters replace the reporter's last, its new slots are added
        (a report seen twice changes nothing)."""
        was = self.latest.get(report.reporter)
        if was is None or report.time >= was.time:  # a late copy never turns counts back
            self.latest[report.reporter] = report
        seq = report.seq
        if report.outcomes is not None and seq > self._outcome_seq.get(report.reporter, 0):
            try:
                self.outcomes.merge(report.outcomes)  # all or nothing
            except (ValueError, KeyError, TypeError) as exc:
                self.bad_outcomes += 1
                log.warning("a report from %s had unreadable outcomes (%s); skipped",
                            report.reporter, exc)
            self._outcome_seq[report.reporter] = seq
        a, b = self._limits_us
        for s in report.slots:
            key = (report.reporter, s.variant)
            if s.second <= self._newest_slot.get(key, -1):
                continue  # already folded in (a report delivered twice); slots go in order
            self._newest_slot[key] = s.second
            hist = s.latencies()
            ring = self._ring.setdefault(s.second, {})
            acc = ring.get(s.variant)
            if acc is None:
                acc = ring[s.variant] = _Acc()
            acc.add(s.requests, s.errors, s.sum_us, hist)
            latency.add(self._cumulative[s.variant], hist)
            if s.second >= self._mark_second:
                self._since[s.variant].add(s.requests, s.errors, s.sum_us, hist)
            self._timed[s.variant] += s.requests
            bounds = [x for x in (a, b) if x is not None]
            if bounds:
                total = hist.get_total_count()
                below = iter(latency.count_at_or_below_us(hist, bounds))
                slow = self._slow[s.variant]
                if a is not None:
                    slow[0] += total - next(below)
                if b is not None:
                    slow[1] += total - next(below)
        if report.slots:
            oldest = max(self._ring) - self.window_s - 1
            for second in [k for k in self._ring if k < oldest]:
                del self._ring[second]

    def forget(self, reporter: str) -> None:
        """Drop a reporter's counters (only for one whose counts must not stay in the sum)."""
        self.latest.pop(reporter, None)

    def _live(self) -> list[Report]:
        now = self.clock.wall()
        return [r for r in self.latest.values() if now - r.time <= self.fresh]

    # -- TelemetrySource -----------------------------------------------------------
    def totals(self, variant: Series) -> Totals:
        requests = failures = mismatches = 0
        for r in self.latest.values():
            c = r.counters.get(variant)
            if c is not None:
                requests += c.requests
                failures += c.failures
                mismatches += c.mismatches
        slow = self._slow[variant]
        return Totals(requests, failures, slow[0], slow[1], self._timed[variant], mismatches)

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        self._limits_us = (None if p99_limit is None else int(p99_limit * 1e6),
                           None if p999_limit is None else int(p999_limit * 1e6))
        self._slow = {v: [0, 0] for v in SERIES}
        self._timed = dict.fromkeys(SERIES, 0)

    def mark(self) -> None:
        self._mark_second = math.ceil(self.clock.wall())
        self._since = {v: _Acc() for v in SERIES}

    def latency_histograms(self, candidate: Series = NEW,
                           baseline: Series = ORIGINAL) -> Histograms:
        return histograms_of(self._since[candidate].hist, self._since[baseline].hist)

    # -- Picture ----------------------------------------------------------------------
    def requests_total(self, variant: Series) -> int:
        return self.totals(variant).requests

    def in_flight(self, variant: Series) -> int:
        return sum(c.in_flight for r in self._live()
                   if (c := r.counters.get(variant)) is not None)

    def window(self, variant: Series, seconds: int) -> WindowStats:
        first = int(self.clock.wall()) - seconds
        acc = _Acc()
        for second, by_variant in self._ring.items():
            got = by_variant.get(variant)
            if second >= first and got is not None:
                acc.add(got.requests, got.errors, got.sum_us, got.hist)
        return latency.summarise(acc.hist, acc.requests, acc.errors, acc.sum_us)

    def since_marked(self, variant: Series) -> WindowStats:
        s = self._since[variant]
        merged = latency.new_histogram()
        latency.add(merged, s.hist)
        return latency.summarise(merged, s.requests, s.errors, s.sum_us)

    def cumulative(self, variant: Series) -> HdrHistogram:
        merged = latency.new_histogram()
        latency.add(merged, self._cumulative[variant])
        return merged

    def counters(self, variant: Series) -> Counters:
        live = {r.reporter for r in self._live()}
        requests = failures = in_flight = bytes_in = bytes_out = sum_us = 0
        mismatches = dropped = 0
        codes: dict[int, int] = {}
        errors: dict[str, int] = {}
        for r in self.latest.values():
            c = r.counters.get(variant)
            if c is None:
                continue
            requests += c.requests
            failures += c.failures
            in_flight += c.in_flight if r.reporter in live else 0
            bytes_in += c.bytes_in
            bytes_out += c.bytes_out
            sum_us += c.latency_sum_us
            mismatches += c.mismatches
            dropped += c.dropped
            for code, n in c.codes.items():
                codes[code] = codes.get(code, 0) + n
            for kind, n in c.errors.items():
                errors[kind] = errors.get(kind, 0) + n
        return Counters(requests, failures, in_flight, bytes_in, bytes_out, sum_us, codes,
                        errors, mismatches, dropped)

    def endpoints(self) -> list[EndpointReading]:
        """Connects summed over every reporter; healthy unless a live reporter ejected it."""
        merged: dict[tuple[Series, str], EndpointReading] = {}
        live = {r.reporter for r in self._live()}
        for r in self.latest.values():
            for e in r.endpoints:
                key = (e.variant, e.label)
                was = merged.get(key)
                healthy = e.healthy or r.reporter not in live
                if was is None:
                    merged[key] = EndpointReading(e.variant, e.label, healthy, e.connects)
                else:
                    merged[key] = EndpointReading(e.variant, e.label, was.healthy and healthy,
                                                  was.connects + e.connects)
        return list(merged.values())
