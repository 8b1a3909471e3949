"""An experiment's per-user results merge exactly across workers and replicas, as processes.

veer runs as real ``veer run`` processes: a supervisor with two workers, and two replicas
of one cluster sharing a real redis-server. The backend reports a known value per user
in ``veer-metric``; events go to one admin API. The results every process shows must be
exactly what one process would compute from every user: the same users per variant and,
per metric, the same users and mean over users.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.deadline import until
from tests.ports import accepts
from tests.redis_server import RedisServer
from tests.reliability.processes import HOST, ROOT, free_port, stop_process

TOKEN = "exp-scale"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = aiohttp.ClientTimeout(total=5)
EXPERIMENT = {"name": "scale", "split": 50, "metrics": [
    {"name": "accuracy", "type": "mean", "source": "header", "goal": "increase"},
    {"name": "converted", "type": "proportion", "source": "events", "goal": "increase"}]}


def value(user: str, variant: str) -> float:
    """The accuracy the backend reports for ``user``: the same at every request."""
    return (zlib.crc32(user.encode()) % 1000) / 1000 + (0.05 if variant == "new" else 0.0)


@pytest.fixture
async def backend() -> AsyncIterator[dict[str, str]]:
    """One backend per variant, in the test's loop (veer's processes are the ones tested)."""

    def handler(variant: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            user = request.headers.get("X-User-Id", "")
            return web.Response(text=variant, headers={
                "veer-metric": f"accuracy={value(user, variant)}"})
        return handle

    runners, urls = [], {}
    for variant in ("original", "new"):
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler(variant))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        runners.append(runner)
        urls[variant] = f"http://{HOST}:{runner.addresses[0][1]}"
    yield urls
    for runner in runners:
        await runner.cleanup()


class Veer:
    """One ``veer run`` process started by the test."""

    def __init__(self, tmp: Path, name: str, cfg: dict[str, Any]) -> None:
        self.port, self.admin_port = free_port(), free_port()
        cfg = {**cfg, "listen": f"{HOST}:{self.port}",
               "admin": {"listen": f"{HOST}:{self.admin_port}"}}
        self.path = tmp / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.log = tmp / f"{name}.log"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "admin.cli", "run", "--config", str(self.path)],
                cwd=ROOT, env={**os.environ, "VEER_ADMIN_TOKEN": TOKEN},
                stdout=subprocess.DEVNULL, stderr=err)

    @property
    def admin(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if not await accepts(self.admin_port):
                return False
            async with http.get(f"{self.admin}/readyz", timeout=TIMEOUT) as r:
                return r.status == 200 and await accepts(self.port)

        await until(up, timeout=40, interval=0.2, what="veer to serve")


@pytest.fixture
def processes() -> Iterator[list[Veer]]:
    started: list[Veer] = []
    yield started
    for v in started:
        stop_process(v.proc)  # only what this test started, by PID


def base(backend: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"upstreams": {v: {"endpoints": [url]} for v, url in backend.items()},
            "routing": {"salt": "scale", "user_key": ["header:X-User-Id"]},
            "timeouts": {"drain": "2s"}, "experiment": EXPERIMENT, **extra}


async def traffic(http: aiohttp.ClientSession, port: int, users: list[str]) -> dict[str, str]:
    """Two requests per user, each on a new connection (so every worker gets some)."""
    served = {}
    for user in users:
        for _ in range(2):
            async with aiohttp.ClientSession() as fresh, fresh.get(
                    f"http://{HOST}:{port}/", headers={"X-User-Id": user}) as r:
                assert r.status == 200 and "veer-metric" not in r.headers
                served[user] = r.headers["x-veer-variant"]
    return served


def expected(served: dict[str, str], converted: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in ("original", "new"):
        users = [u for u, v in served.items() if v == variant]
        out[variant] = {
            "units": len(users),
            "accuracy": sum(value(u, variant) for u in users) / len(users),
            "converted_n": sum(1 for u in users if u in converted or u.endswith("0")),
            "converted_mean": sum(1 for u in users if u in converted)
            / max(1, sum(1 for u in users if u in converted or u.endswith("0"))),
        }
    return out


async def results(http: aiohttp.ClientSession, veer: Veer) -> dict[str, Any]:
    async with http.get(f"{veer.admin}/experiments/scale/results", timeout=TIMEOUT) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


def matches(res: dict[str, Any], want: dict[str, Any]) -> bool:
    for variant in ("original", "new"):
        acc = res["metrics"]["accuracy"][variant]
        conv = res["metrics"]["converted"][variant]
        w = want[variant]
        if res["variants"][variant]["units"] != w["units"] or acc["n"] != w["units"]:
            return False
        if not math.isclose(acc["mean"], w["accuracy"], rel_tol=1e-9):
            return False
        if conv["n"] != w["converted_n"] or not math.isclose(conv["mean"],
                                                             w["converted_mean"]):
            return False
    return True


async def events(http: aiohttp.ClientSession, veer: Veer, served: dict[str, str]
                 ) -> set[str]:
    """Users whose id ends in 0 get an event: 1 on new, 0 on original."""
    converted = {u for u, v in served.items() if u.endswith("0") and v == "new"}
    batch = [{"user": u, "metric": "converted", "value": 1 if u in converted else 0}
             for u in served if u.endswith("0")]
    async with http.post(f"{veer.admin}/experiments/scale/events", json={"events": batch},
                         headers=AUTH, timeout=TIMEOUT) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["accepted"] == len(batch)
    return converted


async def test_two_workers_merge_per_user_results_exactly(
        tmp_path: Path, backend: dict[str, str], processes: list[Veer]) -> None:
    veer = Veer(tmp_path, "workers", base(backend, workers=2))
    processes.append(veer)
    async with aiohttp.ClientSession() as http:
        await veer.ready(http)
        served = await traffic(http, veer.port, [f"w{i}" for i in range(120)])
        converted = await events(http, veer, served)  # posted to the supervisor
        want = expected(served, converted)
        got: dict[str, Any] = {}

        async def merged() -> bool:
            nonlocal got
            got = await results(http, veer)
            return matches(got, want)

        await until(merged, timeout=20, interval=0.25,
                    what=f"the workers' results to merge to {want}, last {got}")


async def test_replicas_of_a_cluster_show_the_same_exact_results(
        tmp_path: Path, backend: dict[str, str], processes: list[Veer],
        redis_server: RedisServer) -> None:
    replicas = []
    for rid in ("a", "b"):
        cfg = base(backend, cluster={"redis": redis_server.url, "name": "exp", "id": rid})
        replicas.append(Veer(tmp_path, f"replica-{rid}", cfg))
    processes.extend(replicas)
    async with aiohttp.ClientSession() as http:
        for r in replicas:
            await r.ready(http)
        a, b = replicas
        # different users to each replica, and some users to both
        served = await traffic(http, a.port, [f"c{i}" for i in range(0, 80)])
        served |= await traffic(http, b.port, [f"c{i}" for i in range(60, 140)])
        converted = await events(http, a, served)
        want = expected(served, converted)
        for replica in replicas:
            got: dict[str, Any] = {}

            async def merged(replica: Veer = replica) -> bool:
                nonlocal got
                got = await results(http, replica)
                return matches(got, want)

            await until(merged, timeout=20, interval=0.25,
                        what=f"replica results to merge to {want}, last {got}")
