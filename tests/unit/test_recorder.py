"""Recorder: exact quantiles (within HDR precision), slot rotation on a fake clock, merging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.telemetry import latency
from proxy.telemetry.recorder import VariantRecorder

PRECISION = 0.001  # 3 significant digits

latencies_us = st.lists(st.integers(min_value=1, max_value=60_000_000), min_size=1,
                        max_size=400)


def _hdr_rank_value(values: list[int], p: float) -> float:
    """HDR's percentile: the value of rank max(round-half-up(p% of n), 1) in sorted order."""
    rank = max(int(p * len(values) / 100 + 0.5), 1)
    return float(np.sort(np.array(values))[rank - 1])


@settings(max_examples=60, deadline=None)
@given(latencies_us)
def test_quantiles_are_the_ranked_values_within_hdr_precision(values: list[int]) -> None:
    rec = VariantRecorder(ring_seconds=10)
    for v in values:
        rec.record(200, v, False, now=100.5)
    stats = rec.window(10, now=100.9)
    assert stats.requests == len(values)
    for got, p in ((stats.p50, 50), (stats.p90, 90), (stats.p99, 99), (stats.p999, 99.9)):
        want = _hdr_rank_value(values, p) / 1e6
        # HDR reports the top of the value's bucket: never below it, at most 0.1% above.
        assert want <= got <= want * (1 + PRECISION) + 1e-6, (p, got, want)
    assert stats.min == pytest.approx(min(values) / 1e6, rel=PRECISION)
    assert stats.max == pytest.approx(max(values) / 1e6, rel=PRECISION, abs=1e-6)
    assert stats.mean == pytest.approx(sum(values) / len(values) / 1e6, rel=PRECISION)


def test_quantiles_equal_numpy_within_hdr_precision() -> None:
    """10,000 lognormal latencies against numpy's sorted values at HDR's ranks."""
    rng = np.random.default_rng(11)
    values = [int(v) for v in (rng.lognormal(7.5, 1.2, 10_000) + 1).astype(int)]
    rec = VariantRecorder(ring_seconds=10)
    for v in values:
        rec.record(200, v, False, now=5.0)
    stats = rec.window(10, now=5.5)
    for got, p in ((stats.p50, 50), (stats.p90, 90), (stats.p99, 99), (stats.p999, 99.9)):
        assert got == pytest.approx(_hdr_rank_value(values, p) / 1e6, rel=PRECISION), p


def test_quantiles_agree_with_hdrhistogram_itself() -> None:
    rng = np.random.default_rng(7)
    hist = latency.new_histogram()
    for v in rng.lognormal(8, 1.5, 20_000).astype(int) + 1:
        hist.record_value(int(v))
    ours = latency.quantiles_us(hist, (50.0, 90.0, 99.0, 99.9, 100.0))
    theirs = [hist.get_value_at_percentile(p) for p in (50.0, 90.0, 99.0, 99.9, 100.0)]
    assert ours == theirs


def test_window_expires_as_slots_rotate() -> None:
    rec = VariantRecorder(ring_seconds=10)
    for t in range(20):  # one request a second, latency = 1000 + t us
        rec.record(500 if t % 2 else 200, 1000 + t, False, now=1000 + t + 0.5)
    w = rec.window(5, now=1019.7)  # seconds 1015..1019
    assert (w.requests, w.errors) == (5, 3)
    assert w.min == pytest.approx(1015e-6, rel=PRECISION)
    assert rec.window(1, now=1019.7).requests == 1
    assert rec.window(10, now=1030.0).requests == 0  # all of it is older than the window
    assert rec.requests == 20  # totals never expire


def test_merging_slots_is_exact() -> None:
    rec = VariantRecorder(ring_seconds=60)
    single = latency.new_histogram()
    rng = np.random.default_rng(3)
    for i, v in enumerate(rng.integers(1, 5_000_000, 3000)):
        rec.record(200, int(v), False, now=500 + i / 100)  # 30 seconds of slots
        single.record_value(int(v))
    merged = rec.window(60, now=530.0).histogram
    assert np.array_equal(latency.counts(merged), latency.counts(single))
    assert merged.get_total_count() == 3000


def test_since_mark_and_cumulative_outlive_the_ring() -> None:
    rec = VariantRecorder(ring_seconds=5)
    for t in range(10):  # seconds 100..109, before the phase began
        rec.record(200, 2000, t == 3, now=100 + t + 0.1)
    rec.record(200, 9000, True, now=110.1)  # same second as the mark, but before it
    rec.mark(now=110.2)  # "since" starts at the next whole second: 111
    for t in range(10, 30):  # seconds 110..129: four times the ring
        rec.record(200, 2000, False, now=100 + t + 0.3)
        rec.record(200, 4000, t == 20, now=100 + t + 0.6)
    since = rec.since_marked(now=129.9)
    assert (since.requests, since.errors) == (38, 1)  # seconds 111..129
    assert since.p50 == pytest.approx(2000e-6, rel=PRECISION)
    assert since.max == pytest.approx(4000e-6, rel=PRECISION)
    assert rec.cumulative_histogram().get_total_count() == 51  # marks never lose samples
    assert rec.requests == 51
    assert rec.latency_sum_us == 10 * 2000 + 9000 + 20 * 6000


def test_failures_after_response_start_count_as_errors() -> None:
    rec = VariantRecorder(ring_seconds=5)
    rec.record(200, 10, True, now=1.0)   # aborted mid-body
    rec.record(404, 10, False, now=1.0)  # the client's error, not the service's
    rec.record(503, 10, False, now=1.0)
    rec.record(0, 10, False, now=1.0)    # client left before an answer
    w = rec.window(5, now=1.5)
    assert (w.requests, w.errors) == (4, 2)
    assert rec.codes[200] == rec.codes[404] == rec.codes[503] == rec.codes[0] == 1


def test_window_longer_than_ring_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds the ring"):
        VariantRecorder(ring_seconds=5).window(6, now=0.0)


def test_bucket_counts() -> None:
    hist = latency.new_histogram()
    for v in (100, 900, 1000, 2000, 50_000):
        hist.record_value(v)
    assert latency.count_at_or_below_us(hist, [500, 1000, 10_000, 60_000_000]) == [1, 3, 4, 5]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=latency.HIGHEST_US), max_size=50))
def test_fast_record_equals_hdrhistogram(values: list[int]) -> None:
    ours, theirs = latency.new_histogram(), latency.new_histogram()
    for v in values:
        latency.record(ours, v)
        assert theirs.record_value(v)
    assert np.array_equal(latency.counts(ours), latency.counts(theirs))
    assert ours.get_total_count() == theirs.get_total_count()
    assert (ours.get_min_value(), ours.get_max_value()) == \
        (theirs.get_min_value(), theirs.get_max_value())


def test_out_of_range_latency_is_clamped_not_dropped() -> None:
    hist = latency.new_histogram()
    latency.record(hist, 0)
    latency.record(hist, 10 * latency.HIGHEST_US)
    assert hist.get_total_count() == 2
    reference = latency.new_histogram()
    reference.record_value(1)
    reference.record_value(latency.HIGHEST_US)
    assert (hist.get_min_value(), hist.get_max_value()) == \
        (reference.get_min_value(), reference.get_max_value())


@given(st.lists(st.integers(min_value=1, max_value=latency.HIGHEST_US), max_size=40),
       st.lists(st.integers(min_value=1, max_value=latency.HIGHEST_US), max_size=40))
def test_numpy_add_equals_recording_everything_in_one(left: list[int],
                                                      right: list[int]) -> None:
    # (hdrh's own add is not the reference: adding an empty histogram sets its min to 0.)
    merged, src, whole = (latency.new_histogram() for _ in range(3))
    for v in left:
        latency.record(merged, v)
        latency.record(whole, v)
    for v in right:
        latency.record(src, v)
        latency.record(whole, v)
    latency.add(merged, src)
    assert np.array_equal(latency.counts(merged), latency.counts(whole))
    assert merged.get_total_count() == whole.get_total_count()
    assert merged.get_min_value() == whole.get_min_value()
    assert merged.get_max_value() == whole.get_max_value()
    assert latency.quantiles_us(merged, latency.QUANTILES) == \
        latency.quantiles_us(whole, latency.QUANTILES)
    if right:  # where hdrh's add is right, it agrees
        theirs = latency.new_histogram()
        for v in left:
            latency.record(theirs, v)
        theirs.add(src)
        assert np.array_equal(latency.counts(theirs), latency.counts(merged))
        assert theirs.get_max_value() == merged.get_max_value()
