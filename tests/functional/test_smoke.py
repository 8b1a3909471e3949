"""End-to-end basics: a request through veer reaches a backend and comes back."""

from __future__ import annotations

import aiohttp

from admin.demo.backend import Backend
from tests.functional.conftest import StartVeer, base_config


async def test_get_through_proxy(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(backends))
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            async with s.get(f"http://127.0.0.1:{server.port}/hello?x=1",
                             headers={"X-User-Id": f"u{i}"}) as r:
                assert r.status == 200
                body = await r.json()
                assert body["path"] == "/hello?x=1"
                assert r.headers["x-veer-variant"] in ("original", "new")
