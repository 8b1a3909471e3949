"""Lifecycle of the data plane: build the runtime, listen, drain, stop.

Start in order (sweeper, cluster membership, rollout, listener, rollout
loop) on an ``AsyncExitStack``; stop unwinds the same stack in reverse, and every step
runs even when one before it fails. Drain stops accepting, lets in-flight
exchanges finish within the drain timeout, closes idle keep-alive connections
as they go quiet, then cuts whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from enum import StrEnum

from proxy.cluster.member import REDIS_ERRORS, Member
from proxy.config.model import Config
from proxy.control.lease import Lease, SoleLease
from proxy.control.resume import load_state, open_store, safe_state
from proxy.control.rollout import RolloutRunner
from proxy.control.shared_weights import SharedWeights
from proxy.control.state import Event, StateError
from proxy.control.store import StateStore
from proxy.http.inbound import ClientConnection
from proxy.routing.variant import Variant
from proxy.runtime.runtime import Runtime
from proxy.telemetry import latency
from proxy.telemetry.merged import MergedTelemetry
from proxy.telemetry.prometheus import PrometheusPoller
from proxy.telemetry.report import Reporter
from proxy.timing.clock import Clock
from proxy.timing.tasks import cancel
from proxy.upstream.active_health import ActiveHealthChecker
from proxy.upstream.endpoint import Endpoint
from proxy.wire.ends import protocol_factory
from proxy.wire.tls import ListenerCertificates, server_context

log = logging.getLogger("veer")
EXPERIMENT_EVERY = 1.0  # seconds between looks at an experiment's results


class Role(StrEnum):
    """What this process is on its host."""

    SINGLE = "single"  # serves, and runs the rollout (and cluster membership) itself
    WORKER = "worker"  # serves on an inherited listener; its supervisor decides
    SUPERVISOR = "supervisor"  # runs the rollout and membership; its workers serve


class ProxyServer:
    """The data-plane listener around one ``Runtime``."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None,
                 clock: Clock | None = None, lease: Lease | None = None,
                 sock: socket.socket | None = None, role: Role = Role.SINGLE) -> None:
        self.config = config
        self.rt = Runtime(config, loop or asyncio.get_running_loop(), clock)
        self.lease = lease or SoleLease()
        self.sock = sock  # a listener inherited from a supervisor
        self.role = role
        self.member: Member | None = None
        if role is Role.WORKER:
            self.rt.weights_from_config = False  # the supervisor sends the live state
        self.rt.serves = role is not Role.SUPERVISOR
        self.rt.decides = role is not Role.WORKER
        if role is Role.SUPERVISOR:  # the host's picture is its workers' reports
            self.rt.host_view = self.rt.view = MergedTelemetry(self.rt.clock,
                                                               config.recording.window)
            if config.experiment is not None:
                self.rt.view.outcomes.max_users = config.experiment.max_users
        self._server: asyncio.Server | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def rollout(self) -> RolloutRunner | None:
        """The rollout runner, when the config has a rollout."""
        return self.rt.rollout

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not listening; call start() first")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Start the sweeper, the rollout (before listening: a resumed rollout's weights
        apply to the first request), the listener and the rollout's loop."""
        if self._stack is not None:
            raise RuntimeError("server already started")
        rt = self.rt
        latency.warm_up()  # the first scrape should not pay for the index tables
        async with contextlib.AsyncExitStack() as stack:
            rt.sweeper.start()
            stack.push_async_callback(rt.sweeper.stop)
            rt.set_access_log(self.config.access_log)  # AccessLogError: not started
            stack.callback(rt.set_access_log, None)  # the last lines written
            stack.callback(self._close_idle)  # the pools current at stop, after a reload too
            deciding = self.role is not Role.WORKER
            if deciding and self.config.cluster is not None:
                await self._join_cluster(stack)
            if self.config.experiment is not None:  # merged pictures keep the same bound
                for view in (rt.view, rt.host_view):
                    view.outcomes.max_users = self.config.experiment.max_users
            if deciding and self.config.rollout is not None:
                await self._start_rollout(stack)
            if deciding:  # one checker per host; idle until health.active is configured
                checker = rt.health_checker = ActiveHealthChecker(
                    lambda: rt.snapshot.pools, lambda: rt.snapshot.config.health.active,
                    self._health_changed)
                checker.start(rt.loop)
                stack.push_async_callback(checker.stop)
            tls = self.config.tls
            if tls is not None and self.role is Role.SUPERVISOR:
                server_context(tls)  # its workers serve with these files: refuse bad ones now
            if self.role is not Role.SUPERVISOR:
                context = None
                proto = b"http"
                if tls is not None:
                    rt.certificates = ListenerCertificates(tls)
                    context, proto = rt.certificates.context, b"https"

                connection = protocol_factory(lambda: ClientConnection(rt, proto))

                self._server = await (
                    rt.loop.create_server(connection, sock=self.sock, backlog=4096,
                                          ssl=context)
                    if self.sock is not None else
                    rt.loop.create_server(connection, self.config.listen.host,
                                          self.config.listen.port, backlog=4096,
                                          reuse_address=True, ssl=context))
            stack.push_async_callback(self._close_listener)
            if self.member is not None and self._server is not None:
                self.member.info["listen"] = f"{self.config.listen.host}:{self.port}"
            if rt.rollout is not None:
                stack.push_async_callback(rt.rollout.stop)  # also after a partial start
                await rt.rollout.start()
            if deciding and rt.experiment is not None:
                task = rt.loop.create_task(self._watch_experiment(), name="veer-experiment")
                stack.push_async_callback(cancel, task)
            self._stack = stack.pop_all()

    def _health_changed(self, variant: Variant, ep: Endpoint, up: bool, seen: str) -> None:
        """An endpoint left or rejoined rotation by its probes: an event, a log line, and
        the news to every worker."""
        rt = self.rt
        to = "up" if up else "down"
        reason = f"{seen} (active health check)"
        (log.info if up else log.warning)("endpoint %s (%s) %s: %s", ep.label, variant, to,
                                          reason)
        rt.journal.record(Event(rt.clock.wall(), f"endpoint-{to}", ep.label, to, reason,
                                "health-check", {"variant": variant, "endpoint": ep.label}))
        for hook in rt.health_hooks:
            hook(variant, ep.label, up)

    async def _watch_experiment(self) -> None:
        """Look at the experiment every second: the dashboard's history, decision events."""
        rt = self.rt
        assert rt.experiment is not None
        while True:
            await asyncio.sleep(EXPERIMENT_EVERY)
            for event in rt.experiment.look(rt.view.outcomes, rt.clock.wall()):
                rt.journal.record(event)
                log.info("experiment %s: %s (%s)", rt.experiment.exp.name, event.to,
                         event.reason)

    async def _join_cluster(self, stack: contextlib.AsyncExitStack) -> None:
        """Become a member: reports out (this process's, unless workers report for it),
        the cluster's picture in, the lease and the shared store."""
        rt, cluster = self.rt, self.config.cluster
        assert cluster is not None
        info = {"listen": str(self.config.listen), "admin": str(self.config.admin.listen),
                "pid": os.getpid(), "host": socket.gethostname(),
                "workers": self.config.workers, "started": rt.clock.wall()}
        member = self.member = Member(cluster, rt.clock, info,
                                      window=self.config.recording.window,
                                      max_events=self.config.state.max_events)
        if self.role is Role.SINGLE:  # this process serves: it reports its own recorder
            reporter = Reporter(f"{member.id}/{os.getpid()}/{rt.clock.wall():.3f}",
                                rt.recorder, rt.clock, rt.outcomes)

            def produce() -> list:  # type: ignore[type-arg]
                report = reporter.report(rt.endpoint_readings())
                reporter.delivered()  # queued by the member until Redis takes it
                return [report]

            member.produce = produce
        await member.start()
        stack.push_async_callback(member.stop)
        rt.view = member.view
        rt.cluster = member
        self.lease = member.lease
        rt.weights_from_config = False  # the cluster's weight, whoever set it
        if self.config.rollout is None:
            await self._share_weights(member)

    async def _share_weights(self, member: Member) -> None:
        rt = self.rt
        shared = SharedWeights(member.weights_store, rt.live, self.config.state.max_events)
        try:
            await shared.start()
        except REDIS_ERRORS as exc:
            self._unreachable(f"cluster Redis unreachable ({exc})")
            rt.live.set_weight(0)  # safe until the shared weight is heard
        rt.shared_weights = shared

    def _unreachable(self, problem: str) -> None:
        cluster = self.config.cluster
        assert cluster is not None
        if cluster.on_unreachable == "refuse":
            raise StateError(f"{problem}; refusing to start (cluster.on_unreachable: refuse)")
        log.error("%s; starting safe on original until it answers", problem)

    async def _start_rollout(self, stack: contextlib.AsyncExitStack) -> None:
        rt, rollout, cfg = self.rt, self.config.rollout, self.config.state
        assert rollout is not None
        store: StateStore
        if self.member is not None:
            store = self.member.store
        else:
            store = open_store(cfg, rt.clock)
            stack.push_async_callback(store.close)  # released if what follows fails
        now = rt.clock.wall()
        try:
            state, version = await load_state(store, rollout, cfg, now)
        except REDIS_ERRORS as exc:
            if self.member is None:  # a state file's OSError: not a Redis outage
                raise
            problem = f"cluster Redis unreachable ({exc})"
            self._unreachable(problem)
            state, version = safe_state(rollout, now, "state-unreachable", problem), 0
        queries = {g.name: g.prometheus for p in rollout.phases for g in p.gates.metrics
                   if g.prometheus is not None}
        poller = None
        if queries:
            poller = rt.prometheus = PrometheusPoller(queries, rt.clock)
            poller.start()
            stack.push_async_callback(poller.stop)
        rt.rollout = RolloutRunner(rollout, store, rt.view, rt.live, rt.clock, self.lease, state,
                                   version, cfg.max_events, poller)
        stack.callback(self._forget_rollout)
        await rt.rollout.flush()  # the state it starts from is on disk before it serves

    def _forget_rollout(self) -> None:
        self.rt.rollout = None

    def _close_idle(self) -> None:
        self.rt.snapshot.pools.close_idle()

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for conn in list(self.rt.connections):
                conn.abort()
            await server.wait_closed()

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting; wait for open connections to finish. True if all finished."""
        rt = self.rt
        rt.draining = True
        if self._server is not None:
            self._server.close()
        deadline = rt.loop.time() + (self.config.timeouts.drain if timeout is None else timeout)
        while rt.connections and rt.loop.time() < deadline:
            await asyncio.sleep(0.02)
        return not rt.connections

    async def stop(self) -> None:
        """Stop the rollout, cut remaining connections, close idle upstreams, stop the
        sweeper: the start in reverse, every step even if one fails."""
        self.rt.draining = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
