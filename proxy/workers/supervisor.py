"""The supervisor of a host's workers: one listener, N processes, one picture.

It binds the listener once and every worker inherits it (a connection waits
in the kernel's queue until some worker accepts it, so a worker restarting
never refuses anyone). It pushes the live state to every worker as it
changes and asks them to reload after its own reload; it folds their
reports into the host's picture (and, in a cluster, passes them on to the
stream). A worker that dies is started again after a backoff (0.1 s,
doubling to 5 s; reset once a worker has lived 10 s), with an event and a
count on /metrics. Stopping sends SIGTERM to every worker, waits for their
drains, and kills only what outlives the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from proxy.control.state import Event
from proxy.runtime.server import ProxyServer
from proxy.telemetry.merged import MergedTelemetry
from proxy.telemetry.report import Report
from proxy.timing.tasks import cancel
from proxy.workers.channel import Channel

log = logging.getLogger("veer.supervisor")

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
STABLE_AFTER = 10.0  # seconds a worker must live for its slot's backoff to reset
OWN_REPORT_EVERY = 0.25  # seconds between the supervisor's own outcome reports


@dataclass(slots=True)
class _Slot:
    """One worker index: its current process and channel."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    serving: bool = False  # it has reported: it is past its start-up and accepting
    task: asyncio.Task[None] | None = None
    backoff: float = FIRST_BACKOFF


class Supervisor:
    """Runs ``count`` workers for ``proxy`` (a ``Role.SUPERVISOR`` server)."""

    def __init__(self, proxy: ProxyServer, count: int) -> None:
        self.proxy = proxy
        self.rt = proxy.rt
        self.count = count
        self.listener: socket.socket | None = None
        self.slots = [_Slot(i) for i in range(count)]
        self.restarts_total = 0
        self._stopping = False
        self._own: asyncio.Task[None] | None = None
        assert isinstance(self.rt.host_view, MergedTelemetry)
        self.host: MergedTelemetry = self.rt.host_view

    @property
    def alive(self) -> int:
        """Workers running now."""
        return sum(1 for s in self.slots
                   if s.serving and s.proc is not None and s.proc.returncode is None)

    @property
    def restarts(self) -> int:
        return self.restarts_total

    @property
    def port(self) -> int:
        """The bound port (the config may ask for 0)."""
        assert self.listener is not None
        port: int = self.listener.getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind, then start every worker (the listener queues connections meanwhile)."""
        if not self.rt.config.text:
            raise RuntimeError("workers run the config's text: load the config from a file")
        listen = self.rt.config.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.listener = socket.create_server((listen.host, listen.port), family=family,
                                             backlog=4096)
        if self.proxy.member is not None:  # members list the port actually bound
            self.proxy.member.info["listen"] = f"{listen.host}:{self.port}"
        self.rt.live.on_change = self._push_live
        self.rt.reload_hooks.append(self._reload_workers)
        self.rt.reopen_hooks.append(self._reopen_workers)
        self.rt.health_hooks.append(self._push_health)
        self.rt.workers = self
        self._own = asyncio.get_running_loop().create_task(self._own_outcomes(),
                                                           name="veer-supervisor-outcomes")
        for slot in self.slots:
            await self._spawn(slot)

    async def _own_outcomes(self) -> None:
        """Outcome events posted to this process's admin API join the host's picture (and
        the cluster's) as a report of their own, like a worker's."""
        reporter = f"supervisor-{os.getpid()}-{self.rt.clock.wall():.3f}"
        seq = 0
        try:
            while True:
                await asyncio.sleep(OWN_REPORT_EVERY)
                seq = self._report_own(reporter, seq)
        finally:
            self._report_own(reporter, seq)  # the last events before a stop

    def _report_own(self, reporter: str, seq: int) -> int:
        outcomes = self.rt.outcomes.drain()
        if outcomes is None:
            return seq
        report = Report(reporter, self.rt.clock.wall(), {}, outcomes=outcomes, seq=seq + 1)
        self.host.ingest(report)
        if self.proxy.member is not None:
            self.proxy.member.offer(report)
        return seq + 1

    async def _spawn(self, slot: _Slot) -> None:
        assert self.listener is not None
        parent, child = socket.socketpair()
        fds = (self.listener.fileno(), child.fileno())
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.workers.worker", str(fds[0]), str(fds[1]),
                str(slot.index), pass_fds=fds)
        finally:
            child.close()
        slot.serving = False
        slot.channel = await Channel.open(parent)
        config = self.rt.config  # the one running here, not whatever the file says now
        slot.channel.send({"config": {"text": config.text, "source": config.source},
                           "live": self.rt.live.to_wire(), "health": self.rt.down_endpoints()})
        slot.task = asyncio.get_running_loop().create_task(
            self._follow(slot, slot.proc, slot.channel), name=f"veer-worker-{slot.index}")
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    async def _follow(self, slot: _Slot, proc: asyncio.subprocess.Process,
                      channel: Channel) -> None:
        """Take the worker's reports until it goes; then start another in its place."""
        loop = asyncio.get_running_loop()
        born = loop.time()
        member = self.proxy.member
        while True:
            try:
                message = await channel.receive()
            except ValueError as exc:  # the stream cannot be trusted: start a fresh worker
                log.error("worker %d: %s; stopping it", slot.index, exc)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                break
            if message is None:
                break
            raw = message.get("report")
            if raw is None:
                continue
            slot.serving = True
            try:
                report = Report.from_wire(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("worker %d: unreadable report: %s", slot.index, exc)
                continue
            self.host.ingest(report)
            if member is not None:
                member.offer(report)
        code = await proc.wait()
        channel.close()
        if self._stopping:
            return
        lived = loop.time() - born
        if lived >= STABLE_AFTER:
            slot.backoff = FIRST_BACKOFF
        delay, slot.backoff = slot.backoff, min(MAX_BACKOFF, slot.backoff * 2)
        self.restarts_total += 1
        reason = f"worker {slot.index} (pid {proc.pid}) exited with {code} after {lived:.1f}s"
        log.error("%s; starting another in %.1fs", reason, delay)
        self.rt.journal.record(Event(self.rt.clock.wall(), "worker-restarted",
                                     f"pid {proc.pid}", f"worker {slot.index}", reason, "veer"))
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(slot)

    def _push_live(self) -> None:
        message = {"live": self.rt.live.to_wire()}
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send(message)

    def _reload_workers(self) -> None:
        text = self.rt.config.text  # what the supervisor validated and now runs
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send({"reload": text})

    def _push_health(self, variant: str, label: str, up: bool) -> None:
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send({"health": [[variant, label, up]]})

    def _reopen_workers(self) -> None:
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send({"reopen": True})

    async def stop(self, timeout: float) -> bool:
        """SIGTERM every worker (each drains), wait up to ``timeout`` plus a margin, kill
        what is left; True if all exited by themselves."""
        self._stopping = True
        await cancel(self._own)
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if self.listener is not None:
            # Our copy would keep the socket listening after every worker closed theirs:
            # connections would queue where nobody accepts them. New ones are refused.
            self.listener.close()
        clean = True
        if procs:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                            timeout=timeout + 5)
            for proc in procs:
                if proc.returncode is None:
                    clean = False
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()  # only our own workers, by their PIDs
                    await proc.wait()
            for fut in pending:
                await cancel(fut)  # type: ignore[arg-type]
        for slot in self.slots:
            await cancel(slot.task)
            if slot.channel is not None:
                slot.channel.close()
        self.rt.live.on_change = None
        return clean
