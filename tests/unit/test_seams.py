"""The seams the multi-process work plugs into, each with its single-process implementation:
telemetry slots that merge exactly, the lease, the state store under the runner, the clock,
live state apart from the snapshot, the typed idle pool."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.load import from_dict
from proxy.config.plan import Rollout, read_rollout
from proxy.config.reader import Reader
from proxy.control.rollout import RolloutRunner, StateSaveError
from proxy.control.state import Event, RolloutState, Status
from proxy.control.store import FileStore, MemoryStore
from proxy.http.plane import Snapshot
from proxy.routing.live import LiveState
from proxy.routing.variant import NEW, ORIGINAL
from proxy.telemetry import latency, slots
from proxy.telemetry.recorder import Recorder
from proxy.telemetry.slots import SecondSlot
from proxy.telemetry.source import LocalTelemetry
from proxy.timing.clock import ManualClock
from proxy.upstream.idle import IdlePool
from tests.deadline import until


# -- closed slots: the wire format between processes -----------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 60_000_000), max_size=40), min_size=1, max_size=4))
def test_slots_of_several_processes_merge_to_the_one_process_numbers(
        per_process: list[list[int]]) -> None:
    whole = Recorder()
    parts = [Recorder() for _ in per_process]
    for rec, values in zip(parts, per_process, strict=True):
        for v in values:
            rec.variants[NEW].record(200, v, False, 100.5)
            whole.variants[NEW].record(200, v, False, 100.5)
    wire = [SecondSlot.from_wire(s.to_wire())  # as if sent between processes
            for rec in parts for s in rec.variants[NEW].closed_slots(NEW, 0, 102.0)]
    merged = slots.merge(wire)
    expected = whole.variants[NEW].closed_slots(NEW, 0, 102.0)
    if not expected:
        assert merged == []
        return
    [one] = merged
    [exact] = expected
    assert (one.requests, one.errors, one.sum_us) == (exact.requests, exact.errors,
                                                      exact.sum_us)
    a, b = one.latencies(), exact.latencies()
    assert latency.quantiles_us(a, (50.0, 99.0, 99.9)) == \
        latency.quantiles_us(b, (50.0, 99.0, 99.9))
    assert a.get_total_count() == b.get_total_count() == sum(map(len, per_process))


def test_only_closed_seconds_are_slots() -> None:
    rec = Recorder()
    for second in (10.2, 11.7, 12.1):
        rec.variants[ORIGINAL].record(503, 1000, False, second)
    got = [(s.second, s.errors) for s in rec.variants[ORIGINAL].closed_slots(ORIGINAL, 0, 12.5)]
    assert got == [(10, 1), (11, 1)]  # 12 is still open
    assert rec.variants[ORIGINAL].closed_slots(ORIGINAL, 10, 12.5)[0].second == 11


@pytest.mark.parametrize("bad", [{"variant": "blue"}, {"requests": -1}, {"second": "x"}])
def test_a_bad_slot_on_the_wire_is_refused(bad: dict[str, object]) -> None:
    good = SecondSlot(NEW, 5, 1, 0, 10, b"").to_wire()
    with pytest.raises((ValueError, KeyError, TypeError)):
        SecondSlot.from_wire({**good, **bad})


# -- the runner: lease, saving beside the loop, compare-and-set -------------------------
def _rollout() -> Rollout:
    r = read_rollout(Reader("test", {"name": "r", "plan": [
        {"name": "a", "weight": 10, "duration": "1s", "gates": {"min_requests": 1}},
        {"name": "full", "weight": 100}]}, "rollout"))
    assert r is not None
    return r


class Lease:
    def __init__(self, held: bool) -> None:
        self.is_held = held

    def held(self, now: float) -> bool:
        return self.is_held


def _runner(store: MemoryStore, lease: Lease, clock: ManualClock,
            live: LiveState | None = None, version: int = 0) -> RolloutRunner:
    rollout = _rollout()
    return RolloutRunner(rollout, store, LocalTelemetry(Recorder(), clock),
                         live or LiveState(), clock, lease,
                         RolloutState(rollout="r", weight_bp=1000, phase_started=clock.wall()),
                         version)


async def test_without_the_lease_the_runner_decides_nothing_but_an_operator_still_acts() -> None:
    clock = ManualClock()
    live = LiveState()
    store = MemoryStore()
    runner = _runner(store, Lease(False), clock, live)
    assert live.new_weight_bp == 1000  # what is saved still applies
    clock.advance(5)
    assert runner.step() == []
    assert store.read() is None  # nothing of its own is written
    # An operator's action on a replica that does not lead is written by compare-and-set,
    # so it applies wherever the operator asked.
    await runner.act("promote", "op")
    saved = store.read()
    assert saved is not None and saved.weight_bp == 10000
    assert live.new_weight_bp == 10000


async def test_an_operator_action_without_the_lease_rereads_on_a_conflict() -> None:
    clock = ManualClock()
    store = MemoryStore()
    runner = _runner(store, Lease(False), clock)
    # The leader saved meanwhile (version 1): the action is re-applied on what it saved.
    store.write(RolloutState(rollout="r", weight_bp=2000, phase_started=clock.wall(),
                             status=Status.PAUSED), 0)
    await runner.act("resume", "op")
    saved = store.read()
    assert saved is not None and saved.status is Status.PROGRESSING and saved.weight_bp == 2000


async def test_an_operator_action_that_cannot_be_saved_is_not_applied() -> None:
    class Down(MemoryStore):
        async def save(self, state: RolloutState, version: int) -> int:
            raise ConnectionError("Redis is away")

        async def load(self) -> tuple[RolloutState | None, int]:
            return None, 0

    clock = ManualClock()
    live = LiveState()
    runner = _runner(Down(), Lease(False), clock, live)
    with pytest.raises(StateSaveError, match="not applied"):
        await runner.act("promote", "op")
    assert live.new_weight_bp == 1000 and runner.controller.state.weight_bp == 1000


async def test_an_action_returns_once_saved_and_a_tick_never_waits_for_the_disk() -> None:
    release = asyncio.Event()
    writes: list[int] = []

    class SlowStore(MemoryStore):
        async def save(self, state: RolloutState, version: int) -> int:
            await release.wait()  # a disk that takes its time
            writes.append(state.weight_bp)
            return await super().save(state, version)

    clock = ManualClock()
    live = LiveState()
    runner = _runner(SlowStore(), Lease(True), clock, live)
    acted = asyncio.get_running_loop().create_task(runner.act("promote", "op"))
    await until(lambda: live.new_weight_bp == 10000, what="the weight applied at once")
    assert runner.step() == []  # a tick meanwhile returns without waiting
    assert not acted.done()  # the action waits for its state to be durable
    release.set()
    await acted
    assert writes[-1] == 10000


async def test_a_second_writer_on_the_same_store_is_refused_not_overwritten() -> None:
    store, clock = MemoryStore(), ManualClock()
    first = _runner(store, Lease(True), clock)
    await first.flush()
    second = _runner(store, Lease(True), clock)  # thinks the store is at version 0
    with pytest.raises(StateSaveError, match="version"):
        await second.flush()
    assert store.read() is not None and store.version == 1


async def test_a_save_pushed_by_another_writer_is_applied() -> None:
    store, clock = MemoryStore(), ManualClock()
    leader_live, follower_live = LiveState(), LiveState()
    leader = _runner(store, Lease(True), clock, leader_live)
    await leader.flush()
    # It loaded the leader's state at start; without the lease it never writes.
    follower = _runner(store, Lease(False), clock, follower_live, store.version)
    await leader.act("promote", "op")
    await until(lambda: follower_live.new_weight_bp == 10000, what="the pushed weight")
    assert follower.controller.state.status == "complete"


# -- live state apart from the snapshot ----------------------------------------------
def test_a_new_snapshot_keeps_endpoints_and_leaves_live_state_alone() -> None:
    cfg = from_dict({"upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                                   "new": {"endpoints": ["http://127.0.0.1:2",
                                                         "http://127.0.0.1:3"]}}})
    first = Snapshot.build(cfg)
    live = LiveState(2500)
    ep = first.pools.balancers[NEW].endpoints[0]
    ep.total = 7
    again = Snapshot.build(cfg, first)
    assert again.pools.balancers[NEW].endpoints[0] is ep and ep.total == 7
    assert again.pools.idle[ep] is first.pools.idle[ep]  # its idle connections stay
    assert again.router is not first.router and live.new_weight_bp == 2500
    with pytest.raises(ValueError):
        live.set_weight(10001)


# -- the typed idle pool ------------------------------------------------------------------
class Conn:
    def __init__(self, idle_since: float) -> None:
        self.idle_since = idle_since
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_idle_pool_reuses_newest_and_expires_oldest() -> None:
    pool: IdlePool[Conn] = IdlePool()
    conns = [Conn(t) for t in (1.0, 2.0, 3.0)]
    for c in conns:
        pool.put(c)
    conns[2].closed = True  # closed while idle: skipped
    assert pool.take() is conns[1]
    pool.expire(before=1.5)
    assert conns[0].closed and len(pool) == 0 and pool.take() is None


def test_a_connection_back_from_a_retired_endpoint_is_closed_not_kept() -> None:
    pool: IdlePool[Conn] = IdlePool()
    waiting, busy = Conn(1.0), Conn(2.0)
    pool.put(waiting)
    pool.close_all(retire=True)  # a reload removed the endpoint while `busy` was in use
    pool.put(busy)
    assert waiting.closed and busy.closed and len(pool) == 0


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(wall=100.0, monotonic=5.0)
    clock.advance(random.uniform(0, 3))
    assert clock.wall() - 100.0 == pytest.approx(clock.monotonic() - 5.0)
    with pytest.raises(ValueError):
        clock.advance(-1)


# -- found in review: each failed before its fix ---------------------------------------
async def test_no_save_starts_once_the_runner_has_stopped() -> None:
    saves: list[int] = []

    class Failing(MemoryStore):
        async def save(self, state: RolloutState, version: int) -> int:
            saves.append(version)
            raise OSError(28, "No space left on device")

    store, clock = Failing(), ManualClock()
    runner = _runner(store, Lease(True), clock)
    await runner.stop()  # the save fails; nothing may be written after the lock is let go
    before = len(saves)
    runner.record(Event(0.0, "reload", "", "", "", "test"))  # a SIGHUP during shutdown
    await asyncio.sleep(0.01)
    assert len(saves) == before


async def test_a_process_without_the_lease_starts_and_stops_cleanly(
        caplog: pytest.LogCaptureFixture) -> None:
    runner = _runner(MemoryStore(), Lease(False), ManualClock())
    await runner.flush()  # nothing of its own to save: no StateSaveError
    await runner.stop()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_the_saved_document_does_not_share_lists_with_the_live_state() -> None:
    state = RolloutState(rollout="r", rollback_weights=[750, 0], deny_users=["a"])
    doc = state.to_dict()
    state.rollback_weights.pop(0)
    state.deny_users.append("b")
    assert doc["rollback_weights"] == [750, 0] and doc["deny_users"] == ["a"]


async def test_a_directory_that_cannot_be_fsynced_does_not_block_later_saves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "state.json")
    real_open = os.open

    def no_dir_open(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == tmp_path:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_dir_open)
    v1 = await store.save(RolloutState(rollout="r"), 0)
    v2 = await store.save(RolloutState(rollout="r", weight_bp=5), v1)
    assert (v1, v2) == (1, 2)


def test_an_address_listed_twice_stays_two_endpoints_after_a_reload() -> None:
    cfg = from_dict({"upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                                   "new": {"endpoints": ["http://127.0.0.1:2",
                                                         "http://127.0.0.1:2"]}}})
    first = Snapshot.build(cfg)
    again = Snapshot.build(cfg, first)
    a, b = again.pools.balancers[NEW].endpoints
    assert a is not b  # (one of them keeps its old counters, as before this refactor)
    assert {a, b} & set(first.pools.balancers[NEW].endpoints)


async def test_with_a_shared_store_nothing_widens_unsaved_but_a_breach_rolls_back_at_once(
) -> None:
    saving = asyncio.Event()
    fail = True

    class Shared(MemoryStore):
        async def save(self, state: RolloutState, version: int) -> int:
            await saving.wait()
            if fail:
                raise ConnectionError("Redis is away")
            return await super().save(state, version)

    store = Shared()
    store.shared = True
    clock = ManualClock()
    live = LiveState()
    rollout = read_rollout(Reader("test", {"name": "r", "tick": "1s", "plan": [
        {"name": "a", "weight": 10, "duration": "1s",
         "gates": {"max_error_rate": "1%", "min_requests": 20}},
        {"name": "full", "weight": 100}]}, "rollout"))
    assert rollout is not None
    recorder = Recorder()
    runner = RolloutRunner(rollout, store, LocalTelemetry(recorder, clock), live, clock,
                           Lease(True), RolloutState(rollout="r", weight_bp=1000,
                                                     phase_started=clock.wall()))
    saving.set()
    # An operator's advance that cannot be saved changes nothing, here or anywhere.
    with pytest.raises(StateSaveError, match="not applied"):
        await runner.act("advance", "op")
    assert live.new_weight_bp == 1000 and runner.controller.state.phase == 0
    # The controller's rollback on a breach applies at once, saved or not (the fail-safe),
    # and is saved once the store answers.
    saving.clear()
    for _ in range(200):
        recorder.variants[NEW].record(500, 1000, True, clock.monotonic())
    clock.advance(1)
    runner.step()
    assert live.new_weight_bp == 0 and str(runner.controller.state.status) == "rolled-back"
    fail = False
    saving.set()
    await until(lambda: (store.read() or RolloutState(rollout="")).weight_bp == 0
                and store.read() is not None, what="the rollback saved")
    await runner.stop()


async def test_with_a_shared_store_the_leaders_advance_applies_once_saved() -> None:
    saving = asyncio.Event()

    class Shared(MemoryStore):
        async def save(self, state: RolloutState, version: int) -> int:
            await saving.wait()  # Redis taking its time
            return await super().save(state, version)

    store = Shared()
    store.shared = True
    clock = ManualClock()
    live = LiveState()
    recorder = Recorder()
    runner = RolloutRunner(_rollout(), store, LocalTelemetry(recorder, clock), live, clock,
                           Lease(True), RolloutState(rollout="r", weight_bp=1000,
                                                     phase_started=clock.wall()))
    saving.set()
    await runner.flush()
    saving.clear()
    recorder.variants[NEW].record(200, 1000, False, clock.monotonic())
    clock.advance(2)
    assert [e.kind for e in runner.step()] == ["advance"]
    assert live.new_weight_bp == 1000  # decided, not yet saved: traffic stays where it was
    saving.set()
    await until(lambda: live.new_weight_bp == 10000, what="the advance applied once saved")
    await runner.stop()
