"""Lifecycle: build the runtime, listen, drain, stop; and the process entry point.

Start in order (sweeper, listener), stop in reverse. Drain stops accepting,
lets in-flight exchanges finish within the drain timeout, closes idle
keep-alive connections as they go quiet, then cuts whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from proxy.config import Config
from proxy.inbound import ClientConnection
from proxy.runtime import Runtime

log = logging.getLogger("veer")


class ProxyServer:
    """The data-plane listener around one ``Runtime``."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.rt = Runtime(config, loop or asyncio.get_running_loop())
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not listening; call start() first")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Start the sweeper and bind the listener."""
        if self._server is not None:
            raise RuntimeError("server already started")
        rt = self.rt
        rt.sweeper.start()
        try:
            self._server = await rt.loop.create_server(
                lambda: ClientConnection(rt), self.config.listen.host, self.config.listen.port,
                backlog=4096, reuse_address=True)
        except BaseException:
            await rt.sweeper.stop()
            raise

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
        """Cut remaining connections, close idle upstreams, stop the sweeper."""
        rt = self.rt
        rt.draining = True
        try:
            if self._server is not None:
                self._server.close()
                for conn in list(rt.connections):
                    conn.abort()
                await self._server.wait_closed()
            for _, ep in rt.endpoints():
                for c in list(ep.idle):
                    c.close()  # type: ignore[attr-defined]
                ep.idle.clear()
        finally:
            await rt.sweeper.stop()
            self._server = None


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then drain and stop; returns the exit code."""
    server = ProxyServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("veer listening on %s (new weight %.2f%%)", config.listen,
             config.new_weight_bp / 100)
    try:
        await stop.wait()
        log.info("draining (up to %.0fs)", config.timeouts.drain)
        clean = await server.drain()
        if not clean:
            log.warning("drain timeout: %d connections cut", len(server.rt.connections))
    finally:
        await server.stop()
    return 0


def run(config: Config) -> int:
    """Process entry point for ``veer run``: uvloop, logging to stderr."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return uvloop.run(serve(config))
