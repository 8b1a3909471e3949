"""Failures veer answers itself (502/503/504, 4xx limits), retries, failover and passive health."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from admin.demo.backend import Backend
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.rawhttp import exchange


def dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def get(port: int, path: str = "/", user: str = "u") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{port}{path}", headers={"X-User-Id": user}) as r:
        return r.status, await r.text(), r.headers.get("x-veer-variant", "")


async def test_connect_failure_is_502_naming_the_cause(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, weights={"new": 100})
    cfg["upstreams"]["new"]["endpoints"] = [dead_url()]
    server = await start_veer(cfg)
    status, text, _ = await get(server.port)
    assert status == 502
    assert "upstream connect failed (new" in text
    snap = server.rt.recorder.snapshot("new")
    assert snap.errors["connect"] >= 1
    assert snap.status_classes[5] == 1


async def test_failover_to_original_on_connect_failure(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, weights={"new": 100})
    cfg["upstreams"]["new"] = {"endpoints": [dead_url()], "failover": "original"}
    server = await start_veer(cfg)
    status, text, variant = await get(server.port)
    assert (status, variant) == (200, "original")
    assert '"backend": "original' in text
    assert server.rt.recorder.snapshot("new").errors["connect"] == 1


async def test_retry_other_endpoint_then_eject_the_dead_one(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, weights={"new": 0}, health={"consecutive_failures": 3})
    cfg["upstreams"]["original"]["endpoints"] = [dead_url(), backends["original-a"].url]
    server = await start_veer(cfg)
    for i in range(20):
        status, _, _ = await get(server.port, user=str(i))
        assert status == 200  # the dead endpoint's connect failure was retried elsewhere
    dead = server.rt.snapshot.pools.balancers["original"].endpoints[0]
    assert dead.ejections == 1
    assert dead.connects == 3  # ejected after 3 failures, then no longer tried


async def test_5xx_ejects_but_never_the_last_endpoint(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, weights={"new": 100}, health={"consecutive_failures": 2})
    server = await start_veer(cfg)
    for _ in range(6):
        status, _, _ = await get(server.port, "/status/500")
        assert status == 500  # the backend's own 5xx passes through unchanged
    only = server.rt.snapshot.pools.balancers["new"].endpoints[0]
    assert only.ejections == 0 and server.rt.snapshot.pools.balancers["new"].healthy_count(0) == 1


async def test_first_byte_timeout_is_504(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, timeouts={"first_byte": "300ms"}))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, text, _ = await get(server.port, "/slow?s=1.5")
    assert status == 504
    assert "first-byte timeout" in text
    assert loop.time() - t0 < 2.0
    assert sum(server.rt.recorder.snapshot(v).errors["timeout"] for v in ("new", "original")) == 1


async def test_overload_is_fast_503(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(backends, limits={"max_concurrent_upstream": 1}))
    slow = asyncio.ensure_future(get(server.port, "/slow?s=0.5"))
    await until(lambda: server.rt.upstream_in_flight > 0, timeout=5, interval=0.005,
                what="the slow request to reach the upstream")
    status, text, _ = await get(server.port)
    assert status == 503 and "too many concurrent" in text
    assert (await slow)[0] == 200


async def test_backend_dies_mid_response_client_sees_abort(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, weights={"new": 100}))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{server.port}/die") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        status, _, _ = await get(server.port)  # others are unaffected
        assert status == 200
    assert server.rt.recorder.snapshot("new").errors["reset"] == 1


async def test_limits_header_and_body(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(
        backends, limits={"max_header_bytes": "2KiB", "max_body_bytes": 1000}))
    big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    reply, closed = await exchange(server.port, big_header)
    assert reply.startswith(b"HTTP/1.1 431 ") and closed
    big_body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000
    reply, closed = await exchange(server.port, big_body)
    assert reply.startswith(b"HTTP/1.1 413 ") and closed
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"7d0\r\n" + b"c" * 2000 + b"\r\n0\r\n\r\n")
    reply, closed = await exchange(server.port, chunked)
    assert reply.startswith(b"HTTP/1.1 413 ") and closed


async def test_slow_headers_get_408(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(backends, timeouts={"client_header": "300ms"}))
    reply, closed = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=3)
    assert reply.startswith(b"HTTP/1.1 408 ") and closed


async def test_idle_timeout_mid_body_aborts_the_response(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, weights={"new": 100},
                                          timeouts={"idle": "300ms"}))
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{server.port}/stall?s=1.5") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert server.rt.recorder.snapshot("new").errors["timeout"] == 1


async def _serve_once(reply: bytes) -> tuple[asyncio.Server, int]:
    """A backend that answers every connection with ``reply`` and closes."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(("reply", "what"), [
    (b"garbage that is not http\r\n\r\n", "bad HTTP"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "two CL"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
     b"GET /smuggled HTTP/1.1\r\n\r\n", "unsolicited 101"),
])
async def test_bad_upstream_responses_are_502(
    backends: dict[str, Backend], start_veer: StartVeer, reply: bytes, what: str
) -> None:
    bad, port = await _serve_once(reply)
    try:
        cfg = base_config(backends, weights={"new": 100})
        cfg["upstreams"]["new"]["endpoints"] = [f"http://127.0.0.1:{port}"]
        server = await start_veer(cfg)
        reply_to_client, closed = await exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-User-Id: u\r\n\r\n")
        assert reply_to_client.startswith(b"HTTP/1.1 502 "), what
        assert b"smuggled" not in reply_to_client
        assert closed
    finally:
        bad.close()
        await bad.wait_closed()
