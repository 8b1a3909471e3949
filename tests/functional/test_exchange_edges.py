"""Edges of the exchange that runs in callbacks: what a review of that change found.

An exchange now concludes inside the upstream parser's callback, so anything it
starts at that moment runs while the parser is still reading the same bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.functional.conftest import StartVeer


async def _oversending(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers /a with a second, unasked-for response in the same write; others honestly."""
    buf = b""
    try:
        while data := await reader.read(65536):
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1]
                if path == b"/a":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                                 b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!")
                else:
                    body = b"REAL:" + path
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def oversending_url() -> AsyncIterator[str]:
    server = await asyncio.start_server(_oversending, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


def _config(url: str, **extra: object) -> dict[str, object]:
    return {"listen": "127.0.0.1:0",
            "upstreams": {"original": {"endpoints": [url]}, "new": {"endpoints": [url]}},
            "routing": {"salt": "t", "user_key": ["header:X-User-Id"]},
            "weights": {"new": 0}, **extra}


async def _read_until(reader: asyncio.StreamReader, end: bytes) -> bytes:
    """What arrives until ``end`` has been read, the connection closes, or 5 s pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    out = b""
    while not out.endswith(end) and (remaining := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            break
        if not data:
            break
        out += data
    return out


async def test_bytes_after_a_response_never_answer_the_next_pipelined_request(
        oversending_url: str, start_veer: StartVeer) -> None:
    server = await start_veer(_config(oversending_url))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")  # leaves a pooled connection
        assert (await _read_until(reader, b"REAL:/warm")).endswith(b"REAL:/warm")
        # /a goes out on the pooled connection; its answer carries a second response
        # in the same read, which must not become /b's answer.
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await _read_until(reader, b"REAL:/b")
    finally:
        writer.close()
    assert b"EVIL" not in reply
    assert reply.count(b"HTTP/1.1 200") == 2 and reply.endswith(b"REAL:/b")


PUSHES = 12


async def _push(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket on which only the server talks: one message every 100 ms."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    for i in range(PUSHES):
        await ws.send_str(f"push {i}")
        await asyncio.sleep(0.1)  # the traffic's pace, not a wait for veer
    await ws.close()
    return ws


async def test_a_tunnel_busy_only_upstream_is_not_idle(start_veer: StartVeer) -> None:
    app = web.Application()
    app.router.add_get("/push", _push)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        # 1.2 s of server pushes against a 400 ms idle timeout: the tunnel is never idle.
        server = await start_veer(_config(url, timeouts={"idle": "400ms"}))
        got: list[str] = []
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(f"http://127.0.0.1:{server.port}/push") as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    got.append(msg.data)
            close_code = ws.close_code
    finally:
        await runner.cleanup()
    assert got == [f"push {i}" for i in range(PUSHES)]
    assert close_code == 1000  # the server's clean close, not a cut tunnel
