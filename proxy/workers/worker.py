"""One worker process: serves on its supervisor's listener and does what it is told.

Started by ``Supervisor`` as ``python -m proxy.workers.worker LISTEN_FD
CHANNEL_FD INDEX``. Its first message carries the config text the supervisor
runs and the live state, before it accepts anything: its first request has
the host's config and weights, whatever the file on disk says by then. It
applies the live state it is sent, reloads with the text it is sent, reports
every tick, and drains on SIGTERM or when its supervisor goes away. It runs
no rollout: the supervisor decides for the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys

import uvloop

from proxy.config.load import parse
from proxy.config.reader import ConfigError
from proxy.runtime.access_writer import AccessLogError
from proxy.runtime.reload import ReloadError, reload_recorded
from proxy.runtime.server import ProxyServer, Role
from proxy.telemetry.report import Reporter
from proxy.timing.tasks import cancel
from proxy.workers.channel import Channel

log = logging.getLogger("veer.worker")

REPORT_EVERY = 0.25  # seconds: the supervisor's controller ticks on what it has


async def serve(listen_fd: int, channel_fd: int, index: int) -> int:
    """Serve until SIGTERM or the supervisor's end of the channel closes."""
    channel = await Channel.open(socket.socket(fileno=channel_fd))
    first = await channel.receive()
    if first is None or "live" not in first or "config" not in first:
        log.error("worker %d: no config and live state from the supervisor; exiting", index)
        return 1
    config = parse(first["config"]["text"], first["config"]["source"])
    proxy = ProxyServer(config, sock=socket.socket(fileno=listen_fd), role=Role.WORKER)
    rt = proxy.rt
    rt.live.take(first["live"])
    rt.take_health(first.get("health", []))
    await proxy.start()
    reporter = Reporter(f"w{index}-{os.getpid()}", rt.recorder, rt.clock, rt.outcomes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):  # the supervisor's to give
        loop.add_signal_handler(sig, lambda: None)

    def reopen() -> None:
        try:
            rt.reopen_access_log()
        except AccessLogError as exc:
            log.error("worker %d: %s; still writing to the file it had open", index, exc)

    def report() -> None:
        channel.send({"report": reporter.report(rt.endpoint_readings()).to_wire()})
        reporter.delivered()

    async def reporting() -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            report()

    async def listening() -> None:
        while True:
            try:
                message = await channel.receive()
            except ValueError as exc:
                log.error("worker %d: %s", index, exc)
                continue
            if message is None:
                log.warning("worker %d: supervisor gone; draining", index)
                stop.set()
                return
            if "live" in message:
                rt.live.take(message["live"])
            if "health" in message:
                rt.take_health(message["health"])
            if "reopen" in message:
                reopen()
            if "reload" in message:
                try:
                    reload_recorded(rt, "supervisor", text=message["reload"])
                except (ConfigError, ReloadError) as exc:
                    log.error("worker %d: reload refused: %s", index, exc)

    gc.collect()
    gc.freeze()  # as in admin.main: keep the start-up objects out of the collector's walk
    tasks = [loop.create_task(reporting()), loop.create_task(listening())]
    try:
        await stop.wait()
        if not await proxy.drain():
            log.warning("worker %d: drain timeout: %d connections cut", index,
                        len(rt.connections))
    finally:
        for task in tasks:
            await cancel(task)
        await proxy.stop()
        with contextlib.suppress(Exception):
            report()  # the last counts
            await channel.writer.drain()
        channel.close()
    return 0


def main(argv: list[str]) -> int:
    """Process entry point."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    listen_fd, channel_fd, index = argv
    return uvloop.run(serve(int(listen_fd), int(channel_fd), int(index)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
