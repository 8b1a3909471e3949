"""Both variants' pools as one config describes them, with how to connect to them.

Part of a runtime snapshot: built whole from a config and swapped whole on
reload. Built from the previous ``Pools``, an endpoint that stays keeps its
counters, health and idle connections; one that goes has its idle connections
closed (``retire``). An https endpoint keeps its counters and health but not its
connections: the reload's TLS settings (a new CA, verification turned on) apply to
every connection from then on.
"""

from __future__ import annotations

import logging
import ssl

from proxy.config.model import Config, Pool
from proxy.routing.variant import NEW, ORIGINAL, Variant
from proxy.upstream.balancer import Balancer
from proxy.upstream.connection import UpstreamConnection
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.idle import IdlePool
from proxy.wire.tls import client_context

log = logging.getLogger("veer")


class Pools:
    """The balancers of original and new, their idle connections and connect settings."""

    __slots__ = ("_stale", "balancers", "connect_retries", "connect_timeout", "failover", "idle",
                 "keepalive", "max_idle", "tls")

    def __init__(self, config: Config, previous: Pools | None = None) -> None:
        self.connect_timeout = config.timeouts.connect
        self.connect_retries = config.connect_retries
        self.failover = config.new.failover  # None or "original"
        self.max_idle = config.limits.max_idle_per_endpoint
        self.keepalive = config.timeouts.upstream_keepalive
        self.idle: dict[Endpoint, IdlePool[UpstreamConnection]] = {}
        self._stale: list[IdlePool[UpstreamConnection]] = []  # retired when these go live
        self.balancers: dict[Variant, Balancer] = {}
        # Each pool's context for its https:// endpoints (raises TlsError for a bad file).
        self.tls: dict[Variant, ssl.SSLContext | None] = {}
        pools: tuple[tuple[Variant, Pool], ...] = ((ORIGINAL, config.original), (NEW, config.new))
        for variant, pool in pools:
            self.tls[variant] = client_context(pool.tls, f"upstreams.{variant}.tls",
                                               log.warning) if pool.secure else None
            old = previous.balancers[variant].endpoints if previous is not None else []
            keep = {ep.address: ep for ep in old}
            # pop: a config that lists an address twice gets two endpoints, as before
            endpoints = [keep.pop(a) if a in keep else Endpoint(a) for a in pool.endpoints]
            for ep in endpoints:
                kept = previous.idle.get(ep) if previous is not None else None
                if kept is not None and ep.address.scheme == "https":
                    # Made under the previous TLS settings (another CA, verify off): a
                    # reload re-verifies, so none of them is used again.
                    self._stale.append(kept)
                    kept = None
                self.idle[ep] = kept if kept is not None else IdlePool()
            self.balancers[variant] = Balancer(endpoints, pool.balance, config.health)

    def endpoints(self) -> list[tuple[Variant, Endpoint]]:
        """Every endpoint with its variant."""
        return [(v, ep) for v, b in self.balancers.items() for ep in b.endpoints]

    def retire(self, previous: Pools) -> None:
        """Close the idle connections of endpoints that ``previous`` had and these do not."""
        for ep, idle in previous.idle.items():
            if ep not in self.idle:
                idle.close_all(retire=True)  # and any still in use, once they come back
        for idle in self._stale:  # https endpoints that stay: connected under old settings
            idle.close_all(retire=True)

    def expire_idle(self, now: float) -> None:
        """Close connections idle longer than the upstream keep-alive timeout."""
        if self.keepalive:
            before = now - self.keepalive
            for idle in self.idle.values():
                if idle:
                    idle.expire(before)

    def close_idle(self) -> None:
        """Close every idle connection (the process stops)."""
        for idle in self.idle.values():
            idle.close_all()
