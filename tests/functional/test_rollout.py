"""The controller in a live veer: real backends, real traffic, rollback within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from admin.demo.backend import Backend
from proxy.control.state import Status
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config


@contextlib.asynccontextmanager
async def traffic(port: int, workers: int = 8) -> AsyncIterator[dict[str, int]]:
    """Requests from random users until the block ends; yields counts by status."""
    counts: dict[str, int] = {}
    stop = asyncio.Event()

    async def worker(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            user = f"user-{random.randrange(100_000)}"
            try:
                async with s.get(f"http://127.0.0.1:{port}/",
                                 headers={"X-User-Id": user}) as r:
                    await r.read()
                    key = f"{r.headers.get('x-veer-variant')}:{r.status}"
            except aiohttp.ClientError:
                key = "client-error"
            counts[key] = counts.get(key, 0) + 1

    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.ensure_future(worker(s)) for _ in range(workers)]
        try:
            yield counts
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def rollout_config(backends: dict[str, Backend], plan: list[dict[str, Any]],
                   **extra: Any) -> dict[str, Any]:
    cfg = base_config(backends, rollout={"name": "test", "tick": "100ms", "plan": plan},
                      **extra)
    cfg.pop("weights")
    return cfg


def status(server: ProxyServer) -> Status:
    assert server.rollout is not None
    return server.rollout.controller.state.status


async def test_new_breaking_under_load_is_rolled_back_within_2s(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    plan = [{"name": "canary", "weight": 50, "duration": "1h",
             "gates": {"max_error_rate": "1%", "min_requests": 50}},
            {"name": "full", "weight": 100}]
    server = await start_veer(rollout_config(backends, plan))
    assert server.rt.live.new_weight_bp == 5000
    async with traffic(server.port) as counts:
        await until(lambda: counts.get("new:200", 0) > 200, 10, what="healthy traffic on new")
        assert status(server) is Status.PROGRESSING
        backends["new"].fault.error_rate = 1.0  # the new release starts failing
        took = await until(lambda: server.rt.live.new_weight_bp == 0, 2.0, what="rollback")
    assert status(server) is Status.ROLLED_BACK
    assert server.rollout is not None
    event = server.rollout.controller.state.events[-1]
    assert (event.kind, event.actor) == ("rollback", "controller")
    assert "error_rate" in event.reason and event.evidence["findings"]
    print(f"fault to weight 0: {took:.3f} s")


async def test_short_phases_advance_to_complete(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    gates = {"max_error_rate": "5%", "min_requests": 30}
    plan = [{"name": "ten", "weight": 10, "duration": "500ms", "gates": gates},
            {"name": "half", "weight": 50, "duration": "500ms", "gates": gates},
            {"name": "full", "weight": 100, "gates": gates}]
    server = await start_veer(rollout_config(backends, plan))
    seen_weights = set()
    async with traffic(server.port):
        def done() -> bool:
            seen_weights.add(server.rt.live.new_weight_bp)
            return status(server) is Status.COMPLETE
        await until(done, 30, what="the rollout to complete")
    assert server.rt.live.new_weight_bp == 10000
    assert seen_weights >= {1000, 5000, 10000}
    assert server.rollout is not None
    kinds = [e.kind for e in server.rollout.controller.state.events]
    assert kinds == ["advance", "advance", "complete"]


async def test_blue_green_testers_see_new_at_zero_weight(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    cfg = base_config(backends, rollout={
        "name": "bg", "preset": "blue-green", "step_duration": "1h",
        "testers": {"users": ["qa-1"]}})
    server = await start_veer(cfg)
    async with aiohttp.ClientSession() as s:
        for user, variant in (("qa-1", "new"), ("someone", "original")):
            async with s.get(f"http://127.0.0.1:{server.port}/",
                             headers={"X-User-Id": user}) as r:
                assert r.headers["x-veer-variant"] == variant
    assert server.rt.live.new_weight_bp == 0


async def test_state_file_written_and_resumed(
    tmp_path: Path, backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    state_path = tmp_path / "state.json"
    plan = [{"name": "a", "weight": 5, "duration": "100ms", "gates": {"min_requests": 5}},
            {"name": "b", "weight": 20, "duration": "1h", "gates": {"min_requests": 5}},
            {"name": "full", "weight": 100}]
    cfg = rollout_config(backends, plan, state={"path": str(state_path)})
    server = await start_veer(cfg)
    async with traffic(server.port, workers=2):
        await until(lambda: server.rt.live.new_weight_bp == 2000, 20, what="advance to b")
    assert server.rollout is not None
    await server.rollout.flush()  # saving runs beside the tick; this waits for it
    saved = json.loads(state_path.read_text())
    assert (saved["phase"], saved["weight_bp"], saved["status"]) == (1, 2000, "progressing")
    await server.stop()
    again = await start_veer(cfg)  # a restart: same phase, same weight, before any tick
    assert again.rt.live.new_weight_bp == 2000
    assert again.rollout is not None and again.rollout.controller.phase.name == "b"


@pytest.mark.parametrize("on_corrupt", ["safe", "refuse"])
async def test_corrupt_state_is_kept_aside(
    tmp_path: Path, backends: dict[str, Backend], start_veer: StartVeer, on_corrupt: str
) -> None:
    state_path = tmp_path / "state.json"
    state_path.write_text('{"format": 1, "rollout": "test", "pha')  # truncated mid-write
    plan = [{"name": "a", "weight": 50, "duration": "1h"}, {"name": "full", "weight": 100}]
    cfg = rollout_config(backends, plan,
                         state={"path": str(state_path), "on_corrupt": on_corrupt})

    def kept() -> list[Path]:
        return sorted(tmp_path.glob("state.json.corrupt-*"))

    if on_corrupt == "refuse":
        from proxy.control.state import StateError

        with pytest.raises(StateError, match="refusing to start"):
            await start_veer(cfg)
        assert len(kept()) == 1
        return
    server = await start_veer(cfg)
    assert server.rt.live.new_weight_bp == 0  # safe: everyone on original
    assert status(server) is Status.NEEDS_ATTENTION
    assert len(kept()) == 1
    assert kept()[0].read_text() == '{"format": 1, "rollout": "test", "pha'
    saved = json.loads(state_path.read_text())
    assert saved["status"] == "needs-attention"
    assert saved["events"][0]["kind"] == "state-unreadable"


async def test_rollback_is_notified_and_confirm_hook_gates_advance(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    from aiohttp import web

    received: list[dict[str, Any]] = []
    confirm_answer = {"status": 503}

    async def notify(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    async def confirm(request: web.Request) -> web.Response:
        return web.Response(status=confirm_answer["status"])

    app = web.Application()
    app.router.add_post("/events", notify)
    app.router.add_post("/confirm", confirm)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        plan = [{"name": "a", "weight": 50, "duration": "100ms",
                 "gates": {"max_error_rate": "1%", "min_requests": 20}},
                {"name": "b", "weight": 60, "duration": "1h",
                 "gates": {"max_error_rate": "1%", "min_requests": 20}},
                {"name": "full", "weight": 100}]
        cfg = rollout_config(backends, plan)
        cfg["rollout"]["notify"] = [f"{hook}/events"]
        cfg["rollout"]["confirm"] = [f"{hook}/confirm"]
        cfg["rollout"]["confirm_retry"] = "300ms"
        server = await start_veer(cfg)
        async with traffic(server.port) as counts:
            await until(lambda: counts.get("new:200", 0) > 100, 10, what="traffic")
            await until(lambda: any(e["kind"] == "advance-refused" for e in received), 10,
                        what="the refused advance to be notified")
            assert server.rt.live.new_weight_bp == 5000  # the confirm hook said no
            confirm_answer["status"] = 200
            await until(lambda: server.rt.live.new_weight_bp == 6000, 20, what="advance after yes")
            backends["new"].fault.error_rate = 1.0
            await until(lambda: server.rt.live.new_weight_bp == 0, 2, what="rollback")
            await until(lambda: any(e["kind"] == "rollback" for e in received), 5,
                        what="the rollback notification")
        rollback = next(e for e in received if e["kind"] == "rollback")
        assert rollback["rollout"] == "test" and rollback["actor"] == "controller"
        assert rollback["evidence"]["findings"]
    finally:
        await runner.cleanup()
