"""Abusing the admin API: missing or wrong tokens, the wrong method, path tricks sent as raw
bytes (so no client normalises them) and oversized bodies. None of it may change anything,
answer 5xx, or answer a GET on a mutation path with 200."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.config.load import load
from proxy.runtime.runtime import Runtime
from proxy.runtime.server import ProxyServer
from tests.functional.conftest import base_config

TOKEN = "s3cret-token"
AUTH = f"Bearer {TOKEN}"
PLAN = [{"name": "canary", "weight": 10, "duration": "1h"},
        {"name": "ramp", "weight": 30, "duration": "1h"},
        {"name": "full", "weight": 100}]

# Every mutation, each with a body that would change something if it got through.
MUTATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", "/weights", {"new": 50}),
    ("PUT", "/weights", {"original": 20}),
    ("POST", "/rollout/advance", None),
    ("POST", "/rollout/approve", None),
    ("POST", "/rollout/promote", None),
    ("POST", "/rollout/pause", {"reason": "x"}),
    ("POST", "/rollout/resume", None),
    ("POST", "/rollout/abort", {"reason": "x"}),
    ("POST", "/rollout/rollback", None),
    ("POST", "/rollout/rollback", {"mode": "immediate", "reason": "x"}),
    ("POST", "/rollout/rollback", {"mode": "targeted", "users": ["u1", "u2"]}),
    ("POST", "/rollout/rollback", {"mode": "gradual", "stages": [0.5, 0], "interval": "50ms"}),
    ("POST", "/reload", None),
]
MUTATION_PATHS = sorted({path for _, path, _ in MUTATIONS})

BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"},
    {"Authorization": TOKEN},  # no scheme
    {"Authorization": f"Token {TOKEN}"},
    {"Authorization": f"Basic {base64.b64encode(f'admin:{TOKEN}'.encode()).decode()}"},
    {"Authorization": f"Bearer {TOKEN.upper()}"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer x{TOKEN}"},
    {"Authorization": f"Bearer {TOKEN} {TOKEN}"},
    {"Authorization": f"Bearer{TOKEN}"},
    {"X-Veer-Token": TOKEN},
    {"Cookie": f"token={TOKEN}"},
]

# Request targets that look like a mutation path to a careless router; sent byte for byte.
TRICKS = [
    "/metrics/../rollout/promote",
    "/weights/../rollout/promote",
    "/weights/..%2frollout/promote",
    "/rollout/%70romote",
    "/rollout/pro%6Dote",
    "/rollout/promote%2F..",
    "/rollout/promote%2f%2e%2e",
    "/rollout%2Fpromote",
    "//rollout/promote",
    "/rollout//promote",
    "/rollout/./promote",
    "/./rollout/promote",
    "/ROLLOUT/PROMOTE",
    "/Rollout/Promote",
    "/rollout/promote/",
    "/rollout/promote?x=1",
    "/rollout/promote#frag",
    "/rollout/promote;x=1",
    "/rollout/promote%00",
    "/rollout/promote%20",
    "/%2e%2e/rollout/promote",
    "/%2E%2E/rollout/rollback",
    "/rollout/%2e%2e/reload",
    "/%72eload",
    "/reload?",
    "/weights?new=50",
    "/weights%3Fnew=50",
    "http://127.0.0.1/rollout/promote",
    "http://evil.example/rollout/rollback",
]
# Request lines the HTTP parser itself rejects (400 before any handler runs).
MALFORMED = [
    b"GET * HTTP/1.1",
    b"POST * HTTP/1.1",
    b"GET /rollout/promote HTTP/9.9",
    b"GET /rollout/ promote HTTP/1.1",
    b"POST /rollout/promote\x00 HTTP/1.1",
    b"POST /rollout/pro\x7fmote HTTP/1.1",
    b"FOO /rollout/promote HTTP/1.1",
    b"POST rollout/promote HTTP/1.1",
]


@dataclass
class Env:
    server: ProxyServer
    admin: AdminServer
    config_path: Path

    @property
    def rt(self) -> Runtime:
        return self.server.rt

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"


@pytest.fixture
async def env(backends: dict[str, Backend], tmp_path: Path) -> AsyncIterator[Env]:
    """veer with a rollout and a token, loaded from a file that has since changed (so an
    unauthorised reload would show)."""
    cfg = base_config(backends, admin={"listen": "127.0.0.1:0"})
    cfg.pop("weights")
    cfg["rollout"] = {"name": "abuse", "tick": "100ms", "plan": PLAN}
    path = tmp_path / "veer.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    server = ProxyServer(load(path))
    await server.start()
    cfg["routing"] = {**cfg["routing"], "salt": "changed"}  # a change reload would apply
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    admin = AdminServer(server.rt, token=TOKEN, token_from_config=False)
    try:
        await admin.start()
        yield Env(server, admin, path)
    finally:
        await admin.stop()
        await server.stop()


def snapshot(rt: Runtime) -> dict[str, Any]:
    """Everything a mutation could change."""
    assert rt.rollout is not None
    st = rt.rollout.controller.state
    return {"weight": rt.live.new_weight_bp, "state": st.to_dict(), "events": len(st.events),
            "config": id(rt.config), "salt": rt.config.routing.salt,
            "deny": rt.snapshot.router.denied_users(rt.live),
            "allow": rt.snapshot.router.allowed_users(rt.live)}


async def call(session: aiohttp.ClientSession, method: str, url: str,
               **kwargs: Any) -> tuple[int, str, Any]:
    async with session.request(method, url, **kwargs) as r:
        raw = await r.read()
        body = json.loads(raw) if r.content_type == "application/json" and raw else raw
        return r.status, r.content_type, body


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


async def read_reply(reader: asyncio.StreamReader, timeout: float = 5.0,
                     to_head: bool = False) -> Reply:
    """One HTTP/1.x response with a Content-Length body (none to a HEAD)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b""
    if length and not to_head:
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return Reply(status, headers, body)


async def raw_request(port: int, request_line: bytes, headers: bytes = b"",
                      body: bytes = b"") -> Reply:
    """Send exactly these bytes on a fresh connection; read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_line + b"\r\nHost: 127.0.0.1\r\n" + headers +
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        return await read_reply(reader, to_head=request_line.startswith(b"HEAD "))
    finally:
        writer.close()
        await writer.wait_closed()


def assert_json_error(status: int, content_type: str, body: Any, allowed: set[int]) -> None:
    assert status in allowed, (status, body)
    assert content_type == "application/json", (status, content_type, body)
    assert isinstance(body, dict) and {"error", "detail"} <= set(body), body


async def test_wrong_or_missing_token_changes_nothing(env: Env) -> None:
    before = snapshot(env.rt)
    checked = 0
    async with aiohttp.ClientSession() as s:
        for method, path, body in MUTATIONS:
            for headers in BAD_AUTH:
                status, ctype, err = await call(s, method, env.url + path, json=body,
                                                headers=headers)
                assert_json_error(status, ctype, err, {401})
                assert err["error"] == "unauthorized", (method, path, headers, err)
                assert snapshot(env.rt) == before, (method, path, headers)
                checked += 1
        # Control characters and raw oddities a client library would refuse to send.
        for value in (b"Bearer " + TOKEN.encode() + b"\x00", b"Bearer \x00" + TOKEN.encode(),
                      b"Bearer " + TOKEN.encode() + b"\xff", "Bearer s3crët".encode()):
            for method, path, _ in MUTATIONS:
                reply = await raw_request(env.admin.port, f"{method} {path} HTTP/1.1".encode(),
                                          b"Authorization: " + value + b"\r\n")
                assert reply.status in (400, 401), (value, path, reply)
                assert reply.status == 400 or reply.json()["error"] == "unauthorized"
                assert snapshot(env.rt) == before, (value, path)
                checked += 1

        # A server with no token configured refuses every mutation, whatever is sent.
        open_admin = AdminServer(env.rt, token=None, token_from_config=False)
        await open_admin.start()
        try:
            for method, path, body in MUTATIONS:
                for auth in ("", "Bearer ", "Bearer None", AUTH):
                    status, ctype, err = await call(
                        s, method, f"http://127.0.0.1:{open_admin.port}{path}", json=body,
                        headers={"Authorization": auth})
                    assert_json_error(status, ctype, err, {401})
                    assert "no admin token is configured" in err["detail"]
                    assert snapshot(env.rt) == before
                    checked += 1
        finally:
            await open_admin.stop()

        # Control: the same requests with the token do change things, so the checks above
        # would have seen a change.
        status, _, _ = await call(s, "POST", env.url + "/reload", headers={"Authorization": AUTH})
        assert status == 200 and env.rt.config.routing.salt == "changed"
        status, _, _ = await call(s, "PUT", env.url + "/weights", json={"new": 50},
                                  headers={"Authorization": AUTH})
        assert status == 200 and env.rt.live.new_weight_bp == 5000
    print(f"\n{checked} unauthorised mutation attempts, none changed anything")


async def test_other_methods_on_mutation_paths_are_405(env: Env) -> None:
    before = snapshot(env.rt)
    checked = 0
    async with aiohttp.ClientSession() as s:
        for path in MUTATION_PATHS:
            mutating = "PUT" if path == "/weights" else "POST"
            for method in ("GET", "HEAD", "DELETE", "PATCH", "OPTIONS", "TRACE", "PUT", "POST"):
                if method == mutating:
                    continue
                for headers in ({}, {"Authorization": AUTH}):
                    status, ctype, body = await call(
                        s, method, env.url + path, headers=headers,
                        json={"new": 50} if method not in ("GET", "HEAD") else None)
                    checked += 1
                    assert snapshot(env.rt) == before, (method, path)
                    if path == "/weights" and method in ("GET", "HEAD"):
                        assert status == 200  # the read side of /weights
                        continue
                    if method == "HEAD":
                        assert status == 405 and body == b"", (path, status)
                    else:
                        assert_json_error(status, ctype, body, {405})
            # A GET with a JSON body and the token still only reads.
            status, ctype, body = await call(s, "GET", env.url + path, json={"new": 50},
                                             headers={"Authorization": AUTH})
            assert status in (200, 405) and (status == 200) == (path == "/weights")
            assert snapshot(env.rt) == before
    print(f"\n{checked} wrong-method requests, all 405 (or the /weights read)")


async def test_path_tricks_never_reach_a_mutation(env: Env) -> None:
    before = snapshot(env.rt)
    port = env.admin.port
    for target in TRICKS:
        line = target.encode()
        for method, headers, allowed in (
            (b"GET", b"", {404, 405}),
            (b"GET", f"Authorization: {AUTH}\r\n".encode(), {404, 405}),
            (b"HEAD", f"Authorization: {AUTH}\r\n".encode(), {404, 405}),
            (b"POST", b"", {401, 404, 405}),
            (b"PUT", b"", {401, 404, 405}),
            (b"POST", b"Authorization: Bearer wrong\r\n", {401, 404, 405}),
        ):
            reply = await raw_request(port, method + b" " + line + b" HTTP/1.1",
                                      headers + b"Content-Type: application/json\r\n",
                                      b'{"new": 50}' if method == b"PUT" else b"")
            if reply.status == 200 and method in (b"GET", b"HEAD"):
                # Only the read side of /weights answers 200 to a GET, whatever the query.
                assert target.partition("?")[0] == "/weights", (method, target, reply)
            else:
                assert reply.status in allowed, (method, target, reply)
                if method != b"HEAD":
                    err = reply.json()
                    assert {"error", "detail"} <= set(err), (method, target, err)
            assert snapshot(env.rt) == before, (method, target)
    for line in MALFORMED:
        for headers in (b"", f"Authorization: {AUTH}\r\n".encode()):
            reply = await raw_request(port, line, headers)
            assert reply.status == 400, (line, reply)  # the HTTP parser's own answer
            assert snapshot(env.rt) == before, line
    # The listener still answers normally after all that.
    reply = await raw_request(port, b"GET /weights HTTP/1.1")
    assert reply.status == 200 and reply.json() == {"original": 90.0, "new": 10.0}
    print(f"\n{len(TRICKS)} tricky targets x 6 requests + {len(MALFORMED)} x 2 malformed: "
          "no mutation, no 5xx")


async def test_oversized_bodies_get_413_and_the_connection_survives(env: Env) -> None:
    before = snapshot(env.rt)
    big = b"{" + b" " * (1024 * 1024) + b"}"
    headers = {"Authorization": AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        for path in ("/weights", "/rollout/rollback", "/rollout/pause", "/reload"):
            method = "PUT" if path == "/weights" else "POST"
            status, ctype, body = await call(s, method, env.url + path, data=io.BytesIO(big),
                                             headers=headers)
            assert_json_error(status, ctype, body, {413})
            assert body["error"] == "body too large"
            assert snapshot(env.rt) == before, path
            # The next request (one connection in the pool: the same one if it was kept).
            assert (await call(s, "GET", env.url + "/weights"))[0] == 200

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(16):
                yield b" " * 65536

        status, ctype, body = await call(s, "PUT", env.url + "/weights", data=chunks(),
                                         headers=headers)
        assert_json_error(status, ctype, body, {413})
        assert snapshot(env.rt) == before

    # On one raw connection: an oversized body whose tail looks like a request, then a real
    # request. The tail must be discarded as body, never parsed as a request of its own.
    smuggled = (b"\r\n\r\nPUT /weights HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
                b'{"new": 77}')
    body = b" " * (1024 * 1024) + smuggled
    reader, writer = await asyncio.open_connection("127.0.0.1", env.admin.port)
    try:
        writer.write(b"PUT /weights HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        await writer.drain()
        first = await read_reply(reader)
        assert first.status == 413 and first.json()["error"] == "body too large"
        writer.write(b"GET /weights HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        try:
            second: Reply | None = await read_reply(reader)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            second = None  # the server closed the connection after the 413: also fine
        if second is not None:
            assert second.status == 200, second
            assert second.json() == {"original": 90.0, "new": 10.0}
    finally:
        writer.close()
        await writer.wait_closed()
    assert snapshot(env.rt) == before
    # A declared 1 GiB body is cut off at the limit, not read to the end.
    reader, writer = await asyncio.open_connection("127.0.0.1", env.admin.port)
    try:
        writer.write(b"PUT /weights HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
                     + b" " * 65536)
        await writer.drain()
        reply = await read_reply(reader)
        assert reply.status == 413 and reply.json()["error"] == "body too large"
    finally:
        writer.close()
        await writer.wait_closed()
    assert snapshot(env.rt) == before
    # And a fresh connection is served normally.
    reply = await raw_request(env.admin.port, b"GET /weights HTTP/1.1")
    assert reply.status == 200
