"""Per-user outcomes: the veer-metric header, per-user values, the memory bound, exact merging."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.experiment import Experiment, Metric
from proxy.control.experiments import results
from proxy.routing.variant import NEW, ORIGINAL, VARIANTS, Variant
from proxy.telemetry.merged import MergedTelemetry
from proxy.telemetry.outcomes import MAX_NAMES, Outcomes, UserTable, user_id
from proxy.telemetry.recorder import Recorder
from proxy.telemetry.report import Report, Reporter
from proxy.timing.clock import ManualClock

Row = tuple[float, float, float]  # count, sum, non-zero count of one user


def _rows(t: UserTable) -> dict[int, Row]:
    return {uid: (t.count[i], t.total[i], t.nonzero[i]) for uid, i in t.index.items()}


def _configured(max_users: int = 1_000_000) -> Outcomes:
    out = Outcomes()
    out.configure(["accuracy", "cost"], [], True, max_users)
    return out


# --- user ids ----------------------------------------------------------------------------

def test_user_id_is_a_stable_unsigned_64_bit_murmur3() -> None:
    assert user_id("u1") == 8330233586929153525
    assert user_id("user-3") == 14776824442445437921  # above 2**63: unsigned
    assert user_id("u2") == 1852731985857324034
    assert user_id("u1") != user_id("u2")


@given(st.text(max_size=200))
def test_user_id_fits_in_64_bits_and_is_deterministic(user: str) -> None:
    uid = user_id(user)
    assert isinstance(uid, int) and 0 <= uid < 2**64
    assert uid == user_id(user)


# --- the veer-metric header --------------------------------------------------------------

def test_a_header_records_every_configured_metric() -> None:
    out = _configured()
    out.header(NEW, "u1", b"accuracy=0.92, cost=0.003")
    uid = user_id("u1")
    assert _rows(out.table("accuracy", NEW)) == {uid: (1.0, 0.92, 1.0)}
    assert _rows(out.table("cost", NEW)) == {uid: (1.0, 0.003, 1.0)}
    assert out.malformed == 0
    assert ("accuracy", ORIGINAL) not in out.tables


def test_unconfigured_names_are_ignored() -> None:
    out = _configured()
    out.header(ORIGINAL, "u1", b"latency=12, accuracy=0.5, other=1e3")
    assert set(out.tables) == {("accuracy", ORIGINAL)}
    assert out.malformed == 0


@pytest.mark.parametrize("raw", [
    b"accuracy=x", b"accuracy=nan", b"accuracy=NaN", b"accuracy=inf", b"accuracy=-inf",
    b"accuracy=1e400", b"accuracy=", b"a=", b"accuracy", b"accuracy 0.5", b"=1",
    b"accuracy=0.5.1", b"accuracy=\xff", b"other=x"])
def test_a_malformed_item_is_counted_not_recorded(raw: bytes) -> None:
    out = _configured()
    out.header(NEW, "u1", raw)
    assert out.malformed == 1, raw
    assert all(len(t) == 0 for t in out.tables.values())


def test_malformed_items_do_not_spoil_the_good_ones() -> None:
    out = _configured()
    out.header(NEW, "u1", b"accuracy=x, cost=0.25, accuracy=nan, inf, accuracy=0.75")
    uid = user_id("u1")
    assert out.malformed == 3
    assert _rows(out.table("cost", NEW)) == {uid: (1.0, 0.25, 1.0)}
    assert _rows(out.table("accuracy", NEW)) == {uid: (1.0, 0.75, 1.0)}


def test_whitespace_around_names_and_values_is_tolerated() -> None:
    out = _configured()
    out.header(NEW, "u1", b"  accuracy =\t0.92 ,cost=  0.003  ")
    uid = user_id("u1")
    assert _rows(out.table("accuracy", NEW)) == {uid: (1.0, 0.92, 1.0)}
    assert _rows(out.table("cost", NEW)) == {uid: (1.0, 0.003, 1.0)}
    assert out.malformed == 0


def test_a_header_reads_at_most_max_names_items() -> None:
    out = _configured()
    out.header(NEW, "u1", b",".join([b"x"] * (MAX_NAMES + 10)))
    assert out.malformed == MAX_NAMES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_no_header_raises_and_only_finite_values_are_kept(raw: bytes) -> None:
    out = _configured()
    out.header(NEW, "u1", raw)
    items = min(len(raw.split(b",")), MAX_NAMES)
    kept = sum(int(sum(t.count)) for t in out.tables.values())
    assert out.malformed + kept <= items
    assert set(out.tables) <= {("accuracy", NEW), ("cost", NEW)}
    for t in out.tables.values():
        assert all(math.isfinite(x) for x in t.total)


# --- per-user values ---------------------------------------------------------------------

def test_a_users_value_is_their_mean_or_for_a_proportion_whether_any_was_nonzero() -> None:
    out = _configured()
    for user, raw in [("u1", b"accuracy=0.5"), ("u2", b"accuracy=0"), ("u1", b"accuracy=1"),
                      ("u2", b"accuracy=0"), ("u1", b"accuracy=0"), ("u3", b"accuracy=-2")]:
        out.header(ORIGINAL, user, raw)
    t = out.table("accuracy", ORIGINAL)
    assert list(t.index) == [user_id("u1"), user_id("u2"), user_id("u3")]
    assert t.values(False).tolist() == [0.5, 0.0, -2.0]
    assert t.values(True).tolist() == [1.0, 0.0, 1.0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9),
                          st.integers(-400, 400).map(lambda k: k / 4)), min_size=1,
                max_size=100))
def test_per_user_values_hold_for_any_sequence(records: list[tuple[int, float]]) -> None:
    t = UserTable()
    by_user: dict[int, list[float]] = {}
    for user, value in records:
        t.add(user, value)
        by_user.setdefault(user, []).append(value)
    assert list(t.index) == list(by_user)
    assert t.values(False).tolist() == [sum(v) / len(v) for v in by_user.values()]
    assert t.values(True).tolist() == [float(any(v)) for v in by_user.values()]


# --- the memory bound --------------------------------------------------------------------

def test_a_table_keeps_at_most_max_users_and_counts_the_values_of_the_rest() -> None:
    t = UserTable(max_users=2)
    for uid, value in [(1, 1.0), (2, 2.0), (3, 3.0), (1, 5.0), (3, 4.0), (4, 0.0)]:
        t.add(uid, value)
    assert len(t) == 2
    assert _rows(t) == {1: (2.0, 6.0, 2.0), 2: (1.0, 2.0, 1.0)}  # the kept still grow
    assert t.dropped == 3  # user 3's two values and user 4's one


def test_outcomes_keep_at_most_max_users_per_variant_and_count_the_rest() -> None:
    out = _configured(max_users=2)
    for user in ("a", "b", "c", "d"):
        out.request(NEW, user, 1000, False)
        out.header(NEW, user, b"accuracy=1")
    out.request(ORIGINAL, "c", 1000, False)  # the bound is per variant
    assert out.units[NEW] == {user_id("a"), user_id("b")}
    assert out.units[ORIGINAL] == {user_id("c")}
    assert out.units_dropped == 2
    assert set(_rows(out.table("accuracy", NEW))) == {user_id("a"), user_id("b")}
    assert out.table("accuracy", NEW).dropped == 2
    # A user beyond the bound is not remembered, so each of their requests counts again.
    out.request(NEW, "c", 1000, False)
    assert out.units_dropped == 3 and len(out.units[NEW]) == 2


def test_the_bound_holds_where_outcomes_are_merged() -> None:
    worker = _configured()
    for user in ("a", "b", "c"):
        worker.request(NEW, user, 1000, False)
        worker.header(NEW, user, b"accuracy=1")
    merged = Outcomes(max_users=2)
    drained = worker.drain()
    assert drained is not None
    merged.merge(json.loads(json.dumps(drained)))
    assert len(merged.units[NEW]) == 2 and merged.units_dropped == 1
    assert len(merged.table("accuracy", NEW)) == 2 and merged.table("accuracy", NEW).dropped == 1
    exp = Experiment("e", 5000, (Metric("accuracy"),))
    assert results(exp, merged, 1.0)["dropped"] == {"units": 1, "values": 1}


# --- draining and merging ----------------------------------------------------------------

def test_a_drain_takes_everything_once() -> None:
    out = _configured()
    assert out.drain() is None
    out.request(NEW, "u1", 2000, True)
    out.header(NEW, "u1", b"accuracy=0.5, cost=x")
    drained = out.drain()
    assert drained is not None
    assert drained["units"] == {NEW: [user_id("u1")]} and drained["malformed"] == 1
    assert out.drain() is None
    again = Outcomes()
    again.merge(json.loads(json.dumps(drained)))
    assert again.units[NEW] == {user_id("u1")} and again.malformed == 1
    assert _rows(again.table("accuracy", NEW)) == {user_id("u1"): (1.0, 0.5, 1.0)}


@pytest.mark.parametrize("bad", [
    {"units": {"beta": [1]}, "tables": []},
    {"units": {}, "tables": [["accuracy", "beta", {"u": [], "c": [], "s": [], "z": []}]]},
    {"units": {}, "tables": [["accuracy", NEW, {"u": [1, 2], "c": [1], "s": [1], "z": [1]}]]},
    {"units": {}},
    {"tables": []},
])
def test_bad_wire_data_raises_a_value_key_or_type_error(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        Outcomes().merge(bad)


HEADER_METRICS = ("accuracy", "converted")
EXP = Experiment("e", 5000, (
    Metric("accuracy", mde=0.1),
    Metric("converted", type="proportion"),
    Metric("error_rate", type="proportion", source="traffic", goal="decrease",
           role="guardrail"),
    Metric("latency_ms", source="traffic", goal="decrease", role="guardrail", margin=0.1),
), min_users=2)

# (worker, variant, user, what the header carries, value, latency in us, failed, drain after)
Record = tuple[int, Variant, str, str, float, int, bool, bool]
RECORD = st.tuples(
    st.integers(0, 3), st.sampled_from(VARIANTS), st.integers(0, 11).map(lambda i: f"u{i}"),
    st.sampled_from([*HEADER_METRICS, "both", "unconfigured", "malformed"]),
    st.integers(0, 64).map(lambda k: k / 4),  # quarters: sums are exact in any order
    st.integers(1, 80).map(lambda k: k * 125),  # whole eighths of a millisecond
    st.booleans(), st.booleans())


def _record(out: Outcomes, r: Record) -> None:
    _, variant, user, kind, value, latency_us, failed, _ = r
    out.request(variant, user, latency_us, failed)
    raw = {"both": f"accuracy={value!r}, converted={int(failed)}",
           "unconfigured": f"other={value!r}", "malformed": "accuracy=oops"
           }.get(kind, f"{kind}={value!r}")
    out.header(variant, user, raw.encode())


def _worker_outcomes() -> Outcomes:
    out = Outcomes()
    out.configure(HEADER_METRICS, ("error_rate", "latency_ms"), True)
    return out


def _close(a: Any, b: Any) -> bool:
    """Equal, floats within rounding (per-user values sum in a different order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return type(a) is type(b) and bool(a == b)


@settings(max_examples=150, deadline=None)
@given(st.lists(RECORD, max_size=120), st.integers(1, 4), st.data())
def test_outcomes_split_over_workers_merge_to_exactly_what_one_process_records(
        records: list[Record], workers: int, data: st.DataObject) -> None:
    clock = ManualClock()
    whole = _worker_outcomes()
    parts = [_worker_outcomes() for _ in range(workers)]
    reporters = [Reporter(f"w{i}", Recorder(), clock, parts[i]) for i in range(workers)]
    reports: list[Report] = []
    for r in records:
        _record(whole, r)
        w = r[0] % workers
        _record(parts[w], r)
        clock.advance(0.25)
        if r[7]:
            reports.append(reporters[w].report([]))
    reports.extend(rep.report([]) for rep in reporters)  # what is left

    merged = MergedTelemetry(clock)
    late: list[Report] = []
    for report in reports:
        if data.draw(st.booleans(), label="through the wire"):
            report = Report.from_wire(json.loads(json.dumps(report.to_wire())))
        merged.ingest(report)
        again = data.draw(st.sampled_from(["no", "now", "later"]), label="repeated")
        if again == "now":
            merged.ingest(report)
        elif again == "later":
            late.append(report)
    for report in late:
        merged.ingest(report)

    got = merged.outcomes
    assert got.units == whole.units
    assert got.units_dropped == whole.units_dropped == 0
    assert got.malformed == whole.malformed
    assert got.tables.keys() == whole.tables.keys()
    for key, table in whole.tables.items():
        assert _rows(got.tables[key]) == _rows(table), key
        assert got.tables[key].dropped == table.dropped
    want = results(EXP, whole, 30.0)
    have = results(EXP, got, 30.0)
    assert _close(have, want), (have, want)
    assert have["decision"] == want["decision"]
