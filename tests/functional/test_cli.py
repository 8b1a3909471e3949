"""The operator CLI as a real subprocess against a live veer and its admin API.

The proxy and the admin listener run on the test's event loop, so every CLI call
runs in a worker thread (``asyncio.to_thread``) and never blocks that loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.control.state import Event, Status
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.test_rollout import traffic

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"
NAME = "checkout-v2"
CLEAR = "\x1b[H\x1b[2J"
PLAN = [{"name": "canary", "weight": 10, "duration": "1h",
         "gates": {"max_error_rate": "5%", "min_requests": 20}},
        {"name": "full", "weight": 100}]


@dataclass(frozen=True)
class Result:
    """What one ``veer`` run did."""

    code: int
    out: str
    err: str


async def veer(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m admin.cli *args`` in a thread; ``env`` replaces the VEER_ADMIN* vars."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("VEER_ADMIN")}
    full.update(env or {})
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "admin.cli", *args], cwd=ROOT, env=full,
        capture_output=True, text=True, timeout=30, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Live:
    """A running veer with a rollout, its admin API, and a CLI pointed at it."""

    server: ProxyServer
    admin: AdminServer
    backends: dict[str, Backend]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"

    async def cli(self, *args: str, token: str | None = TOKEN,
                  env: dict[str, str] | None = None) -> Result:
        """The CLI with ``VEER_ADMIN`` set to this admin API and ``token`` (None: no token)."""
        full = {"VEER_ADMIN": self.url, **({"VEER_ADMIN_TOKEN": token} if token else {}),
                **(env or {})}
        return await veer(*args, env=full)

    def status(self) -> Status:
        """The rollout's status now (a method, so no check narrows it for later ones)."""
        assert self.server.rollout is not None
        return self.server.rollout.controller.state.status

    @property
    def events(self) -> list[Event]:
        assert self.server.rollout is not None
        return self.server.rollout.controller.state.events


@pytest.fixture
async def live(backends: dict[str, Backend], start_veer: StartVeer) -> AsyncIterator[Live]:
    """veer with a canary 10% (1h, gates) then full 100% plan, and its admin API on port 0."""
    cfg = base_config(backends, rollout={"name": NAME, "tick": "100ms", "plan": PLAN},
                      admin={"listen": "127.0.0.1:0"})
    cfg.pop("weights")
    server = await start_veer(cfg)
    admin = AdminServer(server.rt, token=TOKEN)
    await admin.start()
    try:
        yield Live(server, admin, backends)
    finally:
        await admin.stop()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_status_table_and_json(live: Live) -> None:
    async with traffic(live.server.port, workers=4) as counts:
        await until(lambda: counts.get("new:200", 0) > 100, 10, what="traffic on new")
        assert live.server.rollout is not None
        controller = live.server.rollout.controller
        await until(lambda: bool(controller.findings)
                    and all(str(f.verdict) == "pass" for f in controller.findings),
                    10, what="the gates to pass")
        recorder, loop = live.server.rt.recorder, asyncio.get_running_loop()
        # "since phase" counts whole seconds from the first one after the phase began
        await until(lambda: all(recorder.variants[v].since_marked(loop.time()).requests
                                for v in ("original", "new")), 10,
                    what="a whole second of traffic")
        table, raw, weights, weights_raw = await asyncio.gather(
            live.cli("status"), live.cli("status", "--json"), live.cli("weights"),
            live.cli("weights", "--json"))
    assert table.code == 0, table
    out = table.out
    assert re.search(rf"^rollout\s+{NAME}\s+progressing$", out, re.M), out
    assert re.search(r"^phase\s+canary \(1/2\), weight 10%, elapsed \d+s of at least 1h00m$",
                     out, re.M), out
    assert re.search(r"^weights\s+original 90%  new 10%$", out, re.M), out
    assert re.search(r"^\s+error_rate\s+pass\s+\d+/\d+", out, re.M), out
    # each variant: weight, window rate, error rate and p50/p99/p999, then since the phase
    lat = r"\d+(?:\.\d)?(?:us|ms|\.\d\ds)"
    for variant, weight in (("original", "90%"), ("new", "10%")):
        assert re.search(rf"^{variant}\s+{weight}\s+last 10s\s+\d+\.\d\s+\d+\s+\d+\s+\d+\s+"
                         rf"\d+\.\d\d%\s+{lat}\s+{lat}\s+{lat}$", out, re.M), out
    assert len(re.findall(rf"^\s+since phase\s+-\s+-\s+\d+\s+\d+\s+\d+\.\d\d%\s+{lat}\s+{lat}\s+"
                          rf"{lat}$", out, re.M)) == 2, out

    assert raw.code == 0, raw
    data = json.loads(raw.out)
    assert data["rollout"]["name"] == NAME and data["rollout"]["phase"]["name"] == "canary"
    assert data["weights"] == {"original": 90.0, "new": 10.0}
    assert data["variants"]["new"]["window"]["requests"] > 0
    assert weights.code == 0 and weights.out.strip() == "original 90%  new 10%", weights
    assert json.loads(weights_raw.out) == {"original": 90.0, "new": 10.0}


async def test_weights_set_pauses_the_plan(live: Live) -> None:
    r = await live.cli("weights", "set", "--new", "25", "--actor", "ops")
    assert r.code == 0, r
    assert live.server.rt.live.new_weight_bp == 2500 and live.status() is Status.PAUSED
    assert "weight: 10% -> 25%" in r.out and "by ops" in r.out, r.out
    assert "now: weights original 75%  new 25%" in r.out, r.out

    r = await live.cli("weights", "set", "--original", "87.5", "--new", "12.5", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["weights"] == {"original": 87.5, "new": 12.5}
    assert live.server.rt.live.new_weight_bp == 1250

    refused, missing, out_of_range = await asyncio.gather(
        live.cli("weights", "set", "--original", "50", "--new", "10"),
        live.cli("weights", "set"), live.cli("weights", "set", "--new", "150"))
    assert refused.code == 1, refused
    assert refused.err.strip() == "veer: invalid body: original + new must be 100"
    assert missing.code == 2 and "--new" in missing.err, missing
    assert out_of_range.code == 2 and "0..100" in out_of_range.err, out_of_range
    assert live.server.rt.live.new_weight_bp == 1250


async def test_actions_in_sequence_and_a_forbidden_one(live: Live) -> None:
    steps: list[tuple[tuple[str, ...], Status, int]] = [
        (("pause", "--reason", "looking at p99"), Status.PAUSED, 1000),
        (("resume",), Status.PROGRESSING, 1000),
        (("approve",), Status.PROGRESSING, 1000),
        (("advance",), Status.PROGRESSING, 10000),
        (("promote",), Status.COMPLETE, 10000),
    ]
    for args, status, weight in steps:
        r = await live.cli(*args, "--actor", "alice")
        assert r.code == 0, (args, r)
        assert (live.status(), live.server.rt.live.new_weight_bp) == (status, weight), args
        assert f"{args[0]}: " in r.out and "by alice" in r.out, r.out

    before = len(live.events)
    r = await live.cli("advance", "--actor", "alice")
    assert r.code == 1, r
    assert r.err.strip() == "veer: conflict: cannot advance while complete"
    assert r.out == "" and len(live.events) == before and live.status() is Status.COMPLETE

    table, paused, limited = await asyncio.gather(
        live.cli("events", "--actor", "alice"), live.cli("events", "--kind", "pause", "--json"),
        live.cli("events", "--limit", "2"))
    assert table.code == 0, table
    rows = table.out.splitlines()
    assert rows[0].split() == ["TIME", "KIND", "FROM", "->", "TO", "REASON", "ACTOR"]
    kinds = [row.split()[1] for row in rows[1:]]
    assert kinds == ["promote", "advance", "approve", "resume", "pause"], table.out
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", row) for row in rows[1:])
    assert all(row.endswith(" alice") for row in rows[1:]), table.out
    assert re.search(r"progressing@10% -> paused@10%\s+looking at p99\s+alice$", table.out,
                     re.M), table.out
    assert re.search(r"canary -> full\s+advanced by hand\s+alice$", table.out, re.M), table.out
    page = json.loads(paused.out)
    assert [(e["kind"], e["reason"], e["actor"]) for e in page["events"]] == [
        ("pause", "looking at p99", "alice")]
    assert len(limited.out.splitlines()) == 4, limited.out  # header, 2 rows, footer
    assert "(2 of 5 events; --limit for more)" in limited.out


async def test_targeted_then_gradual_rollback(live: Live) -> None:
    r = await live.cli("rollback", "--users", "u1,u2", "--actor", "bob")
    assert r.code == 0, r
    assert live.server.rollout is not None
    assert {"u1", "u2"} <= set(live.server.rollout.controller.state.deny_users)
    assert live.server.rt.live.new_weight_bp == 1000 and live.status() is Status.PROGRESSING
    status = await live.cli("status")
    assert re.search(r"^denied\s+u1, u2$", status.out, re.M), status.out

    seen = set()
    r = await live.cli("rollback", "--gradual", "--stages", "75,50,25,0", "--interval", "200ms",
                       "--reason", "slow checkout", "--actor", "bob")
    assert r.code == 0, r
    assert "rollback-gradual: progressing@10% -> rolling-back@10%" in r.out, r.out
    assert "rollback-step: 10% -> 7.5%" in r.out, r.out

    def finished() -> bool:
        seen.add(live.server.rt.live.new_weight_bp)
        return live.status() is Status.ROLLED_BACK
    await until(finished, 5, what="the gradual rollback to finish")
    assert live.server.rt.live.new_weight_bp == 0
    assert {500, 250} <= seen, seen  # 750 was set at once, by the command itself

    events = await live.cli("events", "--json", "--limit", "10")
    kinds = [(e["kind"], e["actor"]) for e in json.loads(events.out)["events"]]
    assert kinds[-2:] == [("rollback-gradual", "bob"), ("rollback-targeted", "bob")], kinds
    assert kinds[0] == ("rollback", "controller"), kinds


async def test_immediate_rollback(live: Live) -> None:
    r = await live.cli("rollback", "--gradual", "--interval", "1h")
    assert r.code == 0, r
    assert live.status() is Status.ROLLING_BACK and live.server.rt.live.new_weight_bp == 750
    r = await live.cli("rollback", "--reason", "bad deploy", "--actor", "carol")
    assert r.code == 0, r
    assert live.status() is Status.ROLLED_BACK and live.server.rt.live.new_weight_bp == 0
    last = live.events[-1]
    assert (last.kind, last.reason, last.actor) == ("rollback", "bad deploy", "carol")
    again = await live.cli("rollback")
    assert again.code == 1 and again.err.strip() == \
        "veer: conflict: cannot rollback while rolled-back", again


async def test_wrong_or_missing_token_changes_nothing(live: Live, tmp_path: Path) -> None:
    before = len(live.events)
    wrong, wrong_weights, missing, reading = await asyncio.gather(
        live.cli("pause", token="nope"), live.cli("weights", "set", "--new", "50", token="nope"),
        live.cli("abort", token=None), live.cli("status", token=None))
    for r in (wrong, wrong_weights):
        assert r.code == 4, r
        assert r.err.startswith("veer: unauthorized: missing or wrong bearer token"), r.err
        assert "VEER_ADMIN_TOKEN" in r.err
    assert missing.code == 4 and "set VEER_ADMIN_TOKEN" in missing.err, missing
    assert reading.code == 0, reading  # reading needs no token
    assert live.status() is Status.PROGRESSING and live.server.rt.live.new_weight_bp == 1000
    assert len(live.events) == before

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    r = await live.cli("abort", "--reason", "not today", "--token-file", str(token_file),
                       token="nope")  # the file wins over the environment
    assert r.code == 0, r
    assert live.status() is Status.ABORTED and live.server.rt.live.new_weight_bp == 0
    r = await live.cli("abort", "--token-file", str(tmp_path / "absent"))
    assert r.code == 2 and "--token-file" in r.err, r


async def test_unreachable_admin_api() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        down, by_env, hung, watching = await asyncio.gather(
            veer("status", "--admin", url), veer("pause", env={"VEER_ADMIN": url,
                                                               "VEER_ADMIN_TOKEN": TOKEN}),
            veer("status", "--admin", silent_url, "--timeout", "300ms"),
            veer("watch", "--admin", url, "--count", "1"))
    finally:
        silent.close()
    for r in (down, by_env):
        assert r.code == 3, r
        assert r.err.startswith(f"veer: cannot reach the admin API at {url}: connection "
                                "refused"), r.err
    assert hung.code == 3 and f"{silent_url}: no answer within 0.3s" in hung.err, hung
    assert watching.code == 3 and f"cannot reach the admin API at {url}" in watching.out


async def test_not_found_and_server_error() -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("broken handler")

    app = web.Application()
    app.router.add_get("/status", boom)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        failed, missing = await asyncio.gather(veer("status", "--admin", url),
                                               veer("weights", "--admin", url))
    finally:
        await runner.cleanup()
    assert failed.code == 5 and failed.err.startswith(f"veer: server error 500 from {url}"), \
        failed
    assert missing.code == 1 and missing.err.startswith("veer: Not Found"), missing


async def test_watch_refreshes_then_stops(live: Live) -> None:
    r = await live.cli("watch", "--count", "2", "--interval", "100ms")
    assert r.code == 0, r
    assert r.out.count(CLEAR) == 2, r.out
    assert len(re.findall(rf"^rollout\s+{NAME}\s+progressing$", r.out, re.M)) == 2, r.out
    assert r.out.count(f"veer watch  {live.url}  every 0.1s") == 2, r.out
    lines = await live.cli("watch", "--count", "2", "--interval", "100ms", "--json")
    frames: list[dict[str, Any]] = [json.loads(x) for x in lines.out.splitlines()]
    assert lines.code == 0 and [f["rollout"]["name"] for f in frames] == [NAME, NAME]


async def test_watch_exits_0_on_ctrl_c(live: Live) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEER_ADMIN")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "watch", "--admin", live.url, "--interval", "50ms",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readuntil(b"(Ctrl-C to stop)"), 10)
    assert CLEAR.encode() in first
    proc.send_signal(2)  # SIGINT, what Ctrl-C sends
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, (out, err)
    assert b"Traceback" not in err


@pytest.mark.parametrize("args", [
    ("rollback", "--gradual", "--users", "u1"),
    ("rollback", "--stages", "50,0"),
    ("rollback", "--gradual", "--stages", "50,10"),
    ("events", "--limit", "0"),
    ("status", "--admin", "ftp://example.org"),
    ("watch", "--count", "0"),
    ("frobnicate",),
])
async def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    r = await veer(*args, "--admin", f"http://127.0.0.1:{closed_port()}") \
        if "--admin" not in args and args != ("frobnicate",) else await veer(*args)
    assert r.code == 2, r
    assert r.err.strip(), r
