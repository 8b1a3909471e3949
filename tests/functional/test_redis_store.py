"""The state store replicas will share, against a real redis-server started by the test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.cluster.member import connect
from proxy.cluster.redis_store import RedisStore
from proxy.control.state import RolloutState, StateError
from proxy.control.store import VersionConflict
from tests.deadline import until
from tests.redis_server import RedisServer


class Store(RedisStore):
    """A store with a client of its own, closed with it."""

    def __init__(self, url: str, name: str, **kwargs: Any) -> None:
        super().__init__(aioredis.from_url(url), name, **kwargs)

    async def close(self) -> None:
        await super().close()
        await self.client.aclose()


async def test_compare_and_set_lets_one_writer_win_each_version(redis_url: str) -> None:
    a, b = Store(redis_url, "c1"), Store(redis_url, "c1")
    try:
        assert await a.load() == (None, 0)
        v1 = await a.save(RolloutState(rollout="r", weight_bp=100), 0)
        with pytest.raises(VersionConflict):
            await b.save(RolloutState(rollout="r", weight_bp=999), 0)  # read before a won
        assert (await b.load())[1] == v1 == 1
        v2 = await b.save(RolloutState(rollout="r", weight_bp=200), v1)
        state, version = await a.load()
        assert version == v2 == 2 and state is not None and state.weight_bp == 200
        other = Store(redis_url, "another-cluster")
        assert await other.load() == (None, 0)  # a cluster name is its own rollout
        await other.close()
    finally:
        await a.close()
        await b.close()


async def test_a_save_reaches_the_other_replicas_watchers(redis_url: str) -> None:
    leader, follower = Store(redis_url, "c2"), Store(redis_url, "c2", poll=0.2)
    heard: list[tuple[int, int]] = []
    try:
        follower.watch(lambda state, version: heard.append((state.weight_bp, version)))
        await asyncio.sleep(0.05)  # subscribed
        await leader.save(RolloutState(rollout="r", weight_bp=1000), 0)
        await until(lambda: heard == [(1000, 1)], what="the announcement")
        # An announcement missed (none is sent): the version poll still catches up.
        await leader.client.hset(leader.key, mapping={
            "version": 2, "doc": '{"format": 1}'})  # a bad document: refused, not applied
        await asyncio.sleep(0.5)
        assert heard == [(1000, 1)]
        with pytest.raises(StateError):
            await follower.load()
    finally:
        await leader.close()
        await follower.close()


async def test_the_version_poll_catches_a_missed_announcement(redis_url: str) -> None:
    leader, follower = Store(redis_url, "c3"), Store(redis_url, "c3", poll=0.1)
    heard: list[int] = []
    try:
        doc = RolloutState(rollout="r", weight_bp=4200).to_dict()
        await leader.client.hset(leader.key, mapping={"version": 5, "doc": json.dumps(doc)})
        follower.watch(lambda state, version: heard.append(version))
        await until(lambda: heard == [5], what="the poll to find version 5")
    finally:
        await leader.close()
        await follower.close()


async def test_a_follower_replica_applies_the_leaders_weight(redis_url: str) -> None:
    from proxy.config.plan import read_rollout
    from proxy.config.reader import Reader
    from proxy.control.rollout import RolloutRunner
    from proxy.routing.live import LiveState
    from proxy.telemetry.recorder import Recorder
    from proxy.telemetry.source import LocalTelemetry
    from proxy.timing.clock import ManualClock

    class Lease:
        def __init__(self, held: bool) -> None:
            self.is_held = held

        def held(self, now: float) -> bool:
            return self.is_held

    rollout = read_rollout(Reader("test", {"name": "r", "plan": [
        {"name": "a", "weight": 10, "duration": "1h"}, {"name": "full", "weight": 100}]},
        "rollout"))
    assert rollout is not None
    clock = ManualClock()
    runners, lives = [], []
    for held in (True, False):
        store = Store(redis_url, "c4", poll=0.2)
        state, version = await store.load()
        live = LiveState()
        runner = RolloutRunner(rollout, store, LocalTelemetry(Recorder(), clock), live, clock,
                               Lease(held), state or RolloutState(rollout="r", weight_bp=1000),
                               version)
        await runner.flush()
        runners.append(runner)
        lives.append(live)
    leader, follower = runners
    try:
        await leader.act("promote", "op")
        await until(lambda: lives[1].new_weight_bp == 10000, what="the follower's weight")
        assert str(follower.controller.state.status) == "complete"
    finally:
        for r in runners:
            await r.stop()


async def test_the_first_read_after_redis_restarted_succeeds(redis_server: RedisServer) -> None:
    """CI saw an operator's advance refused with 503 "Connection closed by server" just
    after Redis came back: the pool handed out a socket to the old process. The cluster's
    client sends such a command again on a fresh connection."""
    client = connect(redis_server.url)
    store = RedisStore(client, "c-restart")
    try:
        await store.save(RolloutState(rollout="r", weight_bp=100), 0)
        assert (await store.load())[1] == 1  # a pooled connection, now idle
        redis_server.stop()
        await redis_server.start()  # empty, on the same port
        assert await store.load() == (None, 0)  # read on the first try, not an error
        assert await store.save(RolloutState(rollout="r", weight_bp=100), 0) == 1
    finally:
        await store.close()
        await client.aclose()


async def test_a_save_sent_again_after_its_reply_was_lost_reports_its_success(
        redis_url: str) -> None:
    """The client resends a command after a connection error. Were the first send applied,
    a conflict would make the action re-read the state and apply itself a second time."""
    a, b = Store(redis_url, "c-resend"), Store(redis_url, "c-resend")
    try:
        state = RolloutState(rollout="r", weight_bp=100)
        assert await a.save(state, 0) == 1
        assert await a.save(state, 0) == 1  # the same document again: its own success
        with pytest.raises(VersionConflict):  # anything else at that version still conflicts
            await b.save(RolloutState(rollout="r", weight_bp=200), 0)
        stored, version = await a.load()
        assert version == 1 and stored is not None and stored.weight_bp == 100
    finally:
        await a.close()
        await b.close()
