"""Endpoint choice and passive health for one variant's pool.

Round-robin walks the endpoints in turn; least-outstanding takes the one with
the fewest in-flight requests (ties broken round-robin). Passive health
ejects an endpoint after ``consecutive_failures`` connect failures or 5xx in a
row, for ``ejection_time``, but never more than ``max_ejected_percent`` of the
pool (at least one when it is not 0) and never the last healthy endpoint.
No I/O here: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.config.model import Address, Health


class Endpoint:
    """One backend address with its live counters and health."""

    __slots__ = ("address", "authority", "connects", "ejected_until", "ejections", "failures",
                 "idle", "label", "outstanding", "total")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.label = f"http://{address}"
        self.authority = str(address).encode()  # Host for clients that sent none
        self.outstanding = 0
        self.total = 0
        self.connects = 0  # new upstream connections opened (keep-alive reuse shows here)
        self.failures = 0  # consecutive
        self.ejected_until = 0.0
        self.ejections = 0
        # Idle keep-alive connections (LIFO); typed loosely to keep this module pure.
        self.idle: list[object] = []

    def healthy(self, now: float) -> bool:
        """Not ejected, or the ejection has run out."""
        return self.ejected_until <= now

    def __repr__(self) -> str:
        return f"Endpoint({self.label}, outstanding={self.outstanding})"


class Balancer:
    """Picks an endpoint of one pool and keeps its passive health."""

    def __init__(self, endpoints: Sequence[Endpoint], policy: str, health: Health) -> None:
        if not endpoints:
            raise ValueError("a pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.policy = policy
        self.health = health
        self._next = 0

    def pick(self, now: float, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """A healthy endpoint not in ``exclude``, or None when there is none."""
        eps = self.endpoints
        n = len(eps)
        if n == 1:  # a sidecar's usual pool: nothing to choose
            ep = eps[0]
            return ep if ep.ejected_until <= now and ep not in exclude else None
        start = self._next
        self._next = (start + 1) % n
        if self.policy == "least_outstanding":
            best: Endpoint | None = None
            for i in range(n):
                ep = eps[(start + i) % n]
                if ep.ejected_until <= now and ep not in exclude and (
                        best is None or ep.outstanding < best.outstanding):
                    best = ep
            return best
        for i in range(n):
            ep = eps[(start + i) % n]
            if ep.ejected_until <= now and ep not in exclude:
                return ep
        return None

    def report_success(self, ep: Endpoint) -> None:
        """A non-5xx answer: the failure streak ends."""
        ep.failures = 0

    def report_failure(self, ep: Endpoint, now: float) -> bool:
        """A connect failure or 5xx; returns True when it ejected the endpoint."""
        ep.failures += 1
        if ep.failures < self.health.consecutive_failures or not ep.healthy(now):
            return False
        healthy = [e for e in self.endpoints if e.healthy(now)]
        ejected = len(self.endpoints) - len(healthy)
        pct = self.health.max_ejected_percent
        # As Envoy: at least one may be ejected whenever the percent is not 0.
        allowed = max(1, len(self.endpoints) * pct // 100) if pct else 0
        # Never eject the last healthy endpoint, whatever the percent says.
        if len(healthy) <= 1 or ejected + 1 > max(allowed, 0):
            return False
        ep.ejected_until = now + self.health.ejection_time
        ep.ejections += 1
        ep.failures = 0
        return True

    def healthy_count(self, now: float) -> int:
        """How many endpoints are eligible now."""
        return sum(1 for e in self.endpoints if e.healthy(now))

    def usable_count(self, now: float) -> int:
        """Endpoints neither ejected nor on a failure streak long enough to eject them
        (the last endpoint is never ejected, but it can still be down)."""
        limit = self.health.consecutive_failures
        return sum(1 for e in self.endpoints if e.healthy(now) and e.failures < limit)
