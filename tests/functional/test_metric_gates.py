"""Gates on metrics only the release reports, through a real Prometheus server: the seed plan's
memory and cache-hit gates pass, breach and roll back; no data is inconclusive, never a pass."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from admin.demo.backend import Backend
from proxy.control.analysis import Verdict
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer
from tests.ports import free_port
from tests.sysdeps import require_binary

SEED = Path(__file__).resolve().parents[2] / "admin" / "examples" / "seed-plan.yaml"


class Exporter:
    """What the release's pods would expose: memory and cache counters per variant."""

    def __init__(self) -> None:
        self.memory = {"original": 7e8, "new": 8e8}
        self.hit_ratio = {"original": 0.8, "new": 0.9}
        self.requests = {"original": 0.0, "new": 0.0}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def metrics(self, request: web.Request) -> web.Response:
        lines = []
        for v in ("original", "new"):
            self.requests[v] += 100.0
            lines += [f'process_resident_memory_bytes{{variant="{v}"}} {self.memory[v]}',
                      f'cache_requests_total{{variant="{v}"}} {self.requests[v]}',
                      f'cache_hits_total{{variant="{v}"}} '
                      f'{self.requests[v] * self.hit_ratio[v]}']
        return web.Response(text="\n".join(lines) + "\n")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]


@pytest.fixture
async def exporter() -> AsyncIterator[Exporter]:
    e = Exporter()
    await e.start()
    yield e
    assert e.runner is not None
    await e.runner.cleanup()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: Exporter) -> Iterator[str]:
    """A real Prometheus scraping the exporter every 200 ms (job "analyzer")."""
    binary = require_binary("prometheus", "apt-get install prometheus")
    port = free_port()
    config = {"global": {"scrape_interval": "200ms", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "analyzer", "static_configs": [
                  {"targets": [f"127.0.0.1:{exporter.port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()  # only the server this test started, by its PID
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def seed_config(backends: dict[str, Backend], prometheus: str) -> dict[str, Any]:
    """The seed plan as shipped, pointed at this test's servers, with short clocks.

    The traffic gates (error rate, p99) are the seed's too, but a 1% canary needs hours of
    traffic to pass them; they are tested elsewhere, so this test keeps the metric gates.
    """
    cfg: dict[str, Any] = yaml.safe_load(SEED.read_text())
    cfg = copy.deepcopy(cfg)
    cfg.pop("state")
    cfg["listen"] = "127.0.0.1:0"
    cfg["admin"] = {"listen": "127.0.0.1:0"}
    cfg["upstreams"] = {"original": {"endpoints": [backends["original-a"].url]},
                        "new": {"endpoints": [backends["new"].url]}}
    cfg["rollout"]["tick"] = "100ms"
    for phase in cfg["rollout"]["plan"]:
        phase["duration"] = 0
        gates = phase["gates"]
        gates.pop("max_error_rate")
        gates.pop("max_p99")
        for g in gates["metrics"]:
            g["min_samples"] = 3
            prom = g["source"] = copy.deepcopy(g["source"])
            prom["prometheus"]["address"] = prometheus
            prom["prometheus"]["interval"] = "250ms"
            # the exporter's pods run one job; rate() over 1m needs a shorter window here
            prom["prometheus"]["query"] = prom["prometheus"]["query"].replace("[1m]", "[2s]")
    return cfg


async def test_the_seed_plans_memory_and_cache_gates_advance_then_roll_back(
        backends: dict[str, Backend], start_veer: StartVeer, exporter: Exporter,
        prometheus: str) -> None:
    server = await start_veer(seed_config(backends, prometheus))
    runner = server.rollout
    assert runner is not None
    # memory 0.8 GB < 1 GB and cache hits 90% > 60%: canary passes, then ramp (< 1.5 GB, > 70%)
    await until(lambda: runner.controller.state.phase == 2, timeout=60, interval=0.1,
                what="the canary and ramp phases to pass their Prometheus gates")
    assert [e.kind for e in runner.controller.state.events][-2:] == ["advance", "advance"]
    # at full the cache must hit > 85%: 90% passes; then the release's memory grows past 2 GB
    exporter.memory["new"] = 2.6e9
    await until(lambda: str(runner.controller.state.status) == "rolled-back", timeout=60,
                interval=0.1, what="a memory breach on new to roll back")
    last = runner.controller.state.events[-1]
    assert last.kind == "rollback" and "memory_bytes" in last.reason
    assert server.rt.live.new_weight_bp == 0


async def test_no_data_from_prometheus_is_inconclusive_never_a_pass(
        backends: dict[str, Backend], start_veer: StartVeer, prometheus: str) -> None:
    cfg = seed_config(backends, prometheus)
    for phase in cfg["rollout"]["plan"]:
        for g in phase["gates"]["metrics"]:
            g["source"]["prometheus"]["query"] = 'absent_metric{variant="{{variant}}"}'
    server: ProxyServer = await start_veer(cfg)
    runner = server.rollout
    assert runner is not None

    def inconclusive() -> bool:
        found = runner.controller.findings
        return len(found) == 2 and all(f.verdict is Verdict.INCONCLUSIVE and "no data" in f.detail
                                       for f in found)

    await until(inconclusive, timeout=30, interval=0.1, what="no-data verdicts")
    poller = server.rt.prometheus
    assert poller is not None
    await until(lambda: all(s.polls >= 4 for s in poller.series.values()), timeout=30,
                interval=0.1, what="several polls")
    state = runner.controller.state
    assert state.phase == 0 and str(state.status) == "progressing"


async def test_an_unreachable_prometheus_is_inconclusive(
        backends: dict[str, Backend], start_veer: StartVeer) -> None:
    server = await start_veer(seed_config(backends, f"http://127.0.0.1:{free_port()}"))
    runner = server.rollout
    assert runner is not None
    await until(lambda: len(runner.controller.findings) == 2 and all(
        "unreachable" in f.detail for f in runner.controller.findings), timeout=30,
        interval=0.1, what="unreachable verdicts")
    assert all(f.verdict is Verdict.INCONCLUSIVE for f in runner.controller.findings)
    assert runner.controller.state.phase == 0
