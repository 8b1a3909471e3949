"""Closed one-second slots as a value: the wire format between processes.

A slot that has closed (its second is over) never changes again, so it can be
copied to another process, merged there and summed exactly: counts add, and
HDR histograms of the same layout add counter by counter. The histogram
travels in HDR's standard compressed encoding (the one HdrHistogram in Java,
Go and Rust read), so the merged p99 is the one a single process would report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from proxy.routing.variant import SERIES, Series
from proxy.telemetry import latency


@dataclass(frozen=True, slots=True)
class SecondSlot:
    """What one variant did in one whole second."""

    variant: Series
    second: int  # int(monotonic seconds) of the process that recorded it
    requests: int
    errors: int
    sum_us: int
    histogram: bytes  # HDR compressed encoding, base64 (empty: no latencies)

    def latencies(self) -> HdrHistogram:
        """The slot's latency histogram (decoded; a new object each call)."""
        if not self.histogram:
            return latency.new_histogram()
        merged = latency.new_histogram()
        latency.add(merged, HdrHistogram.decode(self.histogram))
        return merged

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"variant": self.variant, "second": self.second, "requests": self.requests,
                "errors": self.errors, "sum_us": self.sum_us,
                "histogram": self.histogram.decode("ascii")}

    @staticmethod
    def from_wire(d: dict[str, Any]) -> SecondSlot:
        """The inverse of ``to_wire``; raises KeyError, TypeError or ValueError on bad data."""
        variant = d["variant"]
        if variant not in SERIES:
            raise ValueError(f"unknown variant {variant!r}")
        second, requests, errors, sum_us = (int(d[k]) for k in
                                            ("second", "requests", "errors", "sum_us"))
        if min(requests, errors, sum_us) < 0:
            raise ValueError("negative count")
        return SecondSlot(variant, second, requests, errors, sum_us,
                          str(d["histogram"]).encode("ascii"))


def encode(hist: HdrHistogram | None) -> bytes:
    """A histogram in the slot's encoding."""
    if hist is None or not hist.get_total_count():
        return b""
    encoded: bytes = hist.encode()
    return encoded


def merge(slots: Iterable[SecondSlot]) -> list[SecondSlot]:
    """Slots of the same variant and second summed into one (from several processes);
    sorted by second, then variant."""
    groups: dict[tuple[int, Series], list[SecondSlot]] = {}
    for s in slots:
        groups.setdefault((s.second, s.variant), []).append(s)
    out = []
    for (second, variant), group in sorted(groups.items()):
        if len(group) == 1:
            out.append(group[0])
            continue
        hist = latency.new_histogram()
        for s in group:
            if s.histogram:
                latency.add(hist, HdrHistogram.decode(s.histogram))
        out.append(SecondSlot(variant, second, sum(s.requests for s in group),
                              sum(s.errors for s in group), sum(s.sum_us for s in group),
                              encode(hist)))
    return out
