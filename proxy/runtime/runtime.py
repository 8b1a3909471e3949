"""The one runtime object of a process: the data plane, and the control side around it.

Built once at start and passed explicitly to everything that needs it (the
admin API, reload, signals); there are no module-level singletons.
``Runtime`` is the ``DataPlane`` every connection shares, plus the rollout
runner when the config has a rollout, the journal events go to, and the two
pictures of traffic the admin API shows: ``host_view`` (this host: /metrics)
and ``view`` (what the rollout is judged on: the cluster's, the host's
workers', or this process's; /status).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Protocol

from proxy.config.model import AccessLog, Config
from proxy.control.experiments import ExperimentRunner
from proxy.control.journal import EventLog, Journal
from proxy.control.metric_events import Ingested, ingest
from proxy.control.rollout import RolloutRunner
from proxy.control.shared_weights import SharedWeights
from proxy.http.plane import DataPlane, metric_sources
from proxy.routing.variant import Variant
from proxy.runtime.access_writer import AccessLogWriter, open_log
from proxy.telemetry.access_log import AccessLogBuffer
from proxy.telemetry.prometheus import PrometheusPoller
from proxy.telemetry.report import EndpointReading
from proxy.telemetry.source import LocalTelemetry, Picture, TelemetrySource
from proxy.timing.clock import Clock, SystemClock
from proxy.upstream.active_health import ActiveHealthChecker
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.probe import mark
from proxy.wire.tls import ListenerCertificates


class Telemetry(TelemetrySource, Picture, Protocol):
    """A picture the controller can also judge from."""


class Membership(Protocol):
    """What /status says of the cluster (``proxy.cluster``)."""

    def describe(self) -> dict[str, Any]:
        """``{"name", "self", "leader", "members": [{"id", ...}]}``."""
        ...


class Workers(Protocol):
    """What /metrics says of a supervisor's workers (``proxy.workers``)."""

    @property
    def alive(self) -> int:
        """Workers running now."""
        ...

    @property
    def restarts(self) -> int:
        """Workers started again after one died."""
        ...


class Runtime(DataPlane):
    """Everything one veer process shares."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 clock: Clock | None = None) -> None:
        super().__init__(config, loop)
        self.clock = clock or SystemClock()
        self.rollout: RolloutRunner | None = None  # set at start when the config has one
        self._journal = Journal()
        self.local = LocalTelemetry(self.recorder, self.clock, self.endpoint_readings,
                                    loop.time, self.outcomes)
        self.host_view: Telemetry = self.local  # a supervisor's: its workers merged
        self.view: Telemetry = self.local  # a cluster member's: every replica merged
        self.cluster: Membership | None = None
        self.shared_weights: SharedWeights | None = None  # a cluster without a rollout
        self.reload_hooks: list[Callable[[], None]] = []  # after a reload applied (workers)
        self.reopen_hooks: list[Callable[[], None]] = []  # after SIGUSR1 (workers)
        # After an active health transition (variant, endpoint label, up): a supervisor's
        # workers take it.
        self.health_hooks: list[Callable[[Variant, str, bool], None]] = []
        self.health_checker: ActiveHealthChecker | None = None  # a host's one checker
        self.certificates: ListenerCertificates | None = None  # a TLS listener's
        self.weights_from_config = True  # False: the live weight comes from elsewhere
        self.workers: Workers | None = None  # a supervisor's
        self.prometheus: PrometheusPoller | None = None  # metric gates' queries, if any
        exp = config.experiment
        self.experiment = ExperimentRunner(exp, self.clock.wall()) if exp is not None else None
        self.serves = True  # False for a supervisor: its workers serve (and log)
        self.decides = True  # False for a worker: its supervisor sends the live state
        self.access_writer: AccessLogWriter | None = None

    def set_access_log(self, cfg: AccessLog | None) -> None:
        """Start, change or stop the access log. Raises ``AccessLogError`` when the new file
        cannot be opened; the log as it was then goes on unchanged."""
        writer = self.access_writer
        if cfg is not None and not self.serves:
            os.close(open_log(cfg.path))  # its workers will open it: refuse what they cannot
            return
        if cfg is None:
            if writer is not None:
                writer.close()
            self.access_writer = self.access_log = None
        elif writer is None:
            buffer = AccessLogBuffer(cfg.format)
            self.access_writer = writer = AccessLogWriter(cfg, buffer)  # opens the file
            writer.start(self.loop)
            self.access_log = buffer
        elif writer.cfg != cfg:
            writer.flush()  # the lines so far, in the old format and file
            writer.reopen(cfg)

    def take_health(self, changes: list[list[Any]]) -> None:
        """Active health transitions judged by the supervisor: ``[[variant, label, up]]``."""
        wanted = {(str(v), str(label)): bool(up) for v, label, up in changes}
        for variant, ep in self.endpoints():
            up = wanted.get((variant, ep.label))
            if up is not None:
                mark(ep, up)

    def down_endpoints(self) -> list[list[Any]]:
        """The endpoints active health checks hold out, as ``take_health`` reads them."""
        return [[v, ep.label, False] for v, ep in self.endpoints() if ep.probe_down]

    def reopen_access_log(self) -> None:
        """SIGUSR1: open the access log's path again (logrotate moved the file)."""
        if self.access_writer is not None:
            self.access_writer.flush()
            self.access_writer.reopen()
        for hook in self.reopen_hooks:  # a supervisor's workers reopen theirs
            hook()

    def record_events(self, events: list[Any]) -> Ingested:
        """Outcome events (``POST /experiments/{name}/events``): each attributed to the variant
        that served its user, recorded here and reported like the rest of the telemetry."""
        names = frozenset(metric_sources(self.config).get("events", ()))
        return ingest(events, names, self.view.outcomes, self.outcomes, self.snapshot.router,
                      self.live)

    @property
    def journal(self) -> EventLog:
        """Where events made outside the controller go: the rollout's, else memory."""
        return self.rollout if self.rollout is not None else self._journal

    def endpoints(self) -> list[tuple[Variant, Endpoint]]:
        """Every endpoint of the current snapshot, with its variant."""
        return self.snapshot.pools.endpoints()

    def endpoint_readings(self) -> list[EndpointReading]:
        """Every endpoint's health and connections opened, as a report carries them."""
        now = self.loop.time()
        return [EndpointReading(v, ep.label, ep.healthy(now), ep.connects)
                for v, ep in self.endpoints()]
