"""Hostile review of the load-balancer features (mirroring, TLS, health, access log): each
test demonstrates one defect on real sockets and fails until it is fixed."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import termios
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from admin.demo.backend import Backend
from proxy.config.load import from_dict
from proxy.routing.variant import NEW, ORIGINAL, PAIRED, SHADOW
from proxy.runtime.reload import apply
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.test_tls import Pki, get, pki, tls_backend, upstream_config  # noqa: F401

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class ScriptedBackend:
    """A raw HTTP/1.1 backend: ``answer(reader, writer, n)`` answers the n-th request (from 1)
    of a connection and returns False to stop serving that connection."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> ScriptedBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")  # the tests send body-less requests
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                n += 1
                self.requests += 1
                if not await self.answer(reader, writer, n):
                    return
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def mirrored(backends: dict[str, Backend], new_url: str | None = None,
             **mirror: Any) -> dict[str, Any]:
    cfg = base_config(backends, weights={"new": 0}, mirror={"percent": 100, **mirror})
    if new_url is not None:
        cfg["upstreams"]["new"] = {"endpoints": [new_url]}
    return cfg


async def send(port: int, n: int, method: str = "GET", data: bytes | None = None) -> list[int]:
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.request(method, f"http://127.0.0.1:{port}/r?i={i}", data=data,
                                 headers={"X-User-Id": f"u{i}"}) as r:
                await r.read()
                out.append(r.status)
    return out


# -- mirroring ------------------------------------------------------------------------------

async def test_a_client_cannot_forge_the_shadow_marker(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    """x-veer-shadow is how a backend tells a copy from a user's request; a user who sends it
    must not get a real request treated as a discardable copy."""
    server = await start_veer(base_config(backends, weights={"new": 100}))
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{server.port}/real", headers={"X-User-Id": "u1",
                                                            "x-veer-shadow": "1"}) as r:
        assert r.status == 200
        await r.read()
    [seen] = backends["new"].seen
    headers = seen["headers"]
    assert isinstance(headers, list)
    assert not any(k.lower() == "x-veer-shadow" for k, _ in headers), headers


async def test_a_copy_whose_client_left_is_recorded_nowhere(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    """mirror.py's contract: 'A copy whose original did not complete (the client left) is
    recorded nowhere.' A GET's copy is launched at once, so when the client leaves, the
    original's status 0 is paired with the copy's 200 and counted as a mismatch (a shadow
    phase's gates then judge impatient clients, not the release)."""
    for name in ("original-a", "original-b"):
        backends[name].fault.delay = 2.0
    server = await start_veer(mirrored(backends))
    rt = server.rt
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /leave HTTP/1.1\r\nHost: x\r\nX-User-Id: u1\r\n\r\n")
    await writer.drain()
    await until(lambda: bool(backends["new"].seen) and not rt.mirror.in_flight, timeout=5,
                what="the copy answered by new")
    writer.close()  # the client leaves before original answers
    await until(lambda: rt.recorder.variants[ORIGINAL].requests == 1, timeout=5,
                what="the original exchange concluded")
    rec = rt.recorder.variants
    assert (rec[SHADOW].requests, rec[PAIRED].requests, rec[SHADOW].mismatches) == (0, 0, 0), (
        rec[SHADOW].requests, rec[PAIRED].requests, rec[SHADOW].mismatches)


async def test_a_close_delimited_answer_from_new_is_not_a_shadow_failure(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    """A response without length that ends at the server's close is a complete answer: the
    data plane serves it as one (new's real traffic has no failure), the copy counts it as a
    failure (Shadow.on_lost), so every mirrored request fails max_error_rate."""
    async def close_delimited(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nwhole body")
        await w.drain()
        return False

    new = await ScriptedBackend(close_delimited).start()
    try:
        # The data plane itself, routing users to this backend: complete 200s.
        direct = base_config(backends, weights={"new": 100})
        direct["upstreams"]["new"] = {"endpoints": [new.url]}
        plain = await start_veer(direct)
        assert await send(plain.port, 3) == [200] * 3
        assert plain.rt.recorder.variants[NEW].failures == 0

        server = await start_veer(mirrored(backends, new.url))
        assert await send(server.port, 3) == [200] * 3
        rec = server.rt.recorder.variants
        await until(lambda: rec[SHADOW].requests == 3, timeout=5, what="3 judged copies")
        assert rec[SHADOW].codes[200] == 3
        assert rec[SHADOW].failures == 0, rec[SHADOW].failures
    finally:
        await new.close()


async def test_a_copy_on_a_stale_pooled_connection_is_not_a_mismatch(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    """The keep-alive race: the backend closes a reused connection as the next request
    arrives, unread. The data plane replays such a request (a GET, nothing read); the copy
    records a failure and a mismatch (status 0) for a request new never saw, so a release
    whose backends time idle connections out sooner than veer fails max_status_mismatch."""
    async def one_per_connection(_r: asyncio.StreamReader, w: asyncio.StreamWriter,
                                 n: int) -> bool:
        if n > 1:
            return False  # closes without answering: the request was never processed
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return True

    new = await ScriptedBackend(one_per_connection).start()
    try:
        direct = base_config(backends, weights={"new": 100})
        direct["upstreams"]["new"] = {"endpoints": [new.url]}
        plain = await start_veer(direct)
        assert await send(plain.port, 4) == [200] * 4  # each reuse that dies is replayed

        server = await start_veer(mirrored(backends, new.url))
        rec = server.rt.recorder.variants
        for i in range(4):  # one at a time: each copy may reuse the previous one's connection
            assert await send(server.port, 1) == [200]
            await until(lambda i=i: rec[SHADOW].requests == i + 1, timeout=5,  # type: ignore[misc]
                        what="the copy judged")
        assert rec[SHADOW].mismatches == 0 and rec[SHADOW].failures == 0, (
            rec[SHADOW].mismatches, dict(enumerate(rec[SHADOW].codes)).get(0))
    finally:
        await new.close()


async def test_requests_of_unmirrored_methods_do_not_use_up_the_mirrored_share(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    """percent: 50 of the GETs (POST is not mirrored by default). Mirror.offer takes the
    credit before it looks at the method, so with GETs and POSTs alternating every credit
    falls on a POST and no GET is ever copied."""
    server = await start_veer(mirrored(backends, percent=50))
    for _ in range(10):
        assert await send(server.port, 1) == [200]
        assert await send(server.port, 1, "POST", b"x") == [200]
    assert server.rt.mirror.sent == 5, server.rt.mirror.sent  # copies go out at the GET's start


# -- TLS ------------------------------------------------------------------------------------

async def test_turning_verification_on_by_reload_stops_using_unverified_connections(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki,  # noqa: F811
        tls_backend: tuple[Backend, list[str | None]]) -> None:  # noqa: F811
    """verify: false -> a reload with verification on (system CAs, which do not trust this
    backend). New handshakes fail as they should, but the pooled connections made without
    verification are kept (same endpoint address) and go on serving: the reload half-applies
    and traffic still flows to an unverified peer."""
    backend, _ = tls_backend
    url = f"https://127.0.0.1:{backend.port}"
    server = await start_veer(upstream_config(backends, url, verify=False))
    assert [s for s, _ in await get(server.port, 2)] == [200, 200]  # one pooled connection
    apply(server.rt, from_dict(upstream_config(backends, url), "<t>"), ["upstreams"])
    [(status, body)] = await get(server.port)
    assert status == 502 and "CERTIFICATE_VERIFY_FAILED" in body, (status, body[:80])


async def test_a_new_ca_by_reload_is_checked_before_pooled_connections_are_reused(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki,  # noqa: F811
        tls_backend: tuple[Backend, list[str | None]]) -> None:  # noqa: F811
    """The same with a CA swapped (the old one compromised): connections verified against
    the CA the operator just removed keep serving after the reload."""
    backend, _ = tls_backend
    url = f"https://localhost:{backend.port}"
    server = await start_veer(upstream_config(backends, url, ca=str(pki.ca_file)))
    assert [s for s, _ in await get(server.port, 2)] == [200, 200]
    other = pki.dir / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    apply(server.rt, from_dict(upstream_config(backends, url, ca=str(other)), "<t>"),
          ["upstreams"])
    [(status, _)] = await get(server.port)
    assert status == 502, status


# -- access log -----------------------------------------------------------------------------

async def test_a_stalled_log_consumer_never_stalls_the_data_plane(
        start_veer: StartVeer, backends: dict[str, Backend], tmp_path: Path) -> None:
    """access_log.py: 'a stalled disk costs lines, never memory or latency'. The writer's
    os.write is blocking and runs on the event loop: when the consumer of the log stops
    reading (``path: -`` is a pipe to a container's log collector; here a FIFO whose reader
    is slow), the whole process stops serving until it reads again."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader exists, and does not read
    fcntl.fcntl(rfd, 1031, 4096)  # F_SETPIPE_SZ: a small pipe, filled by a few lines

    def slow_reader() -> None:  # catches up 1.5 s after the pipe filled (else veer hangs)
        queued = array.array("i", [0])
        while not done.is_set():
            fcntl.ioctl(rfd, termios.FIONREAD, queued)
            if queued[0] >= 2000:  # a whole line or more: writes into a pipe are whole lines
                break
            time.sleep(0.01)
        time.sleep(1.5)
        while True:
            try:
                if not os.read(rfd, 65536):
                    return
            except BlockingIOError:
                if done.is_set():
                    return
                time.sleep(0.01)

    done = threading.Event()
    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    server = await start_veer(base_config(backends, weights={"new": 0},
                                          access_log={"path": str(fifo)}))
    rt = server.rt
    assert rt.access_writer is not None
    gaps: list[float] = []
    last = [time.monotonic()]

    async def ticker() -> None:  # how long the loop goes without running anything
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last[0])
            last[0] = now

    tick = asyncio.get_running_loop().create_task(ticker())
    try:
        path = "/" + "x" * 2000  # a ~2 KB line each: 8 of them fill the pipe
        async with aiohttp.ClientSession() as s:
            for _ in range(8):
                async with s.get(f"http://127.0.0.1:{server.port}{path}") as r:
                    await r.read()
        await until(lambda: rt.access_writer is not None and rt.access_writer.written >= 8,
                    timeout=10, what="the 8 lines written")
        gaps.append(time.monotonic() - last[0])  # the loop's last stretch without a tick
    finally:
        tick.cancel()
        done.set()
        reader.join(5)
        os.close(rfd)
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.2f}s"
