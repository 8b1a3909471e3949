"""Rollout state in Redis: the ``StateStore`` replicas share.

One hash per cluster name holds the state document and its version. A save is
compare-and-set in one Lua script, so two writers can never both win a version,
and it announces the new version on a channel. Pub/sub is at-most-once, so
``watch`` also polls the version: a replica that missed an announcement still
catches up within ``poll`` seconds.

Fencing: a save made under the controller's lease carries the lease's epoch,
and the script refuses it once a newer epoch was handed out, so a leader that
was paused past its lease cannot undo its successor's decisions.

Redis losing its data (restarted empty): versions only grow, so a document
older than the one a replica last knew (or none at all) can only mean that.
The replica puts its last-known document back, at its version; nobody
resets the rollout to a guess, and a replica that started meanwhile and wrote
a fresh state is overwritten by the newer one it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from proxy.control.state import RolloutState, StateError
from proxy.control.store import OnChange, VersionConflict
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.cluster")

# KEYS: state hash, announcement channel, epoch counter.
# ARGV: expected version, document, the writer's lease epoch ('' for an operator's write).
# An absent hash takes any expected version: a first write (0), or the last-known state
# written back after Redis lost its data. The client sends a command again after a
# connection error (see ``member.connect``); a save that had in fact been applied then
# finds its own document at the next version and reports success, so a retried action is
# never applied twice.
_CAS = """
local epoch = tonumber(ARGV[3])
if epoch then
  local newest = tonumber(redis.call('GET', KEYS[3]) or '0')
  if epoch < newest then return {-1, newest} end
end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and current ~= tonumber(ARGV[1]) then
  if current == tonumber(ARGV[1]) + 1 and redis.call('HGET', KEYS[1], 'doc') == ARGV[2] then
    return {1, current}  -- this very save, sent again after its reply was lost
  end
  return {0, current}
end
local new = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'version', new, 'doc', ARGV[2])
redis.call('PUBLISH', KEYS[2], new)
return {1, new}
"""

# KEYS: state hash, channel. ARGV: the last-known version and its document. Written only
# where Redis holds an older version (or none): it lost data.
_RESTORE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'doc', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


class StaleEpoch(VersionConflict):
    """A save under a lease that has since passed to a newer holder."""


class RedisStore:
    """``StateStore`` over one Redis; ``name`` is the cluster's (replicas that share it
    share one rollout)."""

    def __init__(self, client: aioredis.Redis, name: str, max_events: int = 500,
                 poll: float = 1.0, fence: Callable[[], int | None] = lambda: None) -> None:
        self.client = client
        self.key = f"veer:{name}:state"
        self.channel = f"veer:{name}:state-changed"
        self.epoch_key = f"veer:{name}:epoch"
        self.max_events = max_events
        self.poll = poll
        self.fence = fence  # the lease's epoch while this process holds it
        self.shared = True
        self.version = 0  # as last loaded, saved or heard
        self.restored = 0  # times this process wrote back a state Redis had lost
        self._doc: str | None = None  # the document of ``version``, for a restore
        self._cas = self.client.register_script(_CAS)
        self._restore = self.client.register_script(_RESTORE)
        self._watchers: list[OnChange] = []
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> tuple[RolloutState | None, int]:
        raw = await self.client.hmget(self.key, ["version", "doc"])
        version, doc = raw
        if doc is None:
            return None, 0  # what we knew stays: it is written back (see _catch_up)
        try:
            state = RolloutState.from_dict(json.loads(doc))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Never moved aside or overwritten here: other replicas read the same key.
            raise StateError(f"cannot read the cluster state {self.key}: {exc}") from None
        number = int(version or 0)
        if number >= self.version:  # an older one than we knew is Redis having lost data
            self.version = number
            self._doc = doc.decode() if isinstance(doc, bytes) else str(doc)
        return state, number

    async def save(self, state: RolloutState, version: int) -> int:
        doc = state.to_dict()
        doc["events"] = doc["events"][-self.max_events:]
        text = json.dumps(doc, default=str)
        epoch = self.fence()
        ok, current = await self._cas(keys=[self.key, self.channel, self.epoch_key],
                                      args=[version, text, "" if epoch is None else epoch])
        if ok == -1:
            raise StaleEpoch(f"{self.key}: lease epoch {epoch} is stale (epoch {current} "
                             "was handed out since); not written")
        if not ok:
            raise VersionConflict(f"{self.key} is at version {current}, not {version}")
        self.version = int(current)
        self._doc = text
        return self.version

    def watch(self, on_change: OnChange) -> None:
        self._watchers.append(on_change)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(),
                                                                name="veer-state-watch")

    async def _follow(self) -> None:
        """Announcements as they come, and a poll of the version for the ones missed;
        while Redis is away, retried every ``poll`` seconds (the last state stays)."""
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await pubsub.get_message(ignore_subscribe_messages=True,
                                                 timeout=self.poll)
                    await self._catch_up()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("cluster state announcements lost (%s); retrying", exc)
                await asyncio.sleep(self.poll)
            finally:
                with contextlib.suppress(Exception):
                    # unsubscribes and gives its connection back
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def _catch_up(self) -> None:
        try:
            raw = await self.client.hget(self.key, "version")
            current = 0 if raw is None else int(raw)
            if current < self.version and self._doc is not None:
                if await self._restore(keys=[self.key, self.channel],
                                       args=[self.version, self._doc]):
                    self.restored += 1
                    log.warning("cluster state %s was at version %d, older than the %d this "
                                "replica knew (Redis lost data?): wrote it back", self.key,
                                current, self.version)
                return
            if current <= self.version:
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
