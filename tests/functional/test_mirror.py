"""Mirroring on real sockets: copies of original's requests reach new and are judged, and the
client never notices them (a slow, failing or dead shadow; a full queue); a shadow phase
rolls back a broken release before any user is routed to it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from admin.demo.backend import Backend
from proxy.routing.variant import NEW, ORIGINAL, PAIRED, SHADOW
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.ports import free_port


def mirrored(backends: dict[str, Backend], **mirror: Any) -> dict[str, Any]:
    return base_config(backends, weights={"new": 0}, mirror={"percent": 100, **mirror})


def shadows(backend: Backend) -> list[dict[str, object]]:
    def marked(r: dict[str, object]) -> bool:
        headers = r.get("headers", [])
        assert isinstance(headers, list)
        return any(k.lower() == "x-veer-shadow" and v == "1" for k, v in headers)

    return [r for r in backend.seen if marked(r)]


async def send(server: ProxyServer, n: int, method: str = "GET", data: bytes | None = None,
               path: str = "/m") -> list[tuple[int, str, float]]:
    """n requests, one after another: (status, backend, seconds) each."""
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            began = time.monotonic()
            async with s.request(method, f"http://127.0.0.1:{server.port}{path}?i={i}",
                                 data=data, headers={"X-User-Id": f"u{i}"}) as r:
                await r.read()
                out.append((r.status, r.headers.get("X-Backend", ""), time.monotonic() - began))
    return out


def series(server: ProxyServer, name: str) -> int:
    return server.rt.recorder.variants[name].requests  # type: ignore[index]


async def test_copies_reach_new_marked_and_the_client_gets_originals_answer(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    server = await start_veer(mirrored(backends))
    answers = await send(server, 20)
    assert all(status == 200 and backend.startswith("original") for status, backend, _ in answers)
    await until(lambda: series(server, SHADOW) == 20, timeout=10, what="20 judged copies")
    copies = shadows(backends["new"])
    assert sorted(str(c["path"]) for c in copies) == sorted(f"/m?i={i}" for i in range(20))
    rec = server.rt.recorder.variants
    assert rec[SHADOW].codes[200] == 20 and rec[PAIRED].codes[200] == 20
    assert rec[SHADOW].mismatches == 0 and rec[NEW].requests == 0  # no user went to new
    assert rec[ORIGINAL].requests == 20


async def test_a_slow_shadow_never_delays_the_client(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    backends["new"].fault.delay = 1.0
    server = await start_veer(mirrored(backends))
    answers = await send(server, 8)
    assert all(status == 200 for status, _, _ in answers)
    assert max(t for _, _, t in answers) < 0.5, answers  # the copy takes 1 s; the client not
    await until(lambda: series(server, SHADOW) == 8, timeout=15, what="8 slow copies")
    shadow = server.rt.view.since_marked(SHADOW)
    assert shadow.p50 >= 1.0 and server.rt.view.since_marked(PAIRED).p50 < 0.5


async def test_a_dead_or_failing_shadow_never_fails_the_client_and_counts_as_mismatches(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    dead = base_config(backends, weights={"new": 0}, mirror={"percent": 100})
    dead["upstreams"]["new"]["endpoints"] = [f"http://127.0.0.1:{free_port()}"]
    server = await start_veer(dead)
    assert all(status == 200 for status, _, _ in await send(server, 10))
    await until(lambda: series(server, SHADOW) == 10, timeout=10, what="10 failed copies")
    rec = server.rt.recorder.variants
    assert rec[SHADOW].codes[0] == 10 and rec[SHADOW].mismatches == 10
    assert rec[SHADOW].failures == 10 and rec[PAIRED].failures == 0

    backends["new"].fault.error_rate = 1.0
    failing = await start_veer(mirrored(backends))
    assert all(status == 200 for status, _, _ in await send(failing, 10))
    await until(lambda: series(failing, SHADOW) == 10, timeout=10, what="10 500s")
    assert failing.rt.recorder.variants[SHADOW].codes[500] == 10
    assert failing.rt.recorder.variants[SHADOW].mismatches == 10


async def test_a_full_queue_drops_and_counts_copies_instead_of_holding_them(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    backends["new"].fault.delay = 1.0
    server = await start_veer(mirrored(backends, queue=2))
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> int:
            async with s.get(f"http://127.0.0.1:{server.port}/q{i}") as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(10)))
    assert statuses == [200] * 10
    assert server.rt.recorder.variants[SHADOW].dropped >= 6  # at most 2 in flight at once
    assert len(server.rt.mirror.in_flight) <= 2
    await until(lambda: not server.rt.mirror.in_flight, timeout=10, what="the 2 copies done")
    dropped = server.rt.recorder.variants[SHADOW].dropped
    assert series(server, SHADOW) == 10 - dropped


async def test_only_idempotent_methods_by_default_and_bodies_up_to_the_bound(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    server = await start_veer(mirrored(backends))
    await send(server, 3, "POST", b"x" * 100)
    await send(server, 1)
    await until(lambda: series(server, SHADOW) == 1, timeout=10, what="the GET's copy")
    assert [c["method"] for c in shadows(backends["new"])] == ["GET"]  # POST is not copied

    backends["new"].seen.clear()
    posts = await start_veer(mirrored(backends, methods=["POST"], max_body=1000))
    await send(posts, 2, "POST", b"y" * 900, path="/small")
    await send(posts, 2, "POST", b"z" * 5000, path="/large")  # over max_body: not copied
    await until(lambda: series(posts, SHADOW) == 2, timeout=10, what="the 2 small copies")
    copies = shadows(backends["new"])
    assert [(str(c["path"]).split("?")[0], c["body_len"]) for c in copies] == [
        ("/small", 900), ("/small", 900)]


async def test_a_percent_copies_exactly_that_share(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    server = await start_veer(mirrored(backends, percent=25))
    await send(server, 40)
    await until(lambda: series(server, SHADOW) == 10, timeout=10, what="10 of 40 copied")


async def test_a_shadow_phase_rolls_a_broken_release_back_before_any_user_sees_it(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    backends["new"].fault.error_rate = 1.0
    gates = {"max_error_rate": "1%", "max_status_mismatch": "1%", "min_requests": 20}
    cfg = base_config(backends, rollout={"tick": "50ms", "plan": [
        {"name": "shadow", "weight": 0, "mirror": 100, "duration": "1h", "gates": gates},
        {"name": "full", "weight": 100}]})
    cfg.pop("weights")
    server = await start_veer(cfg)
    runner = server.rt.rollout
    assert runner is not None and server.rt.live.mirror_bp == 10000
    await send(server, 60)
    await until(lambda: str(runner.controller.state.status) == "rolled-back", timeout=15,
                what="the shadow phase to roll back")
    assert server.rt.recorder.variants[NEW].requests == 0  # no user was ever routed to new
    assert server.rt.live.mirror_bp == 0 and server.rt.live.new_weight_bp == 0
    rollback = [e for e in runner.controller.state.events if e.kind == "rollback"]
    assert (rollback and "status_mismatch" in rollback[0].reason) or "error_rate" in \
        rollback[0].reason


async def test_a_healthy_shadow_phase_advances(
        start_veer: StartVeer, backends: dict[str, Backend]) -> None:
    gates = {"max_error_rate": "5%", "max_status_mismatch": "5%", "min_requests": 20}
    cfg = base_config(backends, rollout={"tick": "50ms", "plan": [
        {"name": "shadow", "weight": 0, "mirror": 100, "gates": gates},
        {"name": "full", "weight": 100}]})
    cfg.pop("weights")
    server = await start_veer(cfg)
    runner = server.rt.rollout
    assert runner is not None
    await send(server, 60)
    await until(lambda: runner.controller.state.phase == 1, timeout=15,
                what="the shadow phase to pass on the shadow's answers")
    assert server.rt.live.mirror_bp == 0  # the full phase mirrors nothing (the config's 0)
