"""One replica's part in a cluster: its reports out, everyone's reports in, its presence.

Every tick the member appends its reports (this process's, or each of its
workers') to one Redis Stream of bounded length, and writes its entry in the
members hash (who it is, where it listens, when it last reported). A reader
follows the stream and folds every report, its own included, into one
``MergedTelemetry``: the picture /status shows and the leader judges. While
Redis is away, reports wait in a bounded queue (their counters are
cumulative, so the newest says it all; slots older than the queue are lost)
and the picture stays at what it last heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.cluster.lease import RedisLease
from proxy.cluster.redis_store import RedisStore
from proxy.config.model import Cluster
from proxy.routing.variant import VARIANTS
from proxy.telemetry.merged import MergedTelemetry
from proxy.telemetry.report import Report
from proxy.timing.clock import Clock
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.cluster")

STREAM_LENGTH = 20_000  # reports kept (approximately): minutes of a few replicas' ticks
QUEUED = 2_000  # reports held while Redis is away
GONE_AFTER = 10.0  # seconds without a report: a member is no longer listed
REDIS_ERRORS = (aioredis.RedisError, OSError)
READ_EVERY = 0.02  # seconds between reads of the stream while it has nothing new


def connect(url: str) -> aioredis.Redis:
    """A client for the cluster's Redis. A pooled connection to a Redis that has since
    restarted fails its next command with a connection error (the old socket is dead):
    that command is sent again, once or twice, on a fresh connection. Only connection
    errors are retried, never a timeout, which may mean the command was applied."""
    return aioredis.from_url(
        url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        retry_on_error=[RedisConnectionError])


def member_id(cfg: Cluster) -> str:
    """The configured id, else ``host-pid`` (unique per process on a host)."""
    return cfg.id or f"{socket.gethostname()}-{os.getpid()}"


class Member:
    """This replica in the cluster named by ``cfg``."""

    def __init__(self, cfg: Cluster, clock: Clock, info: dict[str, Any], tick: float = 0.25,
                 window: int = 60, max_events: int = 500,
                 produce: Callable[[], list[Report]] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.id = member_id(cfg)
        self.info = info  # what others see of us: listen, admin, pid, workers, ...
        self.tick = tick
        self.produce = produce
        self.client = connect(cfg.redis)
        self.lease = RedisLease(self.client, cfg.name, self.id, clock, cfg.lease)
        self.store = RedisStore(self.client, cfg.name, max_events, poll=0.5,
                                fence=self.lease.fence)
        self.weights_store = RedisStore(self.client, f"{cfg.name}.weights", max_events,
                                        poll=0.5)
        self.view = MergedTelemetry(clock, window)
        self.stream = f"veer:{cfg.name}:reports"
        self.members_key = f"veer:{cfg.name}:members"
        self.reachable = True
        self.last_report = 0.0  # wall time our reports last reached Redis
        self.reports_in = 0  # reports folded into the picture
        self._members: list[dict[str, Any]] = []
        self._pending: deque[Report] = deque(maxlen=QUEUED)
        self._tasks: list[asyncio.Task[None]] = []

    def offer(self, report: Report) -> None:
        """Queue a report for the stream (sent on the next tick)."""
        self._pending.append(report)

    async def start(self) -> None:
        """Start the lease, the publisher and the reader."""
        loop = asyncio.get_running_loop()
        self.lease.start()
        self._tasks = [loop.create_task(self._publish_loop(), name="veer-cluster-out"),
                       loop.create_task(self._read_loop(), name="veer-cluster-in")]

    async def stop(self) -> None:
        """Stop everything, hand the lease back, leave the members list."""
        for task in self._tasks:
            await cancel(task)
        self._tasks = []
        with contextlib.suppress(*REDIS_ERRORS):
            await self._publish()  # the last counters
            await self.client.hdel(self.members_key, self.id)
        await self.lease.stop()
        await self.store.close()
        await self.weights_store.close()
        await self.client.aclose()

    # -- out ---------------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self._publish()
                if not self.reachable:
                    log.info("cluster: Redis reachable again")
                self.reachable = True
            except REDIS_ERRORS as exc:
                if self.reachable:
                    log.warning("cluster: Redis unreachable (%s); serving on the last-known "
                                "weights", exc)
                self.reachable = False

    async def _publish(self) -> None:
        if self.produce is not None:
            for report in self.produce():
                self.offer(report)
        sending = list(self._pending)
        now = self.clock.wall()
        entry = {**self.info, "id": self.id, "last_report": now,
                 "requests": self._own_requests(sending)}
        async with self.client.pipeline(transaction=False) as pipe:
            for report in sending:
                pipe.xadd(self.stream, {"r": json.dumps(report.to_wire())},
                          maxlen=STREAM_LENGTH, approximate=True)
            pipe.hset(self.members_key, self.id, json.dumps(entry))
            await pipe.execute()
        for _ in sending:
            self._pending.popleft()
        self.last_report = now

    def _own_requests(self, sending: list[Report]) -> dict[str, int]:
        newest: dict[str, Report] = {r.reporter: r for r in sending}
        return {v: sum(c.requests for r in newest.values()
                       if (c := r.counters.get(v)) is not None) for v in VARIANTS}

    # -- in ----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        last = "$"
        refreshed = 0.0
        while True:
            try:
                if last == "$":  # start at the newest entry: counters are cumulative
                    newest: Any = await self.client.xrevrange(self.stream, count=1)
                    last = newest[0][0].decode() if newest else "0-0"
                # Not XREAD BLOCK: a stop that cancels us mid-command could wait on the
                # client's cleanup forever (seen under uvloop); polling costs one
                # round trip per READ_EVERY.
                got: Any = await self.client.xread({self.stream: last}, count=1000)
                for _, entries in got:
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        self._ingest(fields.get(b"r"))
                if not got:
                    await asyncio.sleep(READ_EVERY)
                if self.clock.monotonic() - refreshed >= 1.0:
                    refreshed = self.clock.monotonic()
                    await self._refresh_members()
            except REDIS_ERRORS:
                await asyncio.sleep(0.5)  # the publisher logs it; the picture stays as it was

    def _ingest(self, raw: bytes | None) -> None:
        try:
            report = Report.from_wire(json.loads(raw or b""))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster: unreadable report skipped: %s", exc)
            return
        self.view.ingest(report)
        self.reports_in += 1

    async def _refresh_members(self) -> None:
        raw = await self.client.hgetall(self.members_key)
        now = self.clock.wall()
        members = []
        for key, value in raw.items():
            try:
                entry = json.loads(value)
                age = now - float(entry["last_report"])
            except (ValueError, KeyError, TypeError):
                continue
            if age > 6 * GONE_AFTER:
                await self.client.hdel(self.members_key, key)
            elif age <= GONE_AFTER:
                members.append({**entry, "age_s": round(max(0.0, age), 3)})
        self._members = sorted(members, key=lambda m: str(m["id"]))

    # -- what /status shows ------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """``{"name", "self", "leader", "members": [...]}``: leader null while unknown or
        while Redis is unreachable."""
        held = self.lease.held(self.clock.wall())
        seen = self.lease.leader if self.reachable else None
        # Never ourselves unless held now: a replica woken past its lease is not the leader,
        # whatever it last saw.
        leader = self.id if held else (None if seen == self.id else seen)
        members = [{**m, "leader": m["id"] == leader} for m in self._members]
        return {"name": self.cfg.name, "self": self.id, "leader": leader,
                "redis_reachable": self.reachable, "epoch": self.lease.newest_epoch,
                "members": members}
