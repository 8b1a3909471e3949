"""Passive health: eject an endpoint after consecutive failures, for a while, never all.

An endpoint is ejected after ``consecutive_failures`` connect failures or 5xx
in a row, for ``ejection_time``, but never more than ``max_ejected_percent`` of
the pool (at least one when it is not 0, as Envoy) and never the last healthy
endpoint. No I/O: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.config.model import Health
from proxy.upstream.endpoint import Endpoint


class PassiveHealth:
    """The health of one pool's endpoints, judged from the answers they give."""

    __slots__ = ("config", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint], config: Health) -> None:
        self.endpoints = endpoints
        self.config = config

    def report_success(self, ep: Endpoint) -> None:
        """A non-5xx answer: the failure streak ends."""
        ep.failures = 0

    def report_failure(self, ep: Endpoint, now: float) -> bool:
        """A connect failure or 5xx; returns True when it ejected the endpoint."""
        ep.failures += 1
        if ep.failures < self.config.consecutive_failures or not ep.healthy(now):
            return False
        healthy = self.healthy_count(now)
        ejected = len(self.endpoints) - healthy
        pct = self.config.max_ejected_percent
        allowed = max(1, len(self.endpoints) * pct // 100) if pct else 0
        if healthy <= 1 or ejected + 1 > allowed:
            return False  # never the last healthy one, whatever the percent says
        ep.ejected_until = now + self.config.ejection_time
        ep.ejections += 1
        ep.failures = 0
        return True

    def healthy_count(self, now: float) -> int:
        """How many endpoints are eligible now."""
        return sum(1 for e in self.endpoints if e.healthy(now))

    def usable_count(self, now: float) -> int:
        """Endpoints neither ejected nor on a failure streak long enough to eject them
        (the last endpoint is never ejected, but it can still be down)."""
        limit = self.config.consecutive_failures
        return sum(1 for e in self.endpoints if e.healthy(now) and e.failures < limit)
