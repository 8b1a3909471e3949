"""Rollout state in Redis: the ``StateStore`` replicas share (the cluster's, issue 13).

One hash per cluster name holds the state document and its version. A save is
compare-and-set in one Lua script, so two writers can never both win a version,
and it announces the new version on a channel. Pub/sub is at-most-once, so
``watch`` also polls the version: a replica that missed an announcement still
catches up within ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis.asyncio as aioredis

from proxy.control.state import RolloutState, StateError
from proxy.control.store import OnChange, VersionConflict
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.cluster")

# KEYS: the state hash, the announcement channel. ARGV: expected version, document.
_CAS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
local new = current + 1
redis.call('HSET', KEYS[1], 'version', new, 'doc', ARGV[2])
redis.call('PUBLISH', KEYS[2], new)
return {1, new}
"""


class RedisStore:
    """``StateStore`` over one Redis; ``name`` is the cluster's (replicas that share it
    share one rollout)."""

    def __init__(self, url: str, name: str, max_events: int = 500, poll: float = 1.0) -> None:
        self.client: aioredis.Redis = aioredis.from_url(url)
        self.key = f"veer:{name}:state"
        self.channel = f"veer:{name}:state-changed"
        self.max_events = max_events
        self.poll = poll
        self.version = 0  # as last loaded, saved or heard
        self._cas = self.client.register_script(_CAS)
        self._watchers: list[OnChange] = []
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> tuple[RolloutState | None, int]:
        raw = await self.client.hmget(self.key, ["version", "doc"])
        version, doc = raw
        if doc is None:
            self.version = 0
            return None, 0
        try:
            state = RolloutState.from_dict(json.loads(doc))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Never moved aside or overwritten here: other replicas read the same key.
            raise StateError(f"cannot read the cluster state {self.key}: {exc}") from None
        self.version = int(version or 0)
        return state, self.version

    async def save(self, state: RolloutState, version: int) -> int:
        doc = state.to_dict()
        doc["events"] = doc["events"][-self.max_events:]
        ok, current = await self._cas(keys=[self.key, self.channel],
                                      args=[version, json.dumps(doc, default=str)])
        if not ok:
            raise VersionConflict(f"{self.key} is at version {current}, not {version}")
        self.version = int(current)
        return self.version

    def watch(self, on_change: OnChange) -> None:
        self._watchers.append(on_change)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(),
                                                                name="veer-state-watch")

    async def _follow(self) -> None:
        """Announcements as they come, and a poll of the version for the ones missed."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll)
                await self._catch_up()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.reset()  # unsubscribes and gives its connection back

    async def _catch_up(self) -> None:
        try:
            raw = await self.client.hget(self.key, "version")
            if raw is None or int(raw) <= self.version:
                return
            state, version = await self.load()
        except Exception as exc:  # Redis away: keep the last-known state, try again
            log.warning("cluster state not readable: %s", exc)
            return
        if state is not None:
            for on_change in list(self._watchers):
                on_change(state, version)

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        await self.client.aclose()
