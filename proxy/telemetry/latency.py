"""HDR histograms of latency in microseconds (1 us .. 60 s, 3 significant digits).

hdrhistogram's percentile and mean walk the 17k counters in Python; here they
are read with numpy over the same counters (a view, no copy), giving the same
values hdrhistogram would (``get_value_at_percentile``) in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
QUANTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    """An empty latency histogram with veer's range and precision."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


# hdrhistogram's record_value finds the counter with bin() (a string per call) and four
# method calls; for veer's fixed layout (unit magnitude 0, 2048 sub-buckets) the same
# index is two integer operations. tests/unit/test_recorder.py checks it equals hdrh's.
_SUB_BUCKET_MASK = 2047  # sub_bucket_count - 1
_SUB_BUCKET_BITS = 11  # sub_bucket_half_count_magnitude + 1
_HALF_COUNT = 1024


def record(hist: HdrHistogram, value_us: int) -> None:
    """Record one latency, clamped to 1 us .. 60 s (hdrh would drop an out-of-range value)."""
    value = HIGHEST_US if value_us > HIGHEST_US else (value_us if value_us > 0 else 1)
    bucket = (value | _SUB_BUCKET_MASK).bit_length() - _SUB_BUCKET_BITS
    hist.counts[((bucket + 1) << 10) + (value >> bucket) - _HALF_COUNT] += 1
    hist.total_count += 1
    if value < hist.min_value:
        hist.min_value = value
    if value > hist.max_value:
        hist.max_value = value


@cache
def _index_values() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per counter index: the highest equivalent value (for quantiles, as HDR reports
    them) and the median equivalent value (for the mean)."""
    h = new_histogram()
    values = [h.get_value_from_index(i) for i in range(h.counts_len)]
    highest = np.array([h.get_highest_equivalent_value(v) for v in values], dtype=np.float64)
    median = np.array([h._hdr_median_equiv_value(v) for v in values], dtype=np.float64)
    return highest, median


def index_values_us() -> npt.NDArray[np.float64]:
    """The value (us) each counter index stands for, as HDR reports quantiles."""
    return _index_values()[0]


def warm_up() -> None:
    """Build the per-index tables now rather than on the first query."""
    _index_values()


def counts(hist: HdrHistogram) -> npt.NDArray[np.uint64]:
    """The histogram's counters as a numpy view."""
    return np.ctypeslib.as_array(hist.counts)


def add(dst: HdrHistogram, src: HdrHistogram) -> None:
    """``dst += src`` for two histograms of veer's layout, as ``HdrHistogram.add`` but with
    numpy over the counters: hdrh's add costs ~50 us in Python around its C loop, and a
    60 s window merges 60 of them per variant on each /metrics scrape."""
    if not src.total_count:
        return
    view = counts(dst)
    view += counts(src)
    dst.total_count += src.total_count
    if src.min_value < dst.min_value:
        dst.min_value = src.min_value
    if src.max_value > dst.max_value:
        dst.max_value = src.max_value


def quantiles_us(hist: HdrHistogram, percentiles: tuple[float, ...]) -> list[float]:
    """Values at ``percentiles`` (0..100), as ``HdrHistogram.get_value_at_percentile``."""
    total = hist.get_total_count()
    if not total:
        return [0.0] * len(percentiles)
    cum = np.cumsum(counts(hist))
    highest, _ = _index_values()
    out = []
    for p in percentiles:
        target = max(int(min(p, 100.0) * total / 100 + 0.5), 1)
        out.append(float(highest[int(np.searchsorted(cum, target, side="left"))]))
    return out


def count_at_or_below_us(hist: HdrHistogram, bounds_us: list[int]) -> list[int]:
    """Cumulative counts of values at or below each bound (within HDR precision)."""
    cum = np.cumsum(counts(hist))
    return [int(cum[min(hist.get_counts_array_index(b), len(cum) - 1)]) for b in bounds_us]


@dataclass(frozen=True, slots=True)
class WindowStats:
    """A span of traffic for one variant; latencies in seconds."""

    requests: int
    errors: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    histogram: HdrHistogram
    sum: float | None = None  # exact sum of latencies, when the source kept one

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, float | int]:
        """Plain numbers (seconds) for JSON."""
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.error_rate, "min": self.min, "mean": self.mean,
                "p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999,
                "max": self.max}


def summarise(hist: HdrHistogram, requests: int, errors: int,
              sum_us: int | None = None) -> WindowStats:
    """Counts plus quantiles read off ``hist``; the mean is exact when ``sum_us`` is given."""
    total = hist.get_total_count()
    total_s = None if sum_us is None else sum_us / 1e6
    if not total:
        return WindowStats(requests, errors, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, hist, total_s)
    if sum_us is not None:
        mean_us = sum_us / total
    else:
        _, median = _index_values()
        mean_us = float(np.dot(counts(hist).astype(np.float64), median)) / total
    p50, p90, p99, p999 = quantiles_us(hist, QUANTILES)
    return WindowStats(
        requests, errors, hist.get_min_value() / 1e6, mean_us / 1e6,
        p50 / 1e6, p90 / 1e6, p99 / 1e6, p999 / 1e6,
        hist.get_highest_equivalent_value(hist.get_max_value()) / 1e6, hist, total_s)
