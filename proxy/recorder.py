"""Per-variant counters, incremented on the hot path and read when asked.

The hot path only adds to ints held in plain attributes; nothing here
allocates per request. Readers (the demo, tests, later /metrics) copy what
they need with ``snapshot()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.routing import VARIANTS, Variant

ERROR_KINDS = ("connect", "timeout", "reset", "protocol", "no_healthy", "overload")


class VariantCounters:
    """Counters for one variant."""

    __slots__ = ("bytes_in", "bytes_out", "errors", "in_flight", "requests", "status_classes")

    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        # index = status // 100 (1xx..5xx); 0 counts requests that got no response
        self.status_classes = [0, 0, 0, 0, 0, 0]
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.bytes_in = 0
        self.bytes_out = 0


@dataclass(frozen=True, slots=True)
class CountersSnapshot:
    """A copy of one variant's counters at one moment."""

    requests: int
    in_flight: int
    status_classes: tuple[int, ...]
    errors: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def responses_5xx(self) -> int:
        return self.status_classes[5]


class Recorder:
    """All variants' counters."""

    def __init__(self) -> None:
        self.variants: dict[Variant, VariantCounters] = {v: VariantCounters() for v in VARIANTS}

    def snapshot(self, variant: Variant) -> CountersSnapshot:
        """A consistent copy (single-threaded loop: nothing changes while we copy)."""
        c = self.variants[variant]
        return CountersSnapshot(c.requests, c.in_flight, tuple(c.status_classes),
                                dict(c.errors), c.bytes_in, c.bytes_out)
