"""What the data plane reads: one snapshot of what the config decides, and the live process.

``Snapshot`` is immutable: the router, the upstream pools and the limits and
timeouts of one config, built whole and swapped whole on reload. A connection
reads the current snapshot when each request's head begins, and the exchange
keeps that request's snapshot to the end, so nothing derived from config is
ever copied into a connection, and nothing in flight sees half a reload.

``DataPlane`` is what every connection of the process shares: the current
snapshot, the ``LiveState`` the controller writes, the recorder, the client
table, the deadline sweeper, the open connections (for drain), the one
upstream read buffer and the access log's buffer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from mypy_extensions import mypyc_attr

from proxy.config.model import Config, Limits, Timeouts
from proxy.http.fairness import ClientTable
from proxy.http.mirror import Mirror
from proxy.routing.live import LiveState
from proxy.routing.router import Router
from proxy.telemetry.access_log import AccessLogBuffer
from proxy.telemetry.outcomes import Outcomes
from proxy.telemetry.recorder import Recorder
from proxy.timing.sweeper import Sweeper
from proxy.upstream.connection import ReadBuffer
from proxy.upstream.pools import Pools


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one config decides for the data plane."""

    config: Config
    router: Router
    pools: Pools
    limits: Limits
    timeouts: Timeouts
    recording: bool
    upgrades: frozenset[str]

    @staticmethod
    def build(config: Config, previous: Snapshot | None = None) -> Snapshot:
        """The snapshot of ``config``; endpoints that ``previous`` had keep their state
        (call ``retire`` on the new one once it is in use)."""
        return Snapshot(config, Router(config.routing),
                        Pools(config, previous.pools if previous is not None else None),
                        config.limits, config.timeouts, config.recording.enabled,
                        config.upgrades)


def metric_sources(config: Config) -> dict[str, set[str]]:
    """The metrics the config names (experiment and metric gates), by source."""
    out: dict[str, set[str]] = {}
    if config.experiment is not None:
        for m in config.experiment.metrics:
            out.setdefault(m.source, set()).add(m.name)
    if config.rollout is not None:
        for phase in config.rollout.phases:
            for g in phase.gates.metrics:
                out.setdefault(g.source, set()).add(g.name)
    return out


def configure_outcomes(outcomes: Outcomes, config: Config) -> None:
    """Keep what the config's experiment and metric gates need, and nothing else."""
    sources = metric_sources(config)
    per_user = sources.keys() - {"prometheus"}
    outcomes.configure(sources.get("header", ()), sources.get("traffic", ()),
                       active=config.experiment is not None or bool(per_user),
                       max_users=config.experiment.max_users if config.experiment else
                       outcomes.max_users)


class Drainable(Protocol):
    """An open client connection, as drain and stop see it."""

    def close(self) -> None: ...
    def abort(self) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the Runtime is one (not compiled)
class DataPlane:
    """The state every connection of one process shares. (Compiled: each request reads a
    dozen of its attributes, a struct field each instead of a dict lookup.)"""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.snapshot = Snapshot.build(config)
        self.live = LiveState(config.new_weight_bp)
        self.live.set_mirror(config.mirror.percent_bp)  # a rollout's phases set it after
        self.recorder = Recorder(config.recording.window)
        self.outcomes = Outcomes()
        configure_outcomes(self.outcomes, config)
        self.access_log: AccessLogBuffer | None = None  # set while a writer takes its lines
        self.clients = ClientTable()
        self.connections: set[Drainable] = set()
        self.read_buffer = ReadBuffer()  # where every upstream read lands (see upstream)
        self.upstream_in_flight = 0
        self.draining = False
        self.sweeper = Sweeper(period=_sweep_period(config.timeouts))
        self.sweeper.add(_IdleJanitor(self))
        self.mirror = Mirror(self)  # copies of original's requests to new, when mirroring
        self.sweeper.add(self.mirror)

    @property
    def config(self) -> Config:
        """The config of the current snapshot."""
        return self.snapshot.config

    def swap(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current: every request that begins after this reads it."""
        previous, self.snapshot = self.snapshot, snapshot
        snapshot.pools.retire(previous.pools)
        configure_outcomes(self.outcomes, snapshot.config)


class _IdleJanitor:
    """Closes upstream keep-alive connections idle longer than the configured time."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def check(self, now: float) -> None:
        self.plane.snapshot.pools.expire_idle(now)


def _sweep_period(t: Timeouts) -> float:
    """A quarter of the shortest timeout, between 10 ms and 250 ms."""
    active = [v for v in (t.first_byte, t.idle, t.total, t.client_header, t.client_idle) if v > 0]
    return min(0.25, max(0.01, min(active, default=1.0) / 4))
