"""The admin API over real HTTP: every endpoint, each error status, auth, and schemathesis."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Veer-Actor": "alice"}
PLAN = [{"name": "canary", "weight": 10, "duration": "1h",
         "gates": {"max_error_rate": "5%", "min_requests": 20}},
        {"name": "ramp", "weight": 30, "duration": "1h"},
        {"name": "full", "weight": 100}]
Admin = Callable[..., Awaitable[tuple[ProxyServer, str]]]


@pytest.fixture
async def admin(backends: dict[str, Backend], start_veer: StartVeer) -> AsyncIterator[Admin]:
    started: list[AdminServer] = []

    async def start(rollout: bool = True, token: str | None = TOKEN) -> tuple[ProxyServer, str]:
        cfg = base_config(backends, admin={"listen": "127.0.0.1:0"})
        if rollout:
            cfg.pop("weights")
            cfg["rollout"] = {"name": "api", "tick": "100ms", "plan": PLAN}
        server = await start_veer(cfg)
        a = AdminServer(server.rt, token=token, token_from_config=False)
        await a.start()
        started.append(a)
        return server, f"http://127.0.0.1:{a.port}"

    yield start
    for a in started:
        await a.stop()


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


async def test_reads(admin: Admin) -> None:
    server, base = await admin()
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.get(f"http://127.0.0.1:{server.port}/", headers={"X-User-Id": str(i)}):
                pass
    status, body = await call("GET", f"{base}/status")
    assert status == 200
    assert body["weights"] == {"original": 90.0, "new": 10.0}
    assert body["rollout"]["name"] == "api" and body["rollout"]["phase"]["name"] == "canary"
    assert body["variants"]["original"]["requests_total"] + \
        body["variants"]["new"]["requests_total"] == 30
    assert (await call("GET", f"{base}/weights")) == (200, {"original": 90.0, "new": 10.0})
    status, analysis = await call("GET", f"{base}/analysis")
    assert status == 200 and set(analysis["variants"]) == {"original", "new"}
    assert len(analysis["variants"]["new"]["error_rate_ci95"]) == 2
    status, spec = await call("GET", f"{base}/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    status, page = await call("GET", f"{base}/ui")
    assert (status == 200 and "<html" in page.lower()) or "<!doctype" in page.lower()
    assert (await call("GET", f"{base}/healthz"))[0] == 200
    assert (await call("GET", f"{base}/readyz"))[0] == 200
    status, err = await call("GET", f"{base}/nope")
    assert status == 404 and set(err) == {"error", "detail"}


async def test_mutations_need_the_token(admin: Admin) -> None:
    server, base = await admin()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, err = await call("POST", f"{base}/rollout/promote", headers=headers)
        assert status == 401 and err["error"] == "unauthorized"
        status, _ = await call("PUT", f"{base}/weights", json={"new": 50}, headers=headers)
        assert status == 401
    assert server.rt.live.new_weight_bp == 1000  # nothing changed
    status, _ = await call("GET", f"{base}/rollout/promote")  # GET never mutates
    assert status == 405 and server.rt.live.new_weight_bp == 1000


async def test_no_configured_token_disables_mutations(admin: Admin) -> None:
    _server, base = await admin(token=None)
    status, err = await call("POST", f"{base}/rollout/pause", headers=AUTH)
    assert status == 401 and "no admin token is configured" in err["detail"]


async def test_weights_put(admin: Admin) -> None:
    server, base = await admin()
    status, body = await call("PUT", f"{base}/weights", json={"new": 12.5}, headers=AUTH)
    assert status == 200 and body["weights"]["new"] == 12.5
    assert server.rt.live.new_weight_bp == 1250
    assert body["status"]["status"] == "paused"  # a manual weight pauses the plan
    assert body["events"][0]["actor"] == "alice"
    ok = await call("PUT", f"{base}/weights", json={"original": 90, "new": 10}, headers=AUTH)
    assert ok[0] == 200 and server.rt.live.new_weight_bp == 1000
    for bad in ({"new": 101}, {"new": 1.234}, {"new": "10"}, {"original": 80, "new": 10},
                {}, {"new": 10, "extra": 1}, {"new": True}):
        status, err = await call("PUT", f"{base}/weights", json=bad, headers=AUTH)
        assert status == 422, (bad, err)
    status, _ = await call("PUT", f"{base}/weights", data=b"{nope",
                           headers={**AUTH, "Content-Type": "application/json"})
    assert status == 400
    status, _ = await call("PUT", f"{base}/weights", json=[1, 2], headers=AUTH)
    assert status == 422
    status, _ = await call("PUT", f"{base}/weights", data=b"new=5",
                           headers={**AUTH, "Content-Type": "text/plain"})
    assert status == 415
    status, _ = await call("PUT", f"{base}/weights", data=b"{" + b" " * 40_000 + b"}",
                           headers={**AUTH, "Content-Type": "application/json"})
    assert status == 413
    assert server.rt.live.new_weight_bp == 1000


async def test_weights_put_without_rollout(admin: Admin) -> None:
    server, base = await admin(rollout=False)
    status, body = await call("PUT", f"{base}/weights", json={"new": 40}, headers=AUTH)
    assert status == 200 and server.rt.live.new_weight_bp == 4000 and body["status"] is None
    status, events = await call("GET", f"{base}/events")
    assert events["events"][0]["kind"] == "weight" and events["events"][0]["actor"] == "alice"
    status, err = await call("POST", f"{base}/rollout/advance", headers=AUTH)
    assert status == 409 and "no rollout" in err["detail"]


async def test_actions_and_conflicts(admin: Admin) -> None:
    server, base = await admin()
    assert (await call("POST", f"{base}/rollout/pause", json={"reason": "lunch"},
                       headers=AUTH))[0] == 200
    assert (await call("POST", f"{base}/rollout/resume", headers=AUTH))[0] == 200
    status, _body = await call("POST", f"{base}/rollout/advance", headers=AUTH)
    assert status == 200 and server.rt.live.new_weight_bp == 3000
    assert (await call("POST", f"{base}/rollout/approve", headers=AUTH))[0] == 200
    assert (await call("POST", f"{base}/rollout/promote", headers=AUTH))[0] == 200
    assert server.rt.live.new_weight_bp == 10000
    status, err = await call("POST", f"{base}/rollout/advance", headers=AUTH)
    assert status == 409 and "complete" in err["detail"]
    assert (await call("POST", f"{base}/rollout/explode", headers=AUTH))[0] == 404
    status, _ = await call("POST", f"{base}/rollout/pause", json={"bogus": 1}, headers=AUTH)
    assert status == 422
    status, _ = await call("POST", f"{base}/rollout/rollback",
                           json={"mode": "targeted", "users": ["u1", "u2"]}, headers=AUTH)
    assert status == 200 and server.rt.snapshot.router.denied_users(server.rt.live) >= {"u1", "u2"}
    status, _ = await call("POST", f"{base}/rollout/rollback", json={"mode": "sideways"},
                           headers=AUTH)
    assert status == 422
    status, _ = await call("POST", f"{base}/rollout/rollback",
                           json={"mode": "gradual", "stages": [0.5, 0], "interval": "50ms"},
                           headers=AUTH)
    assert status == 200 and server.rt.live.new_weight_bp == 5000
    await until(lambda: server.rt.live.new_weight_bp == 0, timeout=5, interval=0.02,
                what="the gradual rollback to reach weight 0")
    status, err = await call("POST", f"{base}/rollout/resume", headers=AUTH)
    assert status == 409
    status, events = await call("GET", f"{base}/events", params={"actor": "alice", "limit": 3})
    assert status == 200 and len(events["events"]) == 3 and events["next_offset"] == 3
    assert all(e["actor"] == "alice" for e in events["events"])
    status, page2 = await call("GET", f"{base}/events",
                               params={"actor": "alice", "limit": 3, "offset": 3})
    assert page2["events"][0] != events["events"][-1]
    kinds = {e["kind"] for e in (await call("GET", f"{base}/events",
                                            params={"limit": 500}))[1]["events"]}
    assert {"pause", "resume", "advance", "approve", "promote", "rollback-targeted",
            "rollback-gradual", "rollback"} <= kinds
    for bad in ({"limit": 0}, {"limit": "x"}, {"offset": -1}, {"since": "yesterday"}):
        assert (await call("GET", f"{base}/events", params=bad))[0] == 400


async def test_refuses_non_loopback_bind_without_token(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    os.environ.pop("VEER_ADMIN_TOKEN", None)
    server = await start_veer(base_config(backends, admin={"listen": "0.0.0.0:0"}))
    with pytest.raises(RuntimeError, match="not a loopback address"):
        await AdminServer(server.rt).start()


async def test_schemathesis_finds_no_server_errors(admin: Admin, tmp_path: Path) -> None:
    """Property-based requests from the OpenAPI spec: no 5xx, responses match the schema."""
    _, base = await admin()
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
           "--checks", "not_a_server_error,status_code_conformance,"
           "content_type_conformance,response_schema_conformance,ignored_auth",
           "--header", f"Authorization: Bearer {TOKEN}",
           "--max-examples", "30", "--phases", "examples,coverage,fuzzing",
           "--report", "junit", "--report-dir", str(tmp_path), "--workers", "1",
           "--seed", "1"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode(errors="replace")
    print(text[-3000:])
    assert proc.returncode == 0, text[-6000:]


# -- what a hostile-peer review found -------------------------------------------------

async def test_duplicate_json_keys_and_two_authorizations_are_refused(admin: Admin) -> None:
    _, base = await admin(rollout=False)
    status, err = await call("PUT", f"{base}/weights", headers={
        **AUTH, "Content-Type": "application/json"}, data=b'{"new": 1, "new": 90}')
    assert status == 400 and "duplicate key" in err["detail"]
    assert (await call("GET", f"{base}/weights"))[1] == {"original": 90.0, "new": 10.0}
    reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
    body = b'{"new": 50}'
    writer.write(b"PUT /weights HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(body), body))
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert (await call("GET", f"{base}/weights"))[1] == {"original": 90.0, "new": 10.0}


async def test_unparseable_requests_get_json_errors(admin: Admin) -> None:
    _, base = await admin(rollout=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", reply  # aiohttp answers a broken request as 1.0
    assert b"application/json" in head.lower()
    import json
    assert set(json.loads(payload)) == {"error", "detail"}


async def test_a_state_that_cannot_be_saved_is_a_json_503(
        admin: Admin, tmp_path: Path) -> None:
    server, base = await admin()
    assert server.rt.rollout is not None

    async def full_disk(state: object, version: int) -> int:
        raise OSError(28, "No space left on device")

    server.rt.rollout.store.save = full_disk  # type: ignore[method-assign]
    status, err = await call("POST", f"{base}/rollout/pause", headers=AUTH, json={})
    assert status == 503 and err["error"] == "state not saved"
    assert "No space left" in err["detail"]
    assert server.rt.rollout.save_error is not None  # saving is retried at the next tick
