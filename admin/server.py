"""The admin listener: its own port, apart from the data plane, on the same loop and
``Runtime``; the application is built here, its routes are ``admin.routes``."""

from __future__ import annotations

import time

from aiohttp import web

from admin.metrics import build_registry
from admin.requests import EVENTS_MAX_BODY, TOKEN, errors
from admin.routes import CACHE, REGISTRY, RUNTIME, STARTED, add_routes
from admin.wire_errors import JsonErrorRunner
from proxy.runtime.admin_token import load_token, unguarded
from proxy.runtime.runtime import Runtime


def build_app(rt: Runtime, token: str | None) -> web.Application:
    """The admin application for one runtime."""
    app = web.Application(client_max_size=EVENTS_MAX_BODY, middlewares=[errors])
    app[RUNTIME] = rt
    app[REGISTRY] = build_registry(rt)
    app[STARTED] = time.time()
    app[CACHE] = {}
    if token is not None:
        app[TOKEN] = token
    add_routes(app)
    return app


class AdminServer:
    """The admin listener's lifecycle around an ``AppRunner``."""

    def __init__(self, rt: Runtime, token: str | None = None, *,
                 token_from_config: bool = True) -> None:
        self.rt = rt
        if token is None and token_from_config:
            token = load_token(rt.config.admin)
        self.token = token
        self.runner = JsonErrorRunner(build_app(rt, self.token), access_log=None,
                                      handle_signals=False)
        self._started = False

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("admin server is not listening; call start() first")
        port: int = self.runner.addresses[0][1]
        return port

    async def start(self) -> None:
        listen = self.rt.config.admin.listen
        problem = unguarded(self.rt.config.admin, self.token)
        if problem is not None:
            raise RuntimeError(problem)
        await self.runner.setup()
        try:
            # aiohttp's default backlog (128) drops the SYNs of a burst of connections
            # (dashboards, scrapers, scripts), each then waiting a 1 s retransmit; take the
            # data plane's.
            await web.TCPSite(self.runner, listen.host, listen.port, backlog=4096).start()
        except BaseException:
            await self.runner.cleanup()
            raise
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.runner.cleanup()
