"""A real HTTP backend for the demo and tests: an aiohttp app that echoes and misbehaves on cue."""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

NAME_KEY = web.AppKey("name", str)
SEEN_KEY = web.AppKey("seen", list)


@dataclass
class Fault:
    """Misbehaviour switched on at run time (the demo's and tests' degraded release)."""

    error_rate: float = 0.0  # share of echo requests answered 500
    delay: float = 0.0  # seconds added to every echo request
    accuracy: float | None = None  # report veer-metric accuracy around this mean (experiments)


FAULT_KEY = web.AppKey("fault", Fault)


@dataclass
class Backend:
    """A running backend: its name, port, and the requests it saw (method, path, headers)."""

    name: str
    port: int
    runner: web.AppRunner
    seen: list[dict[str, object]] = field(default_factory=list)
    fault: Fault = field(default_factory=Fault)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    fault = request.app[FAULT_KEY]
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.error_rate and random.random() < fault.error_rate:
        return web.Response(status=500, text=f"{request.app[NAME_KEY]}: injected fault\n")
    info = {
        "backend": request.app[NAME_KEY],
        "method": request.method,
        "path": request.path_qs,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_len": len(body),
    }
    request.app[SEEN_KEY].append(info)
    headers = {"X-Backend": request.app[NAME_KEY]}
    if fault.accuracy is not None:
        value = min(1.0, max(0.0, random.gauss(fault.accuracy, 0.1)))
        headers["veer-metric"] = f"accuracy={value:.4f}"
    return web.json_response(info, headers=headers)


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    request.app[SEEN_KEY].append({"path": request.path_qs})
    return web.Response(status=code, text=f"{request.app[NAME_KEY]} says {code}\n")


async def _slow(request: web.Request) -> web.Response:
    request.app[SEEN_KEY].append({"path": request.path_qs})
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text=f"{request.app[NAME_KEY]} slow\n")


async def _download(request: web.Request) -> web.StreamResponse:
    """``n`` bytes of a repeating pattern, streamed in 64 KiB writes (chunked unless cl=1)."""
    n = int(request.query["n"])
    resp = web.StreamResponse()
    if request.query.get("cl") == "1":
        resp.content_length = n
    await resp.prepare(request)
    block = bytes(range(256)) * 256
    sent = 0
    while sent < n:
        part = block[: min(len(block), n - sent)]
        await resp.write(part)
        sent += len(part)
    await resp.write_eof()
    return resp


async def _upload(request: web.Request) -> web.Response:
    """Consume the body as a stream; answer its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest(),
                              "backend": request.app[NAME_KEY]})


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(f"{request.app[NAME_KEY]}:{msg.data}")
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _die(request: web.Request) -> web.StreamResponse:
    """Send headers promising 1000 bytes, then 10, then drop the connection."""
    resp = web.StreamResponse()
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b"x" * 10)
    assert request.transport is not None
    request.transport.abort()
    return resp


async def _stall(request: web.Request) -> web.StreamResponse:
    """Send headers and 10 bytes of a 1000-byte body, then go quiet for ``s`` seconds."""
    resp = web.StreamResponse()
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b"y" * 10)
    await asyncio.sleep(float(request.query.get("s", "5")))
    return resp


def make_app(name: str) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[NAME_KEY] = name
    app[SEEN_KEY] = []
    app[FAULT_KEY] = Fault()
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/download", _download)
    app.router.add_post("/upload", _upload)
    app.router.add_get("/ws", _ws)
    app.router.add_get("/die", _die)
    app.router.add_get("/stall", _stall)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def start_backend(name: str, port: int = 0,
                        tls: ssl.SSLContext | None = None) -> Backend:
    """Start a backend on 127.0.0.1 (port 0: any free port); HTTPS with ``tls``."""
    app = make_app(name)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls)
    await site.start()
    bound: int = runner.addresses[0][1]
    return Backend(name, bound, runner, app[SEEN_KEY], app[FAULT_KEY],
                   "https" if tls is not None else "http")
