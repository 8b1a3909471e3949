"""Replicas sharing one rollout through a real redis-server: two veers in this process.

The process-level faults (kill -9, SIGSTOP, Redis away) are in
tests/reliability/test_cluster_faults.py; these check the pieces in one loop,
where each step can be watched.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from admin import views
from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.cluster.redis_store import RedisStore, StaleEpoch
from proxy.control.state import RolloutState, Status
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.test_rollout import rollout_config
from tests.redis_server import RedisServer

TOKEN = "t0ken"
PLAN = [{"name": "canary", "weight": 30, "duration": "1h",
         "gates": {"max_error_rate": "5%", "min_requests": 100}},
        {"name": "ramp", "weight": 60, "duration": "1h"},
        {"name": "full", "weight": 100}]


def _cluster(redis: RedisServer, member: str, name: str = "shop") -> dict[str, Any]:
    return {"redis": redis.url, "name": name, "id": member, "lease": "1s"}


async def _replicas(start_veer: StartVeer, cfg: dict[str, Any],
                    redis: RedisServer) -> list[ProxyServer]:
    return [await start_veer({**cfg, "cluster": _cluster(redis, m)}) for m in ("a", "b")]


def _leader(servers: list[ProxyServer]) -> ProxyServer | None:
    for s in servers:
        assert s.rt.cluster is not None
        if s.rt.cluster.describe()["leader"] == s.rt.cluster.describe()["self"]:
            return s
    return None


async def _send(port: int, users: range) -> list[int]:
    async with aiohttp.ClientSession() as session:
        out = []
        for i in users:
            async with session.get(f"http://127.0.0.1:{port}/",
                                   headers={"X-User-Id": f"u{i}"}) as r:
                await r.read()
                out.append(r.status)
        return out


async def test_two_replicas_show_one_cluster_and_count_every_request(
        redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer) -> None:
    servers = await _replicas(start_veer, rollout_config(backends, PLAN), redis_server)
    await until(lambda: _leader(servers) is not None, timeout=10, what="a leader")
    sent = [await _send(s.port, range(i * 100, i * 100 + 60 + 40 * i))
            for i, s in enumerate(servers)]
    assert all(code == 200 for codes in sent for code in codes)
    total = sum(len(codes) for codes in sent)

    def counted(server: ProxyServer) -> int:
        v = views.status(server.rt, 0.0)["variants"]
        return int(v["original"]["requests_total"] + v["new"]["requests_total"])

    # Every replica counts the whole cluster: its own requests and the other's.
    for s in servers:
        await until(lambda s=s: counted(s) == total, timeout=10,  # type: ignore[misc]
                    what=f"{total} requests counted on every replica")
    desc = views.status(servers[0].rt, 0.0)["cluster"]
    assert desc["name"] == "shop" and desc["self"] == "a"
    assert desc["leader"] in ("a", "b")
    await until(lambda: len(servers[1].rt.cluster.describe()["members"]) == 2,  # type: ignore[union-attr]
                timeout=10, what="both members listed")
    members = {m["id"]: m for m in servers[1].rt.cluster.describe()["members"]}  # type: ignore[union-attr]
    assert set(members) == {"a", "b"}
    assert members["a"]["listen"] == f"127.0.0.1:{servers[0].port}" and members["b"]["pid"] > 0
    assert sum(members[m]["requests"]["original"] + members[m]["requests"]["new"]
               for m in members) == total  # each member's own share, as last reported


async def test_an_action_on_the_follower_applies_on_every_replica(
        redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer) -> None:
    servers = await _replicas(start_veer, rollout_config(backends, PLAN), redis_server)
    await until(lambda: _leader(servers) is not None, timeout=10, what="a leader")
    leader = _leader(servers)
    follower = next(s for s in servers if s is not leader)
    assert follower.rollout is not None and leader is not None and leader.rollout is not None
    await follower.rollout.act("advance", "op")
    await until(lambda: all(s.rt.live.new_weight_bp == 6000 for s in servers), timeout=5,
                what="the advance on both replicas")
    assert leader.rollout.controller.state.phase == 1
    await follower.rollout.act("set_weight", "op", weight_bp=4200)
    await until(lambda: all(s.rt.live.new_weight_bp == 4200 for s in servers), timeout=5,
                what="the weight on both replicas")
    assert leader.rollout.controller.state.status is Status.PAUSED  # set_weight pauses


async def test_a_stale_epoch_is_refused_and_a_lost_state_is_written_back(
        redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer) -> None:
    servers = await _replicas(start_veer, rollout_config(backends, PLAN), redis_server)
    await until(lambda: _leader(servers) is not None, timeout=10, what="a leader")
    leader = _leader(servers)
    assert leader is not None and leader.rollout is not None and leader.member is not None
    await leader.rollout.act("advance", "op")
    client = aioredis.from_url(redis_server.url)
    try:
        epoch = leader.member.lease.epoch
        # A writer holding an older epoch (a leader paused past its lease) is refused.
        stale = RedisStore(client, "shop", fence=lambda: epoch - 1)
        _, version = await stale.load()
        with pytest.raises(StaleEpoch):
            await stale.save(RolloutState(rollout="test", weight_bp=0), version)

        async def saved() -> dict[str, Any]:
            raw: Any = await client.hgetall("veer:shop:state")
            return {"version": int(raw[b"version"]), **json.loads(raw[b"doc"])} if raw else {}

        before = await saved()
        assert before["phase"] == 1
        # Redis loses everything: the replicas write back what they knew, at its version.
        await client.flushall()

        async def written_back() -> bool:
            return bool(await saved())

        await until(written_back, timeout=5, what="the state written back")
        doc = await saved()
        # At its version (a replica's restore) or the next (a leader taking the lease anew
        # writes what it knew): never older, never another state.
        assert doc["version"] in (before["version"], before["version"] + 1)
        assert {k: v for k, v in doc.items() if k != "version"} == \
            {k: v for k, v in before.items() if k != "version"}
        assert doc["phase"] == 1 and doc["status"] == "progressing"
        assert all(s.rt.live.new_weight_bp == 6000 for s in servers)  # nothing reset
        # The lease is taken again, with an epoch above every one seen before.
        def newer_leader() -> bool:
            return any(s.member is not None and s.member.lease.held(s.rt.clock.wall())
                       and s.member.lease.epoch > epoch for s in servers)

        await until(newer_leader, timeout=10, what="a leader with a newer epoch")
    finally:
        await client.aclose()


async def test_manual_weights_without_a_rollout_are_the_clusters(
        redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer) -> None:
    servers = await _replicas(start_veer, base_config(backends, admin={"listen": "127.0.0.1:0"}),
                              redis_server)
    admin = AdminServer(servers[1].rt, token=TOKEN, token_from_config=False)
    await admin.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{admin.port}/weights", json={"new": 75},
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200, await r.text()
            await until(lambda: all(s.rt.live.new_weight_bp == 7500 for s in servers),
                        timeout=5, what="75% on both replicas")
            async with session.get(f"http://127.0.0.1:{admin.port}/status") as r:
                body = await r.json()
            assert body["weights"]["new"] == 75.0 and body["cluster"]["self"] == "b"
        # A replica joining later takes the cluster's weight before its first request.
        late = await start_veer({**base_config(backends),
                                 "cluster": _cluster(redis_server, "c")})
        assert late.rt.live.new_weight_bp == 7500
    finally:
        await admin.stop()


async def test_the_dashboard_lists_members_and_the_leader(
        redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer) -> None:
    from tests.functional.test_dashboard import CHROMIUM_ARGS, require_playwright
    from tests.sysdeps import require_binary

    chromium = require_binary("chromium", "apt-get install chromium")
    require_playwright()
    from playwright.async_api import async_playwright, expect

    cfg = rollout_config(backends, PLAN, admin={"listen": "127.0.0.1:0"})
    servers = await _replicas(start_veer, cfg, redis_server)
    await until(lambda: _leader(servers) is not None, timeout=10, what="a leader")
    leader = _leader(servers)
    assert leader is not None and leader.rt.cluster is not None
    leader_id = leader.rt.cluster.describe()["self"]
    admin = AdminServer(servers[1].rt, token=TOKEN, token_from_config=False)
    await admin.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{admin.port}/ui")
                await expect(page.locator("#cluster-card")).to_be_visible(timeout=10_000)
                rows = page.locator("#cluster-members tr")
                await expect(rows).to_have_count(2, timeout=10_000)
                await expect(page.locator("#cluster-members tr[data-member=b]")).to_contain_text(
                    "(this)")
                await expect(page.locator(f"#cluster-members tr[data-member={leader_id}]")
                             ).to_contain_text("leader")
                await expect(page.locator("#cluster-note")).to_contain_text(
                    f"shop \u00b7 leader {leader_id}")
                await expect(page.locator("#cluster-members")).to_contain_text("s ago")
            finally:
                await browser.close()
    finally:
        await admin.stop()


async def test_metrics_show_one_leader_redis_and_the_members(
        redis_server: RedisServer, backends: dict[str, Backend], start_veer: StartVeer) -> None:
    """The series the alert rules use: exactly one replica says it leads, each says Redis
    answers, and each counts both members."""
    from admin.metrics import build_registry, render

    servers = await _replicas(start_veer, rollout_config(backends, PLAN), redis_server)
    await until(lambda: _leader(servers) is not None, timeout=10, what="a leader")
    await until(lambda: all(len(s.rt.cluster.describe()["members"]) == 2  # type: ignore[union-attr]
                            for s in servers), timeout=10, what="both members listed")

    def series(server: ProxyServer) -> dict[str, float]:
        text = render(build_registry(server.rt)).decode()
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("veer_cluster_")}

    seen = [series(s) for s in servers]
    leaders = [v for s in seen for k, v in s.items() if k.startswith("veer_cluster_leader{")]
    assert sorted(leaders) == [0.0, 1.0]
    for member, s in zip(("a", "b"), seen, strict=True):
        assert s[f'veer_cluster_redis_reachable{{cluster="shop",replica="{member}"}}'] == 1.0
        assert s[f'veer_cluster_members{{cluster="shop",replica="{member}"}}'] == 2.0
        assert s[f'veer_cluster_lease_epoch{{cluster="shop",replica="{member}"}}'] >= 1.0
    redis_server.stop()
    await until(lambda: series(servers[0])['veer_cluster_redis_reachable{cluster="shop",'
                                           'replica="a"}'] == 0.0,
                timeout=15, what="replica a to report Redis unreachable")
