"""One task sweeps every deadline: no timer object per request.

Connections and exchanges that have a deadline register themselves; each
sweep (every ``period`` seconds) calls ``check(now)`` on them, and each decides
for itself whether a timeout has passed. Registration is a set insert, so the
hot path stays cheap; precision is one period, which is ample for timeouts
measured in seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from proxy.timing.tasks import cancel

log = logging.getLogger("veer.timers")


class Timed(Protocol):
    """Something with deadlines to check."""

    def check(self, now: float) -> None:
        """Act on any deadline that has passed by ``now`` (loop time)."""


class Sweeper:
    """Calls ``check(now)`` on every registered object once per period."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.items: set[Timed] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, item: Timed) -> None:
        """Start checking ``item``."""
        self.items.add(item)

    def discard(self, item: Timed) -> None:
        """Stop checking ``item``."""
        self.items.discard(item)

    def start(self) -> None:
        """Start the sweeping task on the running loop."""
        if self._task is not None:
            raise RuntimeError("sweeper already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="veer-sweeper")

    async def stop(self) -> None:
        """Stop sweeping."""
        await cancel(self._task)
        self._task = None

    def sweep(self, now: float) -> None:
        """One pass; a failing check must not stop the others."""
        for item in list(self.items):
            try:
                item.check(now)
            except Exception:  # a bug in one check must not stop every timeout
                log.exception("deadline check failed for %r", item)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            self.sweep(loop.time())
