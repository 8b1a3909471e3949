"""``veer run``: the data plane and the admin listener, until a signal.

One process, or with ``workers: N`` a supervisor (rollout, cluster
membership, admin API) and N worker processes sharing the listener. Start in
order (data plane or supervisor, workers, admin), stop in reverse. SIGTERM
or SIGINT drains (readiness turns 503 at once; every worker drains), then
stops everything and exits 0. SIGHUP reloads (every worker too); SIGUSR1 reopens the
access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from admin.server import AdminServer
from proxy.config.model import Config
from proxy.config.reader import ConfigError
from proxy.control.rollout import StateSaveError
from proxy.control.state import StateError
from proxy.runtime.access_writer import AccessLogError
from proxy.runtime.reload import ReloadError, reload_recorded
from proxy.runtime.server import ProxyServer, Role
from proxy.wire.tls import TlsError
from proxy.workers.supervisor import Supervisor

log = logging.getLogger("veer")


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then drain and stop; returns the exit code."""
    async with contextlib.AsyncExitStack() as lifecycle:  # stops in reverse, every step
        supervised = config.workers > 1
        proxy = ProxyServer(config, role=Role.SUPERVISOR if supervised else Role.SINGLE)
        await proxy.start()
        lifecycle.push_async_callback(proxy.stop)
        drain = proxy.drain
        if supervised:
            supervisor = Supervisor(proxy, config.workers)
            lifecycle.push_async_callback(supervisor.stop, 0.0)  # after a drain: kill stragglers
            await supervisor.start()

            async def drain(timeout: float | None = None) -> bool:
                proxy.rt.draining = True
                return await supervisor.stop(config.timeouts.drain)

        admin = AdminServer(proxy.rt)
        await admin.start()
        lifecycle.push_async_callback(admin.stop)
        await _serve_until_signalled(proxy, config, drain)
    return 0


async def _serve_until_signalled(proxy: ProxyServer, config: Config,
                                 drain: Callable[[], Awaitable[bool]]) -> None:
    # Everything built so far (modules, numpy/scipy, config: ~90k objects) lives as long as
    # the process: move it out of the collector's sight. A full collection over it stalls
    # the loop ~35 ms (measured with gc.callbacks); after the freeze it walks ~2k objects.
    # Frozen objects are still freed by reference counting (a reload's old config is);
    # only garbage cycles among them would stay.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, proxy)
    loop.add_signal_handler(signal.SIGUSR1, _reopen, proxy)
    log.info("veer listening on %s (%d worker%s), admin on %s (new weight %.2f%%)",
             config.listen, config.workers, "s" if config.workers > 1 else "",
             config.admin.listen, proxy.rt.live.new_weight_bp / 100)
    await stop.wait()
    log.info("draining (up to %.0fs)", config.timeouts.drain)
    if not await drain():
        log.warning("drain timeout: connections cut")


def _reload(proxy: ProxyServer) -> None:
    """SIGHUP: re-read the config file; a bad one is reported and the old config kept."""
    try:
        changed = reload_recorded(proxy.rt, "SIGHUP")
    except (ConfigError, ReloadError) as exc:
        log.error("reload refused, still running the previous config: %s", exc)
        return
    log.info("reloaded %s: %s", proxy.rt.config.source, ", ".join(changed) or "no changes")


def _reopen(proxy: ProxyServer) -> None:
    """SIGUSR1: open the access log again (every worker's too), as after logrotate."""
    try:
        proxy.rt.reopen_access_log()
    except AccessLogError as exc:
        log.error("%s; still writing to the file it had open", exc)


def _raise_fd_limit() -> None:
    """Each proxied connection holds two sockets; the default soft limit (1024) would cap
    veer near 500 clients, so take the hard limit the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(config: Config) -> int:
    """Process entry point: uvloop, logs to stderr."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_fd_limit()
    try:
        return uvloop.run(serve(config))
    except (OSError, StateError, StateSaveError, RuntimeError, AccessLogError,
            TlsError) as exc:  # port taken, ...
        log.error("cannot start: %s", exc)
        return 1
