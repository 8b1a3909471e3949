"""Backend faults and slow clients: stuck backends time out and get ejected, slow uploaders
hit the idle timeout, a dead endpoint never costs a request its answer."""

from __future__ import annotations

import asyncio

import aiohttp

from admin.demo.backend import Backend
from tests.functional.conftest import StartVeer, base_config


async def test_stuck_endpoint_times_out_then_is_ejected(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, weights={"new": 0}, timeouts={"first_byte": "200ms"},
                      health={"consecutive_failures": 2})
    cfg["upstreams"]["original"]["endpoints"] = [backends["original-a"].url,
                                                 backends["original-b"].url]
    server = await start_veer(cfg)
    backends["original-a"].fault.delay = 2.0  # stuck, but still accepting connections
    statuses = []
    async with aiohttp.ClientSession() as s:
        for i in range(12):
            async with s.get(f"http://127.0.0.1:{server.port}/x",
                             headers={"X-User-Id": str(i)}) as r:
                statuses.append(r.status)
                await r.read()
    stuck = server.rt.snapshot.pools.balancers["original"].endpoints[0]
    assert stuck.ejections == 1
    assert statuses.count(504) == 2  # the two timeouts that ejected it, then only 200s
    assert statuses[-6:] == [200] * 6
    assert server.rt.recorder.snapshot("original").errors["timeout"] == 2


async def test_slow_uploader_gets_408(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(backends, timeouts={"idle": "300ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(65536), 5)  # the rest never comes
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    writer.close()
    errors = server.rt.recorder.snapshot("original").errors
    assert sum(errors.values()) == 0  # the client's fault: not counted against the upstream
