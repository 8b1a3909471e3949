"""Fixtures: real backends and a real veer listener on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from admin.demo.backend import Backend, start_backend
from proxy.config.load import from_dict
from proxy.runtime.server import ProxyServer
from tests.functional.metric_backend import MetricBackend

StartVeer = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    """Two original endpoints and one new endpoint."""
    started = {
        "original-a": await start_backend("original-a"),
        "original-b": await start_backend("original-b"),
        "new": await start_backend("new"),
    }
    yield started
    for b in started.values():
        await b.close()


def base_config(backends: dict[str, Backend], **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstreams": {
            "original": {"endpoints": [backends["original-a"].url, backends["original-b"].url]},
            "new": {"endpoints": [backends["new"].url]},
        },
        "routing": {"salt": "test", "user_key": ["header:X-User-Id", "cookie:uid"]},
        "weights": {"new": 10},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
async def start_veer() -> AsyncIterator[StartVeer]:
    """Start veer from a config dict; every server started is stopped after the test."""
    servers: list[ProxyServer] = []

    async def start(cfg: dict[str, Any]) -> ProxyServer:
        server = ProxyServer(from_dict(cfg, "<test>"))
        await server.start()
        servers.append(server)
        return server

    yield start
    for s in reversed(servers):
        await s.stop()


@pytest.fixture
def veer_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; any still running at the end are killed (by PID)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if p.stderr is not None:
            p.stderr.close()


@pytest.fixture
async def metric_backends() -> AsyncIterator[dict[str, MetricBackend]]:
    """One backend per variant that reports ``veer-metric: accuracy=...`` per request."""
    out = {v: MetricBackend(v) for v in ("original", "new")}
    for b in out.values():
        await b.start()
    yield out
    for b in out.values():
        await b.close()
