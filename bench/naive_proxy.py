"""The floor for bench/compare.py: the simplest aiohttp proxy that splits 90/10.

One process on uvloop, one ``aiohttp.ClientSession`` (keep-alive to both upstreams), the
whole upstream body read into memory before answering. A request with ``X-User-Id`` goes to
``--new`` when ``mmh3(user id) % 100 < 10`` (sticky); one without goes there with
probability 10%. No health checks, retries, streaming, metrics or header hygiene beyond
dropping hop-by-hop headers: whatever veer costs above this is the price of its features.

    python bench/naive_proxy.py --listen 8081 --original http://127.0.0.1:9001 \\
        --new http://127.0.0.1:9002
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
from collections.abc import AsyncIterator

import mmh3
import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict

NEW_PERCENT = 10
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "content-length",
})
SESSION = web.AppKey("session", ClientSession)
UPSTREAMS: web.AppKey[tuple[str, str]] = web.AppKey("upstreams")  # (original, new) bases


def pick_new(user_id: str | None) -> bool:
    """90/10: sticky by the user id's murmur3 hash, a random draw without one."""
    if user_id:
        return mmh3.hash(user_id, signed=False) % 100 < NEW_PERCENT
    return random.random() * 100 < NEW_PERCENT


async def proxy(request: web.Request) -> web.Response:
    original, new = request.app[UPSTREAMS]
    base = new if pick_new(request.headers.get("X-User-Id")) else original
    headers = CIMultiDict((k, v) for k, v in request.headers.items()
                          if k.lower() not in HOP_BY_HOP)
    body = await request.read()
    async with request.app[SESSION].request(
            request.method, base + request.rel_url.raw_path_qs, headers=headers,
            data=body or None, allow_redirects=False) as upstream:
        payload = await upstream.read()
        out = CIMultiDict((k, v) for k, v in upstream.headers.items()
                          if k.lower() not in HOP_BY_HOP)
        return web.Response(status=upstream.status, body=payload, headers=out)


def make_app(original: str, new: str) -> web.Application:
    app = web.Application()
    app[UPSTREAMS] = (original.rstrip("/"), new.rstrip("/"))

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = TCPConnector(limit=0, keepalive_timeout=60)
        async with ClientSession(connector=connector, timeout=ClientTimeout(total=30),
                                 auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def serve(port: int, original: str, new: str) -> None:
    runner = web.AppRunner(make_app(original, new), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    ap.add_argument("--original", required=True, help="base URL, e.g. http://127.0.0.1:9001")
    ap.add_argument("--new", required=True, help="base URL that gets 10%% of users")
    args = ap.parse_args()
    uvloop.run(serve(args.listen, args.original, args.new))


if __name__ == "__main__":
    main()
