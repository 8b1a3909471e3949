"""Rollout state: its dict form, the atomic file store, corrupt files, the writer lock."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from proxy.control.state import FORMAT, Event, RolloutState, StateError, Status
from proxy.control.store import FileStore, MemoryStore, VersionConflict
from proxy.timing.clock import ManualClock
from tests.deadline import until


def _event(i: int) -> Event:
    return Event(1_700_000_000.0 + i, "advance", f"phase-{i}", f"phase-{i + 1}",
                 f"gates passed ({i})", "controller",
                 {"findings": [{"gate": "error_rate", "verdict": "pass", "observed": 0.001}],
                  "n": i})


def _state(events: int = 3) -> RolloutState:
    return RolloutState(
        rollout="checkout-v2", status=Status.ROLLING_BACK, phase=2, weight_bp=2500,
        phase_started=1_700_000_123.5, approved=True, deny_users=["alice", "42"],
        rollback_weights=[1250, 625, 0], rollback_next=1_700_000_200.25,
        rollback_interval=10.0, paused_status="progressing",
        events=[_event(i) for i in range(events)],
    )


# --- dict form ------------------------------------------------------------------------

def test_round_trip_with_events() -> None:
    state = _state()
    d = state.to_dict()
    assert d["format"] == FORMAT
    assert d["status"] == "rolling-back"
    assert d["events"][0]["from"] == "phase-0"
    assert "from_" not in d["events"][0]
    back = RolloutState.from_dict(d)
    assert back == state
    assert back.status is Status.ROLLING_BACK
    # And through JSON, as the file store writes it.
    assert RolloutState.from_dict(json.loads(json.dumps(d))) == state


@pytest.mark.parametrize("status", list(Status))
def test_round_trip_every_status(status: Status) -> None:
    state = RolloutState(rollout="r", status=status)
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_defaults_round_trip() -> None:
    state = RolloutState(rollout="r")
    assert RolloutState.from_dict(state.to_dict()) == state
    assert state.to_dict()["events"] == []


def test_event_without_evidence() -> None:
    d = _event(0).to_dict()
    del d["evidence"]
    assert Event.from_dict(d).evidence == {}


def _broken(change: str) -> dict[str, Any]:
    d = _state().to_dict()
    match change:
        case "format-2":
            d["format"] = 2
        case "no-format":
            del d["format"]
        case "format-str":
            d["format"] = "1"
        case "no-rollout" | "no-phase" | "no-events" | "no-weight_bp":
            del d[change.removeprefix("no-")]
        case "status":
            d["status"] = "exploded"
        case "weight-high":
            d["weight_bp"] = 10001
        case "weight-low":
            d["weight_bp"] = -1
        case "phase-negative":
            d["phase"] = -1
        case "weight-text":
            d["weight_bp"] = "lots"
        case "started-null":
            d["phase_started"] = None
        case "events-null":
            d["events"] = None
        case "event-not-dict":
            d["events"] = [3]
        case "event-missing-key":
            del d["events"][0]["kind"]
        case _:
            raise AssertionError(change)
    return d


@pytest.mark.parametrize("change", [
    "format-2", "no-format", "format-str", "no-rollout", "no-phase", "no-events",
    "no-weight_bp", "status", "weight-high", "weight-low", "phase-negative", "weight-text",
    "started-null", "events-null", "event-not-dict", "event-missing-key",
])
def test_from_dict_rejects(change: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        RolloutState.from_dict(_broken(change))


def test_from_dict_wrong_format_says_so() -> None:
    with pytest.raises(ValueError, match="format 2"):
        RolloutState.from_dict(_broken("format-2"))


@pytest.mark.parametrize("weight", [0, 1, 9999, 10000])
def test_from_dict_weight_edges(weight: int) -> None:
    d = _state().to_dict()
    d["weight_bp"] = weight
    assert RolloutState.from_dict(d).weight_bp == weight


# --- FileStore.save -------------------------------------------------------------------

def test_save_writes_valid_json_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    state = _state()
    store.write(state, store.version)
    written = json.loads(path.read_bytes())
    assert written == {**json.loads(json.dumps(state.to_dict())), "version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert store.read() == state


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    FileStore(path).write(_state(events=0), 0)  # an older state, by an earlier process
    store = FileStore(path)
    store.read()  # at version 1 (an unreadable file would have been moved aside here)
    state = _state()
    store.write(state, store.version)
    state.weight_bp = 5000
    state.events.append(_event(99))
    store.write(state, store.version)
    assert json.loads(path.read_text())["weight_bp"] == 5000
    assert store.read() == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_save_is_atomic_rename_not_in_place_write(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    store.write(_state(), store.version)
    before = os.stat(path).st_ino
    store.write(_state(events=1), store.version)
    # A fresh inode: the old file was replaced whole, never rewritten in place.
    assert os.stat(path).st_ino != before


def test_save_bounds_events_dropping_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path, max_events=10)
    state = _state(events=25)
    store.write(state, store.version)
    saved = json.loads(path.read_text())["events"]
    assert len(saved) == 10
    assert [e["evidence"]["n"] for e in saved] == list(range(15, 25))
    loaded = store.read()
    assert loaded is not None
    assert [e.evidence["n"] for e in loaded.events] == list(range(15, 25))


def test_save_under_the_bound_keeps_every_event(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json", max_events=10)
    store.write(_state(events=10), store.version)
    loaded = store.read()
    assert loaded is not None and len(loaded.events) == 10


def test_save_serialises_odd_evidence(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    state = RolloutState(rollout="r", events=[
        Event(1.0, "breach", "a", "b", "why", "controller", {"path": tmp_path, "t": (1, 2)})])
    store.write(state, store.version)
    loaded = store.read()
    assert loaded is not None
    assert loaded.events[0].evidence == {"path": str(tmp_path), "t": [1, 2]}


# --- FileStore.load -------------------------------------------------------------------

def test_load_missing_file_is_none(tmp_path: Path) -> None:
    assert FileStore(tmp_path / "nothing.json").read() is None


def test_load_truncated_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    store.write(_state(), store.version)
    truncated = path.read_bytes()[:57]
    path.write_bytes(truncated)
    with pytest.raises(StateError) as info:
        store.read()
    kept = info.value.kept
    assert kept is not None
    assert Path(kept).exists()
    assert Path(kept).read_bytes() == truncated
    assert not path.exists()
    assert Path(kept).parent == tmp_path
    assert kept in str(info.value)
    assert str(path) in str(info.value)
    # With the bad file gone, the next load starts fresh.
    assert store.read() is None


@pytest.mark.parametrize("content", [
    b"", b"{", b"null", b"[]", b"42", b'"text"', b'{"format": 1}', b'{"format": 7}',
    b"\xff\xfe not utf-8", json.dumps({**_state().to_dict(), "status": "bad"}).encode(),
])
def test_load_unusable_content_is_kept_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        FileStore(path).read()
    assert info.value.kept is not None
    assert Path(info.value.kept).read_bytes() == content
    assert not path.exists()


def test_kept_copies_are_never_overwritten(tmp_path: Path) -> None:
    # The same second for every copy (a clock that does not move): names must still differ.
    clock = ManualClock(wall=1735689600.0)  # 2025-01-01T00:00:00Z
    path = tmp_path / "state.json"
    store = FileStore(path, clock=clock)
    kept: list[str] = []
    for i in range(3):
        path.write_bytes(b"{corrupt %d" % i)
        with pytest.raises(StateError) as info:
            store.read()
        assert info.value.kept is not None
        kept.append(info.value.kept)
    assert len(set(kept)) == 3
    assert kept[0] == f"{path}.corrupt-20250101T000000"
    for i, name in enumerate(kept):
        assert Path(name).read_bytes() == b"{corrupt %d" % i


def test_kept_copies_in_real_time_differ(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    kept: list[str | None] = []
    for content in (b"{first", b"{second"):
        path.write_bytes(content)
        with pytest.raises(StateError) as info:
            store.read()
        kept.append(info.value.kept)
    assert kept[0] != kept[1]
    assert Path(str(kept[0])).read_bytes() == b"{first"
    assert Path(str(kept[1])).read_bytes() == b"{second"


# --- FileStore.lock -------------------------------------------------------------------

def test_lock_is_exclusive_until_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    first, second = FileStore(path), FileStore(path)
    first.lock()
    try:
        assert path.parent.is_dir()
        with pytest.raises(StateError, match="in use"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    try:
        third = FileStore(path)
        with pytest.raises(StateError, match="in use"):
            third.lock()
    finally:
        second.unlock()
    second.unlock()  # closing twice is harmless


def test_lock_does_not_block_other_paths(tmp_path: Path) -> None:
    a, b = FileStore(tmp_path / "a.json"), FileStore(tmp_path / "b.json")
    a.lock()
    b.lock()
    a.unlock()
    b.unlock()


def test_locked_store_saves_and_loads(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    store.lock()
    try:
        store.write(_state(), store.version)
        assert store.read() == _state()
    finally:
        store.unlock()


# --- MemoryStore ----------------------------------------------------------------------

def test_memory_store_round_trip() -> None:
    store = MemoryStore()
    assert store.read() is None
    state = _state()
    store.write(state, store.version)
    loaded = store.read()
    assert loaded == state
    assert loaded is not state
    assert loaded is not None
    loaded.deny_users.append("mallory")
    loaded.events.clear()
    assert store.read() == state


# --- the StateStore protocol: versions, compare-and-set, watch ------------------------

async def test_file_store_saves_with_compare_and_set(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    assert await store.load() == (None, 0)
    v1 = await store.save(_state(), 0)
    v2 = await store.save(_state(events=1), v1)
    assert (v1, v2) == (1, 2)
    with pytest.raises(VersionConflict):
        await store.save(_state(events=2), v1)  # a writer that read version 1 lost the race
    state, version = await FileStore(tmp_path / "state.json").load()
    assert version == 2 and state == _state(events=1)  # the stale save changed nothing


async def test_file_store_never_overwrites_a_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"{half a file")
    with pytest.raises(VersionConflict):
        await FileStore(path).save(_state(), 0)
    assert path.read_bytes() == b"{half a file"


async def test_memory_store_pushes_other_writers_saves_to_watchers() -> None:
    store = MemoryStore()
    seen: list[tuple[RolloutState, int]] = []
    store.watch(lambda state, version: seen.append((state, version)))
    version = await store.save(_state(events=2), 0)
    with pytest.raises(VersionConflict):
        await store.save(_state(), 0)
    await until(lambda: len(seen) == 1, what="the change pushed to the watcher")
    assert seen == [(_state(events=2), version)]
    assert await store.load() == (_state(events=2), 1)
