"""A pool's endpoint choice and passive health together: what the exchange asks for.

The algorithm is the config's ``balance`` (one module each); a pool of one
endpoint, a sidecar's usual case, has nothing to choose and skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from proxy.config.model import Health
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.health import PassiveHealth
from proxy.upstream.least_outstanding import LeastOutstanding
from proxy.upstream.round_robin import RoundRobin


class Picker(Protocol):
    """A balancing algorithm."""

    def pick(self, now: float, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """A healthy endpoint not in ``exclude``, or None when there is none."""
        ...


ALGORITHMS: dict[str, Callable[[Sequence[Endpoint]], Picker]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
}


class _Sole:
    """A pool of one endpoint: nothing to choose."""

    __slots__ = ("_ep",)

    def __init__(self, ep: Endpoint) -> None:
        self._ep = ep

    def pick(self, now: float, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        ep = self._ep
        return ep if ep.ejected_until <= now and ep not in exclude else None


class Balancer:
    """Picks an endpoint of one pool and keeps its passive health."""

    __slots__ = ("endpoints", "health", "pick", "policy", "report_failure", "report_success")

    def __init__(self, endpoints: Sequence[Endpoint], policy: str, health: Health) -> None:
        if not endpoints:
            raise ValueError("a pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.policy = policy
        picker = (_Sole(self.endpoints[0]) if len(self.endpoints) == 1
                  else ALGORITHMS[policy](self.endpoints))
        self.health = PassiveHealth(self.endpoints, health)
        # Bound once: the exchange calls these per request.
        self.pick: Callable[..., Endpoint | None] = picker.pick
        self.report_success: Callable[[Endpoint], None] = self.health.report_success
        self.report_failure: Callable[[Endpoint, float], bool] = self.health.report_failure

    def healthy_count(self, now: float) -> int:
        """How many endpoints are eligible now."""
        return self.health.healthy_count(now)

    def usable_count(self, now: float) -> int:
        """Endpoints neither ejected nor on a failure streak long enough to eject them."""
        return self.health.usable_count(now)
