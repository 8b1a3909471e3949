"""The controller's lease in Redis: one replica decides at a time, fenced by an epoch.

``SET NX PX`` takes the lease; every acquisition draws a new epoch from
``INCR`` (never below the newest this replica has seen, so a Redis that lost
its data cannot hand out an old epoch again), and saves made under the lease
carry it (``RedisStore`` refuses a stale one). The holder renews well inside
the expiry; ``held`` is judged on this process's clock from the moment the
renewal was *sent*, so it turns false before Redis lets the key go, and a
process paused past its lease (SIGSTOP) sees it lost as soon as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from proxy.timing.clock import Clock
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.cluster")

# KEYS: lease, epoch counter. ARGV: member id, ttl ms, the newest epoch this member saw.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if epoch <= floor then
  epoch = floor + 1
  redis.call('SET', KEYS[2], epoch)
end
local value = ARGV[1] .. ' ' .. epoch
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"""

# KEYS: lease. ARGV: our value, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _parse(value: bytes | str) -> tuple[str, int]:
    text = value.decode() if isinstance(value, bytes) else value
    member, _, epoch = text.rpartition(" ")
    return member, int(epoch)


class RedisLease:
    """``Lease`` held through Redis; ``run`` keeps it (or keeps trying) until cancelled."""

    def __init__(self, client: aioredis.Redis, name: str, member: str, clock: Clock,
                 ttl: float = 2.0) -> None:
        self.client = client
        self.key = f"veer:{name}:lease"
        self.epoch_key = f"veer:{name}:epoch"
        self.member = member
        self.clock = clock
        self.ttl = ttl
        self.leader: str | None = None  # the holder as last seen
        self.epoch = 0  # ours while held
        self.newest_epoch = 0  # the newest seen (ours or the holder's)
        self.acquired = 0  # times this process took the lease
        self._value: str | None = None
        self._until = 0.0  # wall time: held before this
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._task: asyncio.Task[None] | None = None

    def held(self, now: float) -> bool:
        return self._value is not None and now < self._until

    def fence(self) -> int | None:
        """The epoch a save carries: ours while held, else None (an operator's write)."""
        return self.epoch if self.held(self.clock.wall()) else None

    async def attempt(self) -> bool:
        """Renew (or try to take) the lease once; True while held."""
        sent = self.clock.wall()
        ttl_ms = int(self.ttl * 1000)
        if self._value is not None and self.held(sent):
            if await self._renew(keys=[self.key], args=[self._value, ttl_ms]):
                self._until = sent + self.ttl * 0.9
                return True
            log.warning("cluster lease lost (renewal refused)")
            self._value = None
        ok, value = await self._acquire(keys=[self.key, self.epoch_key],
                                        args=[self.member, ttl_ms, self.newest_epoch])
        holder, epoch = _parse(value)
        self.leader = holder
        self.newest_epoch = max(self.newest_epoch, epoch)
        if ok:
            self._value, self.epoch = value.decode() if isinstance(value, bytes) else value, epoch
            self._until = sent + self.ttl * 0.9
            self.acquired += 1
            log.info("cluster lease taken by %s (epoch %d)", self.member, epoch)
            return True
        self._value = None
        return False

    def start(self) -> None:
        """Keep the lease, or keep trying for it, in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="veer-lease")

    async def _run(self) -> None:
        while True:
            try:
                holding = await self.attempt()
            except (aioredis.RedisError, OSError) as exc:
                if self._value is not None:
                    log.warning("cluster lease not renewed: %s", exc)
                holding = self.held(self.clock.wall())
            # Renew at a quarter of the lease; a follower asks every eighth, so a lease
            # left by a dead holder is taken within ttl + ttl/8.
            await asyncio.sleep(self.ttl / (4 if holding else 8))

    async def stop(self) -> None:
        """Stop renewing and hand the lease back at once (a graceful stop fails over fast)."""
        await cancel(self._task)
        self._task = None
        value, self._value = self._value, None
        if value is not None:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self._release(keys=[self.key], args=[value])
