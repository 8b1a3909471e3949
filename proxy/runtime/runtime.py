"""The one runtime object: config, routing, pools, counters and live weights.

Built once at start and passed explicitly to everything that needs it; there
are no module-level singletons. The weight is a plain int read once per
request at arrival, so a change applies to the next request and never moves
one in flight.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.config.model import Config
from proxy.control.state import Event
from proxy.http.fairness import ClientTable
from proxy.routing.router import NEW, ORIGINAL, Router, Variant
from proxy.telemetry.recorder import Recorder
from proxy.timing.sweeper import Sweeper
from proxy.upstream.connection import ReadBuffer, expire_idle
from proxy.upstream.pool import Balancer, Endpoint

if TYPE_CHECKING:
    from proxy.control.rollout import RolloutRunner
    from proxy.http.inbound import ClientConnection


class Runtime:
    """Everything one veer process shares between connections."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.router = Router(config.routing)
        self.recorder = Recorder(config.recording.window)
        self.recording = config.recording.enabled
        self.balancers: dict[Variant, Balancer] = {
            ORIGINAL: Balancer([Endpoint(a) for a in config.original.endpoints],
                               config.original.balance, config.health),
            NEW: Balancer([Endpoint(a) for a in config.new.endpoints],
                          config.new.balance, config.health),
        }
        self.sweeper = Sweeper(period=_sweep_period(config))
        self.sweeper.add(_IdleJanitor(self))
        self.connections: set[ClientConnection] = set()
        self.new_weight_bp = config.new_weight_bp
        self.upstream_in_flight = 0
        self.clients = ClientTable()
        self.read_buffer = ReadBuffer()  # where every upstream read lands (see upstream)
        # Events when there is no rollout to hold them (manual weights, reloads); newest last.
        self.events: list[Event] = []
        self.draining = False
        self.rollout: RolloutRunner | None = None  # set when the config has a rollout

    def set_weight(self, new_weight_bp: int) -> None:
        """Set the share of users on new, in basis points (0..10000)."""
        if not 0 <= new_weight_bp <= 10000:
            raise ValueError(f"weight must be 0..10000 basis points, got {new_weight_bp}")
        self.new_weight_bp = new_weight_bp

    def record(self, event: Event) -> None:
        """Keep an event of a process without a rollout (the last 500)."""
        self.events.append(event)
        del self.events[:-500]

    def endpoints(self) -> list[tuple[Variant, Endpoint]]:
        """Every endpoint with its variant."""
        return [(v, ep) for v, b in self.balancers.items() for ep in b.endpoints]


class _IdleJanitor:
    """Closes upstream keep-alive connections idle longer than the configured time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def check(self, now: float) -> None:
        keepalive = self.rt.config.timeouts.upstream_keepalive
        if keepalive:
            for _, ep in self.rt.endpoints():
                if ep.idle:
                    expire_idle(ep, now - keepalive)


def _sweep_period(config: Config) -> float:
    """A quarter of the shortest timeout, between 10 ms and 250 ms."""
    t = config.timeouts
    active = [v for v in (t.first_byte, t.idle, t.total, t.client_header, t.client_idle) if v > 0]
    return min(0.25, max(0.01, min(active, default=1.0) / 4))
