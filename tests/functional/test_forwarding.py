"""Forwarding through real sockets: header hygiene, framing, keep-alive, bodies, WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp

from admin.demo.backend import Backend
from tests.functional.conftest import StartVeer, base_config
from tests.functional.rawhttp import exchange


def _headers_seen(backend_info: dict[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    pairs = backend_info["headers"]
    assert isinstance(pairs, list)
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return out


async def test_hop_by_hop_stripped_and_forwarded_headers_set(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, weights={"new": 0}))
    request = (
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"Host: shop.example\r\n"
        b"Connection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: must-not-pass\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Foo\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-User-Id: hygiene\r\n"
        b"X-Custom: kept\r\n"
        b"\r\n"
    )
    reply, _ = await exchange(server.port, request)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    seen = _headers_seen(json.loads(body))
    for hop in ("connection", "x-secret-hop", "keep-alive", "te", "trailer",
                "proxy-authorization", "proxy-connection"):
        assert hop not in seen, hop
    assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["shop.example"]
    assert seen["host"] == ["shop.example"]
    assert seen["x-custom"] == ["kept"]
    lower_head = head.lower()
    assert b"keep-alive:" not in lower_head
    assert b"x-veer-variant: original" in lower_head


async def test_keep_alive_reuses_upstream_connections(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, weights={"new": 0})
    cfg["upstreams"]["original"]["endpoints"] = [backends["original-a"].url]
    server = await start_veer(cfg)
    async with aiohttp.ClientSession() as s:
        for i in range(100):
            async with s.get(f"http://127.0.0.1:{server.port}/{i}") as r:
                assert r.status == 200
                await r.read()
    endpoint = server.rt.snapshot.pools.balancers["original"].endpoints[0]
    assert endpoint.total == 100
    assert endpoint.connects == 1


async def test_all_methods_and_small_bodies(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends))
    url = f"http://127.0.0.1:{server.port}/m"
    async with aiohttp.ClientSession() as s:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            async with s.request(method, url, data=b"x" * 1234) as r:
                info = await r.json()
                assert (info["method"], info["body_len"]) == (method, 1234)
        async with s.head(url) as r:
            assert r.status == 200
            assert int(r.headers["content-length"]) > 0
            assert await r.read() == b""
        async with s.get(url) as r:  # the connection after HEAD still works
            assert (await r.json())["method"] == "GET"


async def test_pipelined_requests_answered_in_order(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends))
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\nX-User-Id: u\r\n\r\n" % i for i in range(5))
    reply, _ = await exchange(server.port, reqs)
    paths = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
             for part in reply.split(b"HTTP/1.1 200 OK")[1:]]
    assert paths == [f"/p{i}" for i in range(5)]


async def test_chunked_request_and_response(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends))
    payload = [b"a" * 1000, b"b" * 70000, b"c" * 5]

    async def gen() -> AsyncIterator[bytes]:
        for part in payload:
            yield part

    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{server.port}/upload", data=gen()) as r:
            info = await r.json()
        assert info["size"] == sum(map(len, payload))
        assert info["sha256"] == hashlib.sha256(b"".join(payload)).hexdigest()
        async with s.get(f"http://127.0.0.1:{server.port}/download?n=300000") as r:
            assert r.headers.get("transfer-encoding") == "chunked"
            data = await r.read()
    assert data == (bytes(range(256)) * 256 * 5)[:300000]


async def test_http10_client_gets_close_delimited_body(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends))
    reply, closed = await exchange(server.port, b"GET /download?n=5000 HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert closed
    assert b"transfer-encoding" not in head.lower()
    assert len(body) == 5000


async def test_websocket_echo(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(backends, weights={"new": 100}))
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(f"http://127.0.0.1:{server.port}/ws") as ws:
        for i in range(20):
            await ws.send_str(f"hello {i}")
            assert (await ws.receive_str()) == f"new:hello {i}"
        await ws.send_bytes(b"\x00" * 200_000)
        assert await ws.receive_bytes() == b"\x00" * 200_000


async def test_concurrent_clients(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(base_config(backends, weights={"new": 50}))
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> int:
            async with s.get(f"http://127.0.0.1:{server.port}/c",
                             headers={"X-User-Id": str(i)}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(300)))
    assert statuses == [200] * 300


async def test_absolute_form_target_becomes_origin_form(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, weights={"new": 0}))
    reply, _ = await exchange(
        server.port, b"GET http://real.example/a?b=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
    info = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert info["path"] == "/a?b=1"
    assert _headers_seen(info)["host"] == ["real.example"]


async def _one_answer_per_connection(close_header: bool) -> tuple[asyncio.Server, list[int]]:
    """A backend that answers the first request on each connection and drops the second
    unanswered (a keep-alive race made deterministic)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        extra = b"connection: close\r\n" if close_header else b""
        writer.write(b"HTTP/1.1 200 OK\r\n%bcontent-length: %d\r\n\r\n%b"
                     % (extra, len(body), body))
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")  # a second request: drop it unanswered
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


async def test_stale_pooled_connection_is_retried_when_safe(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    bad, connections = await _one_answer_per_connection(close_header=False)
    try:
        cfg = base_config(backends, weights={"new": 100})
        cfg["upstreams"]["new"]["endpoints"] = [f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}"]
        server = await start_veer(cfg)
        async with aiohttp.ClientSession() as s:
            for _ in range(5):  # an idempotent request without a body goes again, fresh
                async with s.get(f"http://127.0.0.1:{server.port}/") as r:
                    assert r.status == 200
        assert len(connections) == 5
        # request 1 binds once; each later one binds a stale pooled connection, then a fresh one
        assert server.rt.snapshot.pools.balancers["new"].endpoints[0].total == 9
    finally:
        bad.close()
        await bad.wait_closed()


async def test_a_post_is_never_replayed_once_sent(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    """RFC 9112 9.3.1: the backend may have acted on a POST it read before closing, so the
    second POST on a pooled connection that closes unanswered is a 502, not a replay."""
    bad, connections = await _one_answer_per_connection(close_header=False)
    try:
        cfg = base_config(backends, weights={"new": 100})
        cfg["upstreams"]["new"]["endpoints"] = [f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}"]
        server = await start_veer(cfg)
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{server.port}/", data=b"p0") as r:
                assert (r.status, await r.read()) == (200, b"p0")
            async with s.post(f"http://127.0.0.1:{server.port}/", data=b"p1") as r:
                assert r.status == 502
                assert r.headers["x-veer-variant"] == "new"
        assert len(connections) == 1  # the second POST was read once and never sent again
        assert server.rt.snapshot.pools.balancers["new"].endpoints[0].total == 2
    finally:
        bad.close()
        await bad.wait_closed()


async def test_upstream_connection_close_is_not_pooled(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    bad, connections = await _one_answer_per_connection(close_header=True)
    try:
        cfg = base_config(backends, weights={"new": 100})
        cfg["upstreams"]["new"]["endpoints"] = [f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}"]
        server = await start_veer(cfg)
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(f"http://127.0.0.1:{server.port}/") as r:
                    assert r.status == 200
        assert len(connections) == 5
        assert server.rt.snapshot.pools.balancers["new"].endpoints[0].connects == 5
    finally:
        bad.close()
        await bad.wait_closed()
