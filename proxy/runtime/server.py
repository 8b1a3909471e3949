"""Lifecycle of the data plane: build the runtime, listen, drain, stop.

Start in order (sweeper, listener), stop in reverse. Drain stops accepting,
lets in-flight exchanges finish within the drain timeout, closes idle
keep-alive connections as they go quiet, then cuts whatever is left.
"""

from __future__ import annotations

import asyncio

from proxy.config.model import Config
from proxy.control.rollout import RolloutRunner, open_store
from proxy.http.inbound import ClientConnection
from proxy.runtime.runtime import Runtime
from proxy.telemetry import latency


class ProxyServer:
    """The data-plane listener around one ``Runtime``."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.rt = Runtime(config, loop or asyncio.get_running_loop())
        self._server: asyncio.Server | None = None
        self.rollout: RolloutRunner | None = None

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
        latency.warm_up()  # the first scrape should not pay for the index tables
        rt.sweeper.start()
        try:
            if self.config.rollout is not None:
                # Before listening: a resumed rollout's weights apply to the first request.
                store = open_store(self.config.state)
                try:
                    self.rollout = RolloutRunner(rt, self.config.rollout, store)
                except BaseException:
                    store.close()  # release the single-writer lock
                    raise
                rt.rollout = self.rollout
            self._server = await rt.loop.create_server(
                lambda: ClientConnection(rt), self.config.listen.host, self.config.listen.port,
                backlog=4096, reuse_address=True)
            if self.rollout is not None:
                await self.rollout.start()
        except BaseException:
            if self.rollout is not None:
                await self.rollout.stop()
                self.rollout = rt.rollout = None
            if self._server is not None:
                self._server.close()
                self._server = None
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
            if self.rollout is not None:
                await self.rollout.stop()
                self.rollout = None
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
