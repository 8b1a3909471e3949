"""The active health checker: probes every endpoint of the current pools each interval.

One checker per host (the single process, or a supervisor, which pushes each
transition to its workers): an endpoint sees one probe per interval however
many workers serve. Each round probes the pools of the snapshot current then,
so a reload's endpoints are probed from the next round, and its settings
(interval, path, thresholds) apply from then on too; a reload that turns the
checks off brings down endpoints back to passive health alone. Probes of one
round run concurrently, each bounded by the timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from proxy.config.model import ActiveHealth
from proxy.routing.variant import Variant
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.pools import Pools
from proxy.upstream.probe import forget, judge, probe

log = logging.getLogger("veer.health")

IDLE_EVERY = 1.0  # seconds between looks at the config while checks are off

# (variant, endpoint, up, what the probe saw)
OnChange = Callable[[Variant, Endpoint, bool, str], None]


class ActiveHealthChecker:
    """Probes the pools that ``pools()`` returns, calling ``on_change`` on each transition."""

    def __init__(self, pools: Callable[[], Pools], active: Callable[[], ActiveHealth | None],
                 on_change: OnChange) -> None:
        self.pools = pools
        self.active = active
        self.on_change = on_change
        self.rounds = 0
        self.transitions: dict[tuple[Variant, str, str], int] = {}  # (variant, label, to)
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Probe from now on (the first round at once: a dead endpoint at start is found
        within ``unhealthy`` intervals)."""
        self._task = loop.create_task(self._run(), name="veer-health-checks")

    async def stop(self) -> None:
        """Stop probing (a round in flight is cancelled)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            cfg = self.active()
            if cfg is None:
                self._forget_all()
                await asyncio.sleep(IDLE_EVERY)
                continue
            loop = asyncio.get_running_loop()
            began = loop.time()
            try:
                await self.round(cfg)
            except Exception:  # a bug here must not end the checks for good
                log.exception("active health check round failed; probing again next interval")
            await asyncio.sleep(max(0.0, cfg.interval - (loop.time() - began)))

    async def round(self, cfg: ActiveHealth) -> None:
        """Probe every endpoint once and judge each result."""
        pools = self.pools()
        targets = pools.endpoints()
        results = await asyncio.gather(*(
            probe(ep, cfg, pools.tls[v] if ep.address.scheme == "https" else None)
            for v, ep in targets), return_exceptions=True)
        self.rounds += 1
        for (variant, ep), result in zip(targets, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            passed, seen = (False, f"probe error: {result!r}") if isinstance(
                result, BaseException) else result
            change = judge(ep, passed, seen, cfg)
            if change is not None:
                self._changed(variant, ep, change, seen)

    def _changed(self, variant: Variant, ep: Endpoint, up: bool, seen: str) -> None:
        key = (variant, ep.label, "up" if up else "down")
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.on_change(variant, ep, up, seen)

    def _forget_all(self) -> None:
        for variant, ep in self.pools().endpoints():
            if forget(ep):
                self._changed(variant, ep, True, "active health checks off")
