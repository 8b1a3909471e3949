"""A real Prometheus server scrapes veer; PromQL returns the per-variant counts we sent."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from admin.demo.backend import Backend
from admin.server import AdminServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.ports import free_port
from tests.sysdeps import require_binary


@pytest.fixture
def prometheus_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:  # only the server this test started, by PID
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def test_prometheus_scrapes_per_variant_counts(
    tmp_path: Path, backends: dict[str, Backend], start_veer: StartVeer,
    prometheus_proc: list[subprocess.Popen[bytes]],
) -> None:
    binary = require_binary("prometheus", "apt-get install prometheus")
    server = await start_veer(base_config(backends, weights={"new": 30},
                                          admin={"listen": "127.0.0.1:0"}))
    admin = AdminServer(server.rt)
    await admin.start()
    try:
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "veer",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin.port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        prometheus_proc.append(subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT))
        log.close()

        sent = {"original": 0, "new": 0}
        async with aiohttp.ClientSession() as s:
            for i in range(200):
                async with s.get(f"http://127.0.0.1:{server.port}/",
                                 headers={"X-User-Id": f"u{i}"}) as r:
                    await r.read()
                    sent[r.headers["x-veer-variant"]] += 1
            assert sent["new"] > 0 and sent["original"] > 0

            query = "sum by (variant) (veer_requests_total)"
            want = {k: float(v) for k, v in sent.items()}
            got: dict[str, float] = {}

            async def scraped() -> bool:
                nonlocal got
                try:
                    async with s.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                                     params={"query": query}) as r:
                        if r.status != 200:
                            return False
                        body = await r.json()
                except aiohttp.ClientConnectionError:
                    return False  # not listening yet
                got = {item["metric"]["variant"]: float(item["value"][1])
                       for item in body["data"]["result"]}
                return got == want

            try:
                await until(scraped, timeout=60, interval=0.5,
                            what="Prometheus to report the requests sent")
            except AssertionError as e:
                raise AssertionError(
                    f"Prometheus returned {got}, sent {sent}; log:\n"
                    + (tmp_path / "prometheus.log").read_text()[-2000:]) from e
    finally:
        await admin.stop()
