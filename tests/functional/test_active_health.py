"""Active health checks on real sockets: a backend killed with no traffic leaves rotation
within interval x unhealthy, comes back after ``healthy`` good probes, and every surface
(/metrics, /status, /readyz, events, the balancer) says so."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from admin.demo.backend import Backend, start_backend
from admin.server import AdminServer
from proxy.config.load import from_dict
from proxy.runtime.reload import apply
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.ports import free_port

FAST = {"path": "/healthz", "interval": "100ms", "timeout": "80ms", "healthy": 2,
        "unhealthy": 2}


def healthy(server: ProxyServer) -> dict[str, bool]:
    now = server.rt.loop.time()
    return {ep.label: ep.healthy(now) for _, ep in server.rt.endpoints()}


async def metric_lines(admin: AdminServer, name: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin.port}/metrics") as r:
        return [line for line in (await r.text()).splitlines() if line.startswith(name)]


async def test_a_backend_killed_with_no_traffic_leaves_rotation_and_comes_back(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    server = await start_veer(base_config(backends, health={"active": FAST},
                                          admin={"listen": "127.0.0.1:0"}))
    admin = AdminServer(server.rt, token_from_config=False)
    await admin.start()
    try:
        victim = backends["original-b"]
        port = int(victim.url.rsplit(":", 1)[1])
        await until(lambda: all(healthy(server).values()) and server.rt.health_checker
                    is not None and server.rt.health_checker.rounds >= 2, timeout=10,
                    what="two rounds of probes with everything up")
        await victim.close()
        killed = time.monotonic()
        await until(lambda: not healthy(server)[victim.url], timeout=10,
                    what="the killed endpoint to leave rotation")
        took = time.monotonic() - killed
        # interval x unhealthy = 0.2 s, plus a round in flight; generous for a busy machine
        assert took < 3.0, took
        lines = await metric_lines(admin, "veer_endpoint_healthy{")
        assert f'veer_endpoint_healthy{{endpoint="{victim.url}",variant="original"}} 0.0' \
            in lines, lines
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{admin.port}/status") as r:
                rows = {e["endpoint"]: e for e in (await r.json())["endpoints"]}
            assert rows[victim.url]["healthy"] is False and rows[victim.url]["active"]["down"]
            assert rows[victim.url]["active"]["last"].startswith("connect")
            async with s.get(f"http://127.0.0.1:{admin.port}/events?kind=endpoint-down") as r:
                events = (await r.json())["events"]
            assert [e["from"] for e in events] == [victim.url]
            # every request now goes to the endpoint left, none fails
            for i in range(20):
                async with s.get(f"http://127.0.0.1:{server.port}/",
                                 headers={"X-User-Id": f"u{i}"}) as r:
                    assert r.status == 200
        assert victim.url not in {ep.label for _, ep in server.rt.endpoints()
                                  if ep.total and ep.probe_down}

        revived = await start_backend("original-b", port)
        backends["original-b"] = revived
        await until(lambda: healthy(server)[victim.url], timeout=10,
                    what="the endpoint to rejoin after two good probes")
        lines = await metric_lines(admin, "veer_endpoint_health_transitions_total")
        assert any('to="down"' in line and line.endswith(" 1.0") for line in lines), lines
        assert any('to="up"' in line and line.endswith(" 1.0") for line in lines), lines
    finally:
        await admin.stop()


async def test_readyz_turns_503_when_originals_only_endpoint_fails_its_checks(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    cfg: dict[str, Any] = base_config(backends, health={"active": {**FAST,
                                                                   "path": "/status/503"}},
                                      admin={"listen": "127.0.0.1:0"})
    cfg["upstreams"]["original"]["endpoints"] = [backends["original-a"].url]
    server = await start_veer(cfg)
    admin = AdminServer(server.rt, token_from_config=False)
    await admin.start()
    try:
        async def ready() -> int:
            url = f"http://127.0.0.1:{admin.port}/readyz"
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                return r.status

        await until(lambda: not healthy(server)[backends["original-a"].url], timeout=10,
                    what="503 probes to take original out")
        assert await ready() == 503
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{server.port}/") as r:
            assert r.status == 503  # no healthy upstream: said, not forwarded to a dead one
        # A reload that fixes the path brings it back; one that turns checks off too.
        apply(server.rt, from_dict({**cfg, "health": {"active": FAST}}, "<t>"), ["health"])
        await until(lambda: healthy(server)[backends["original-a"].url], timeout=10,
                    what="good probes after the reload")
        assert await ready() == 200
        apply(server.rt, from_dict({**cfg, "health": {"active": {**FAST, "path": "/status/500"}}},
                                   "<t>"), ["health"])
        await until(lambda: not healthy(server)[backends["original-a"].url], timeout=10,
                    what="down again")
        apply(server.rt, from_dict({k: v for k, v in cfg.items() if k != "health"}, "<t>"),
              ["health"])
        await until(lambda: healthy(server)[backends["original-a"].url], timeout=10,
                    what="checks off: back to passive health alone")
    finally:
        await admin.stop()


async def test_a_probe_that_hangs_fails_by_its_timeout_and_an_expected_range_is_honoured(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    # A listener that accepts and never answers: only the timeout can fail the probe.
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    cfg = base_config(backends, health={"active": {**FAST, "path": "/status/418",
                                                   "expect": "418-418"}})
    cfg["upstreams"]["new"]["endpoints"] = [f"http://127.0.0.1:{port}"]
    try:
        server = await start_veer(cfg)
        await until(lambda: not healthy(server)[f"http://127.0.0.1:{port}"], timeout=10,
                    what="the silent endpoint to fail by timeout")
        ep = next(ep for _, ep in server.rt.endpoints() if ep.address.port == port)
        assert ep.probe.startswith("no answer within")
        await asyncio.sleep(0)  # the 418s passed: the original endpoints stayed in
        assert all(h for label, h in healthy(server).items() if str(port) not in label)
    finally:
        silent.close()
        for w in held:
            w.close()
        await silent.wait_closed()


async def test_a_dead_endpoint_at_start_never_gets_traffic_once_found(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = base_config(backends, health={"active": FAST, "consecutive_failures": 1000})
    cfg["upstreams"]["original"]["endpoints"] = [backends["original-a"].url, dead]
    server = await start_veer(cfg)
    await until(lambda: not healthy(server)[dead], timeout=10, what="the dead endpoint found")
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.get(f"http://127.0.0.1:{server.port}/",
                             headers={"X-User-Id": f"u{i}"}) as r:
                assert r.status == 200
    ep = next(ep for _, ep in server.rt.endpoints() if ep.label == dead)
    assert ep.total == 0  # passive health alone (1000 failures) would have kept trying it
