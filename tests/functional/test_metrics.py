"""/metrics, /healthz and /readyz on a live admin listener; promtool on the page and the rules."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.runtime.server import ProxyServer
from tests.functional.conftest import StartVeer, base_config
from tests.sysdeps import require_binary

OBSERVABILITY = Path(__file__).resolve().parents[2] / "admin" / "observability"
StartAdmin = Callable[[ProxyServer], Awaitable[AdminServer]]


@pytest.fixture
async def start_admin() -> AsyncIterator[StartAdmin]:
    started: list[AdminServer] = []

    async def start(server: ProxyServer) -> AdminServer:
        admin = AdminServer(server.rt)
        await admin.start()
        started.append(admin)
        return admin

    yield start
    for a in started:
        await a.stop()


def admin_config(backends: dict[str, Backend], **overrides: Any) -> dict[str, Any]:
    return base_config(backends, admin={"listen": "127.0.0.1:0"}, **overrides)


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return await r.text()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_counts_and_latency_match_what_the_client_saw(
    backends: dict[str, Backend], start_veer: StartVeer, start_admin: StartAdmin
) -> None:
    server = await start_veer(admin_config(backends, weights={"new": 50}))
    admin = await start_admin(server)
    seen: dict[tuple[str, int], int] = {}
    client_latency: dict[str, list[float]] = {"original": [], "new": []}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        for i in range(300):
            path = "/status/503" if i % 10 == 0 else "/slow?s=0.002"
            t0 = loop.time()
            async with s.get(f"http://127.0.0.1:{server.port}{path}",
                             headers={"X-User-Id": f"user-{i}"}) as r:
                await r.read()
                variant = r.headers["x-veer-variant"]
            if path.startswith("/slow"):
                client_latency[variant].append(loop.time() - t0)
            seen[(variant, r.status)] = seen.get((variant, r.status), 0) + 1
    text = await scrape(admin.port)
    requests = samples(text, "veer_requests_total")
    assert {(dict(k)["variant"], int(dict(k)["code"])): int(v) for k, v in requests.items()} \
        == seen
    counts = samples(text, "veer_request_duration_seconds_count")
    for variant in ("original", "new"):
        total = sum(n for (v, _), n in seen.items() if v == variant)
        assert counts[(("variant", variant),)] == total
        p99 = samples(text, "veer_latency_seconds")[
            (("quantile", "0.99"), ("variant", variant), ("window", "60s"))]
        # The backend sleeps 2 ms: veer's p99 is at least that, and (within HDR's 0.1%)
        # no more than the slowest latency the client itself measured.
        assert 0.002 <= p99 <= max(client_latency[variant]) * 1.001
    weights = samples(text, "veer_weight_ratio")
    assert weights[(("variant", "new"),)] == 0.5


async def test_health_and_readiness(
    backends: dict[str, Backend], start_veer: StartVeer, start_admin: StartAdmin
) -> None:
    cfg = admin_config(backends, weights={"new": 0}, health={"consecutive_failures": 2})
    cfg["upstreams"]["original"]["endpoints"] = ["http://127.0.0.1:1"]  # nothing listens
    server = await start_veer(cfg)
    admin = await start_admin(server)
    base = f"http://127.0.0.1:{admin.port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{base}/readyz") as r:
            assert r.status == 200
        for _ in range(2):
            async with s.get(f"http://127.0.0.1:{server.port}/") as r:
                assert r.status == 502
        async with s.get(f"{base}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and "no usable endpoint in original" in body["problems"]
        server.rt.draining = True
        async with s.get(f"{base}/readyz") as r:
            assert "draining" in (await r.json())["problems"]


async def test_promtool_accepts_live_metrics(
    backends: dict[str, Backend], start_veer: StartVeer, start_admin: StartAdmin
) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    server = await start_veer(admin_config(backends, weights={"new": 50}))
    admin = await start_admin(server)
    async with aiohttp.ClientSession() as s:
        for i in range(50):
            async with s.get(f"http://127.0.0.1:{server.port}/",
                             headers={"X-User-Id": str(i)}) as r:
                await r.read()
    text = await scrape(admin.port)
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"", result.stdout  # no lint warnings either


def test_promtool_accepts_the_alerting_rules() -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    result = subprocess.run([promtool, "check", "rules",
                             str(OBSERVABILITY / "prometheus-rules.yml")],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"SUCCESS" in result.stdout


async def test_rules_and_dashboard_use_metrics_veer_exports(
    backends: dict[str, Backend], start_veer: StartVeer, start_admin: StartAdmin
) -> None:
    server = await start_veer(admin_config(backends))
    admin = await start_admin(server)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/") as r:
        assert r.status == 200
    exported = {s.name for f in text_string_to_metric_families(await scrape(admin.port))
                for s in f.samples}
    exported |= {"veer_rollout_phase_info", "veer_rollbacks_total"}  # the controller's, later
    for path in (OBSERVABILITY / "prometheus-rules.yml", OBSERVABILITY / "grafana-dashboard.json"):
        used = set(re.findall(r"\bveer_[a-z_]+\b", path.read_text()))
        used = {u for u in used if not u.startswith("veer:")}
        assert used, path
        assert used <= exported, (path.name, used - exported)
