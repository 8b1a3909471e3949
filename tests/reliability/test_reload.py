"""SIGHUP and the admin reload: an invalid config keeps the old one running and says why; a
valid one applies without dropping connections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from admin.demo.backend import Backend
from tests.deadline import until
from tests.functional.test_process import wait_listening
from tests.ports import free_port

VEER = [sys.executable, "-m", "admin.cli", "run", "--config"]
TOKEN = "reload-token"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:  # only what this test started, by PID
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if p.stderr is not None:
            p.stderr.close()


def config(backends: dict[str, Backend], port: int, admin: int, new: float) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin}"},
            "upstreams": {"original": {"endpoints": [backends["original-a"].url]},
                          "new": {"endpoints": [backends["new"].url]}},
            "routing": {"salt": "reload", "user_key": ["header:X-User-Id"]},
            "weights": {"new": new}}


async def weight_new(session: aiohttp.ClientSession, admin: int) -> float:
    async with session.get(f"http://127.0.0.1:{admin}/weights") as r:
        body: dict[str, float] = await r.json()
        return body["new"]


async def test_sighup_and_admin_reload(
    tmp_path: Path, backends: dict[str, Backend], procs: list[subprocess.Popen[bytes]]
) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "veer.yaml"
    path.write_text(yaml.safe_dump(config(backends, port, admin, 10)))
    proc = subprocess.Popen([*VEER, str(path)], stderr=subprocess.PIPE,
                            env={**os.environ, "VEER_ADMIN_TOKEN": TOKEN})
    procs.append(proc)
    await wait_listening(port, proc)
    await wait_listening(admin, proc)

    # A keep-alive connection opened before the reloads must survive them.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def keepalive_request() -> bytes:
        writer.write(b"GET /k HTTP/1.1\r\nHost: x\r\nX-User-Id: u\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        return head

    assert (await keepalive_request()).startswith(b"HTTP/1.1 200")
    async with aiohttp.ClientSession() as s:
        assert await weight_new(s, admin) == 10.0

        path.write_text("upstreams: [this is not: valid\n")  # SIGHUP with a broken file
        proc.send_signal(signal.SIGHUP)
        await until(lambda: _true_after_reads(proc, b"reload refused"), timeout=10,
                    interval=0.02, what="reload refused log")
        assert await weight_new(s, admin) == 10.0  # the old config keeps running
        assert (await keepalive_request()).startswith(b"HTTP/1.1 200")

        path.write_text(yaml.safe_dump(config(backends, port, admin, 40)))  # a valid one
        proc.send_signal(signal.SIGHUP)

        async def applied() -> bool:
            return await weight_new(s, admin) == 40.0

        await until(applied, timeout=10, interval=0.02, what="the valid config to apply")
        assert (await keepalive_request()).startswith(b"HTTP/1.1 200")  # same connection

        auth = {"Authorization": f"Bearer {TOKEN}"}
        path.write_text(yaml.safe_dump({**config(backends, port, admin, 40),
                                        "weights": {"new": 250}}))
        async with s.post(f"http://127.0.0.1:{admin}/reload", headers=auth) as r:
            body = await r.json()
            assert r.status == 422 and "weights.new" in body["detail"]
        moved = config(backends, free_port(), admin, 40)  # the listener cannot move live
        path.write_text(yaml.safe_dump(moved))
        async with s.post(f"http://127.0.0.1:{admin}/reload", headers=auth) as r:
            assert r.status == 409 and "listen" in (await r.json())["detail"]
        path.write_text(yaml.safe_dump(config(backends, port, admin, 55)))
        async with s.post(f"http://127.0.0.1:{admin}/reload") as r:
            assert r.status == 401  # no token: nothing reloads
        assert await weight_new(s, admin) == 40.0
        async with s.post(f"http://127.0.0.1:{admin}/reload", headers=auth) as r:
            assert r.status == 200 and (await r.json())["changed"] == ["weights"]
        assert await weight_new(s, admin) == 55.0
        # Each applied reload left one event, the SIGHUP's included.
        async with s.get(f"http://127.0.0.1:{admin}/events?kind=reload") as r:
            actors = [e["actor"] for e in (await r.json())["events"]]
        assert actors == ["admin", "SIGHUP"], actors
    assert (await keepalive_request()).startswith(b"HTTP/1.1 200")
    writer.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


_stderr_seen: dict[int, bytes] = {}


async def _true_after_reads(proc: subprocess.Popen[bytes], needle: bytes) -> bool:
    """Read what veer logged so far (non-blocking) and look for ``needle``."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = b""
    _stderr_seen[proc.pid] = _stderr_seen.get(proc.pid, b"") + chunk
    return needle in _stderr_seen[proc.pid]
