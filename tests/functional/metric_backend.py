"""A backend for experiment tests: it reports ``veer-metric`` per request and keeps what it
sent, so a test knows every user's values exactly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from admin.server import AdminServer
from proxy.runtime.server import ProxyServer


def accuracy(variant: str, user: str, i: int) -> float:
    """What a backend reports: new is better by 0.05 on average, varying per user."""
    base = 0.8 if variant == "original" else 0.85
    return round(base + (hash((user, i)) % 100) / 1000, 4)


class MetricBackend:
    """An aiohttp backend that reports ``veer-metric`` per request and keeps what it sent."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.sent: dict[str, list[float]] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        user = request.headers.get("X-User-Id", "")
        i = len(self.sent.setdefault(user, []))
        value = accuracy(self.variant, user, i)
        self.sent[user].append(value)
        extra = ", junk=abc" if i == 0 else ""
        return web.Response(text="ok", headers={
            "veer-metric": f"accuracy={value}, cost=0.003{extra}",
            "x-served-by": self.variant})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_experiment(backends: dict[str, MetricBackend],
                           start_veer: Callable[[dict[str, Any]], Awaitable[ProxyServer]],
                           experiment: dict[str, Any], token: str
                           ) -> tuple[ProxyServer, AdminServer]:
    """veer in front of ``backends`` running ``experiment``, with its admin API (the caller
    stops the admin server; ``start_veer`` stops veer)."""
    cfg = {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
           "upstreams": {v: {"endpoints": [b.url]} for v, b in backends.items()},
           "routing": {"salt": "exp"}, "experiment": experiment}
    server = await start_veer(cfg)
    admin = AdminServer(server.rt, token=token, token_from_config=False)
    await admin.start()
    return server, admin
