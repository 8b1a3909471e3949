"""A process's report: its counters now, and the one-second slots closed since the last.

Workers send one to their supervisor every tick, and every cluster member puts
its own (or its workers') on a Redis Stream. Counters are cumulative since the
reporter started, so a lost or repeated report never skews a sum: the newest
one of each reporter is the truth. Slots go out once each and add exactly
(``proxy.telemetry.slots``). Slot seconds are wall-clock seconds, so reports
from different hosts line up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.routing.variant import SERIES, VARIANTS, Series, Variant
from proxy.telemetry.outcomes import Outcomes
from proxy.telemetry.recorder import Recorder, VariantRecorder
from proxy.telemetry.slots import SecondSlot
from proxy.timing.clock import Clock


@dataclass(frozen=True, slots=True)
class Counters:
    """One variant's cumulative counters in one reporter."""

    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latency_sum_us: int = 0
    codes: dict[int, int] = field(default_factory=dict)  # nonzero only
    errors: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0  # shadow: answers whose status differed from original's
    dropped: int = 0  # shadow: copies not sent (the mirror's queue was full)

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"requests": self.requests, "failures": self.failures,
                "in_flight": self.in_flight, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "latency_sum_us": self.latency_sum_us,
                "codes": {str(k): v for k, v in self.codes.items()}, "errors": self.errors,
                "mismatches": self.mismatches, "dropped": self.dropped}

    @staticmethod
    def from_wire(d: dict[str, Any]) -> Counters:
        """The inverse of ``to_wire``; KeyError, TypeError or ValueError on bad data."""
        return Counters(int(d["requests"]), int(d["failures"]), int(d["in_flight"]),
                        int(d["bytes_in"]), int(d["bytes_out"]), int(d["latency_sum_us"]),
                        {int(k): int(v) for k, v in dict(d["codes"]).items()},
                        {str(k): int(v) for k, v in dict(d["errors"]).items()},
                        int(d.get("mismatches", 0)), int(d.get("dropped", 0)))


def counters_of(r: VariantRecorder) -> Counters:
    """A copy of one variant recorder's counters."""
    return Counters(r.requests, r.failures, r.in_flight, r.bytes_in, r.bytes_out,
                    r.latency_sum_us, {code: n for code, n in enumerate(r.codes) if n},
                    {k: n for k, n in r.errors.items() if n}, r.mismatches, r.dropped)


@dataclass(frozen=True, slots=True)
class EndpointReading:
    """One endpoint as one reporter sees it."""

    variant: Variant
    label: str
    healthy: bool
    connects: int


@dataclass(frozen=True, slots=True)
class Report:
    """What one reporter (a worker, or a single-process member) says at one moment."""

    reporter: str  # unique per process incarnation: a restarted worker is a new reporter
    time: float  # unix seconds when made
    counters: dict[Series, Counters]
    slots: list[SecondSlot] = field(default_factory=list)
    endpoints: list[EndpointReading] = field(default_factory=list)
    # Per-user outcomes recorded since the reporter's previous report (``seq`` - 1): each
    # batch is merged once.
    outcomes: dict[str, Any] | None = None
    seq: int = 0

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"reporter": self.reporter, "time": self.time, "seq": self.seq,
                "outcomes": self.outcomes,
                "counters": {v: c.to_wire() for v, c in self.counters.items()},
                "slots": [s.to_wire() for s in self.slots],
                "endpoints": [[e.variant, e.label, e.healthy, e.connects]
                              for e in self.endpoints]}

    @staticmethod
    def from_wire(d: dict[str, Any]) -> Report:
        """The inverse of ``to_wire``; KeyError, TypeError or ValueError on bad data."""
        counters = {}
        for v, c in dict(d["counters"]).items():
            if v not in SERIES:
                raise ValueError(f"unknown variant {v!r}")
            counters[v] = Counters.from_wire(c)
        endpoints = []
        for variant, label, healthy, connects in d["endpoints"]:
            if variant not in VARIANTS:
                raise ValueError(f"unknown variant {variant!r}")
            endpoints.append(EndpointReading(variant, str(label), bool(healthy), int(connects)))
        outcomes = d.get("outcomes")
        if outcomes is not None and not isinstance(outcomes, dict):
            raise ValueError("outcomes must be a mapping")
        return Report(str(d["reporter"]), float(d["time"]), counters,
                      [SecondSlot.from_wire(s) for s in d["slots"]], endpoints, outcomes,
                      int(d.get("seq", 0)))


class Reporter:
    """Makes this process's reports from its ``Recorder``: each closed slot goes out once
    (``sent`` moves on only when the caller says the report was delivered)."""

    def __init__(self, reporter: str, recorder: Recorder, clock: Clock,
                 outcomes: Outcomes | None = None) -> None:
        self.reporter = reporter
        self.recorder = recorder
        self.clock = clock
        self.outcomes = outcomes  # drained into each report
        self._seq = 0
        self._after = -1  # monotonic second of the newest slot delivered
        self._pending = -1

    def report(self, endpoints: list[EndpointReading]) -> Report:
        """Counters now and the closed slots not yet delivered."""
        now = self.clock.monotonic()
        shift = round(self.clock.wall() - now)  # monotonic -> wall seconds, same on a host
        counters = {}
        slots: list[SecondSlot] = []
        for v in SERIES:
            r = self.recorder.variants[v]
            counters[v] = counters_of(r)
            slots.extend(r.closed_slots(v, self._after, now))
        self._pending = max((s.second for s in slots), default=self._after)
        wall_slots = [SecondSlot(s.variant, s.second + shift, s.requests, s.errors, s.sum_us,
                                 s.histogram) for s in slots]
        outcomes = self.outcomes.drain() if self.outcomes is not None else None
        self._seq += 1
        return Report(self.reporter, self.clock.wall(), counters, wall_slots, endpoints,
                      outcomes, self._seq)

    def delivered(self) -> None:
        """The last report arrived: its slots are not sent again."""
        self._after = self._pending
