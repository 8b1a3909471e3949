"""The merged picture: traffic split over many reporters adds up to what one process sees."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routing.live import LiveState
from proxy.routing.variant import NEW, ORIGINAL, VARIANTS, Variant
from proxy.telemetry.merged import MergedTelemetry
from proxy.telemetry.recorder import Recorder
from proxy.telemetry.report import EndpointReading, Report, Reporter
from proxy.telemetry.source import LocalTelemetry
from proxy.timing.clock import ManualClock

# (reporter index, variant, latency us, failed, second offset)
REQUEST = st.tuples(st.integers(0, 3), st.sampled_from(VARIANTS), st.integers(50, 2_000_000),
                    st.booleans(), st.integers(0, 4))


def _split(requests: list[tuple[int, Variant, int, bool, int]], reporters: int,
           clock: ManualClock) -> tuple[Recorder, list[Recorder]]:
    """One recorder with everything, and ``reporters`` recorders with a share each."""
    whole = Recorder()
    parts = [Recorder() for _ in range(reporters)]
    start = clock.monotonic()
    for index, variant, latency_us, failed, offset in sorted(requests, key=lambda r: r[4]):
        now = start + offset + 0.5
        for rec in (whole, parts[index % reporters]):
            rec.variants[variant].record(500 if failed else 200, latency_us, failed, now)
    return whole, parts


@settings(max_examples=60, deadline=None)
@given(st.lists(REQUEST, min_size=1, max_size=80), st.integers(1, 4))
def test_split_traffic_merges_to_exactly_what_one_process_records(
        requests: list[tuple[int, Variant, int, bool, int]], reporters: int) -> None:
    clock = ManualClock()
    merged = MergedTelemetry(clock)
    merged.mark()  # the phase begins before the first request
    whole, parts = _split(requests, reporters, clock)
    clock.advance(6)  # every slot is closed
    for i, rec in enumerate(parts):
        report = Reporter(f"r{i}", rec, clock).report([])
        # Through JSON, as they travel: the wire format loses nothing.
        merged.ingest(Report.from_wire(json.loads(json.dumps(report.to_wire()))))
    local = LocalTelemetry(whole, clock)
    for v in VARIANTS:
        assert merged.totals(v).requests == local.totals(v).requests
        assert merged.totals(v).failures == local.totals(v).failures
        a, b = merged.since_marked(v), whole.variants[v].window(10, clock.monotonic())
        assert (a.requests, a.errors, a.p50, a.p99, a.p999, a.max) == (
            b.requests, b.errors, b.p50, b.p99, b.p999, b.max)
        assert merged.cumulative(v).get_total_count() == \
            whole.variants[v].cumulative_histogram().get_total_count()
        assert merged.counters(v).codes == local.counters(v).codes


def test_a_report_seen_twice_or_late_changes_nothing() -> None:
    clock = ManualClock()
    merged = MergedTelemetry(clock)
    merged.mark()
    rec = Recorder()
    rec.variants[NEW].record(200, 1000, False, clock.monotonic())
    clock.advance(2)
    reporter = Reporter("w0", rec, clock)
    first = reporter.report([])
    reporter.delivered()
    rec.variants[NEW].record(200, 1000, False, clock.monotonic())
    clock.advance(2)
    second = reporter.report([])
    for report in (first, second, first, second):  # repeated, and one arriving late
        merged.ingest(report)
    assert merged.totals(NEW).requests == 2
    assert merged.since_marked(NEW).requests == 2  # each slot folded in once


def test_latency_gates_count_from_the_slots_and_say_what_they_cover() -> None:
    clock = ManualClock()
    rec = Recorder()
    merged = MergedTelemetry(clock)
    merged.watch_latency(0.1, None)
    for i in range(100):
        rec.variants[NEW].record(200, 300_000 if i < 7 else 10_000, False, clock.monotonic())
    # Counters arrive before the slot closes: the slow count covers none of them yet.
    merged.ingest(Reporter("w0", rec, clock).report([]))
    t = merged.totals(NEW)
    assert (t.requests, t.slow_p99, t.latency_sample) == (100, 0, 0)
    clock.advance(1.5)
    merged.ingest(Reporter("w0", rec, clock).report([]))
    t = merged.totals(NEW)
    assert (t.requests, t.slow_p99, t.latency_sample) == (100, 7, 100)


def test_a_gone_reporter_keeps_its_counts_but_not_its_in_flight() -> None:
    clock = ManualClock()
    merged = MergedTelemetry(clock, fresh=5.0)
    for name in ("dead", "alive"):
        rec = Recorder()
        rec.variants[ORIGINAL].record(200, 500, False, clock.monotonic())
        rec.variants[ORIGINAL].in_flight = 3
        ep = EndpointReading(ORIGINAL, "http://127.0.0.1:1", name == "alive", 2)
        merged.ingest(Reporter(name, rec, clock).report([ep]))
        clock.advance(4)
    assert merged.in_flight(ORIGINAL) == 3  # "dead" was last heard 8 s ago
    assert merged.totals(ORIGINAL).requests == 2
    # Ejected only by the reporter that has gone: healthy; connects add up.
    (ep,) = merged.endpoints()
    assert ep.healthy and ep.connects == 4


def test_live_state_travels_whole() -> None:
    a, b = LiveState(1234), LiveState()
    a.set_cohorts(frozenset({"u1"}), frozenset({"beta"}), frozenset({"u9"}))
    changes: list[int] = []
    b.on_change = lambda: changes.append(b.new_weight_bp)
    b.take(json.loads(json.dumps(a.to_wire())))
    assert (b.new_weight_bp, b.allow_users, b.allow_groups, b.deny_users) == (
        1234, frozenset({"u1"}), frozenset({"beta"}), frozenset({"u9"}))
    assert changes  # a supervisor hears it and tells its workers
    changes.clear()
    b.take(a.to_wire())
    assert changes == []  # nothing changed: nothing sent
