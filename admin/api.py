"""The admin listener: an aiohttp app with /metrics, /healthz and /readyz.

It runs on its own port, apart from the data plane, on the same event loop
and the same ``Runtime``.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from admin.metrics import build_registry, render
from proxy.routing import ORIGINAL
from proxy.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
REGISTRY = web.AppKey("registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (format 0.0.4, which every Prometheus reads), rendered now."""
    body = render(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded, not draining, and original has a usable endpoint."""
    rt = request.app[RUNTIME]
    usable = rt.balancers[ORIGINAL].usable_count(rt.loop.time())
    problems = []
    if rt.draining:
        problems.append("draining")
    if usable == 0:
        problems.append("no usable endpoint in original")
    body = {"ready": not problems, "problems": problems, "original_usable_endpoints": usable,
            "config": rt.config.source}
    return web.json_response(body, status=503 if problems else 200)


def build_app(rt: Runtime) -> web.Application:
    """The admin application for one runtime."""
    app = web.Application(client_max_size=64 * 1024)
    app[RUNTIME] = rt
    app[REGISTRY] = build_registry(rt)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class AdminServer:
    """The admin listener's lifecycle around an ``AppRunner``."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.runner = web.AppRunner(build_app(rt), access_log=None, handle_signals=False)
        self._started = False

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("admin server is not listening; call start() first")
        port: int = self.runner.addresses[0][1]
        return port

    async def start(self) -> None:
        listen = self.rt.config.admin.listen
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, listen.host, listen.port).start()
        except BaseException:
            await self.runner.cleanup()
            raise
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.runner.cleanup()
