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
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.metric_backend import MetricBackend, start_experiment
from tests.redis_server import RedisServer
from tests.sysdeps import require_binary

OBSERVABILITY = Path(__file__).resolve().parents[2] / "admin" / "observability"
StartAdmin = Callable[[ProxyServer], Awaitable[AdminServer]]
EXPERIMENT = {"name": "ranking-v2", "split": 50, "metrics": [
    {"name": "accuracy", "type": "mean", "source": "header", "goal": "increase"}]}


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


def exported_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def names_used(path: Path) -> set[str]:
    """The veer_* series a rules or dashboard file queries (recorded veer:* names aside)."""
    return set(re.findall(r"\bveer_[a-z_]+\b", path.read_text()))


RULES_AND_DASHBOARD = (OBSERVABILITY / "prometheus-rules.yml",
                       OBSERVABILITY / "grafana-dashboard.json")
CLUSTER = "veer_cluster_"  # checked against a replica in a real Redis, below


async def test_rules_and_dashboard_use_metrics_veer_exports(
    backends: dict[str, Backend], start_veer: StartVeer, start_admin: StartAdmin,
    metric_backends: dict[str, MetricBackend],
) -> None:
    server = await start_veer(admin_config(backends))
    admin = await start_admin(server)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/") as r:
        assert r.status == 200
    exported = exported_names(await scrape(admin.port))
    exported |= {"veer_rollout_phase_info", "veer_rollbacks_total"}  # the controller's, later
    # An experiment's series, from a veer running one, with users on both sides so each
    # series has a value (lift and p-value need both).
    exp_server, exp_admin = await start_experiment(metric_backends, start_veer, EXPERIMENT, "t0ken")
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(60):
                async with s.get(f"http://127.0.0.1:{exp_server.port}/x",
                                 headers={"X-User-Id": f"u{i % 30}"}) as r:
                    assert r.status == 200
        exported |= exported_names(await scrape(exp_admin.port))
    finally:
        await exp_admin.stop()
    for path in RULES_AND_DASHBOARD:
        used = {u for u in names_used(path) if not u.startswith(CLUSTER)}
        assert used, path
        assert used <= exported, (path.name, used - exported)


async def test_the_cluster_series_of_the_rules_and_dashboard_are_exported(
    redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer,
    start_admin: StartAdmin,
) -> None:
    cfg = admin_config(backends, rollout={"name": "r", "tick": "100ms", "plan": [
        {"name": "canary", "weight": 10, "duration": "1h"}, {"name": "full", "weight": 100}]},
        cluster={"redis": redis_server.url, "name": "shop", "id": "a", "lease": "1s"})
    cfg.pop("weights")
    server = await start_veer(cfg)
    admin = await start_admin(server)
    cluster = server.rt.cluster
    assert cluster is not None
    await until(lambda: cluster.describe()["leader"] == "a" and
                len(cluster.describe()["members"]) == 1, timeout=10,
                what="the replica leading and listed")
    text = await scrape(admin.port)
    me = (("cluster", "shop"), ("replica", "a"))
    assert samples(text, "veer_cluster_leader") == {me: 1.0}
    assert samples(text, "veer_cluster_redis_reachable") == {me: 1.0}
    assert samples(text, "veer_cluster_members") == {me: 1.0}
    assert samples(text, "veer_cluster_lease_epoch")[me] >= 1
    exported = exported_names(text)
    for path in RULES_AND_DASHBOARD:
        used = {u for u in names_used(path) if u.startswith(CLUSTER)}
        assert used, path
        assert used <= exported, (path.name, used - exported)
