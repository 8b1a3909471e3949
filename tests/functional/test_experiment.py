"""Experiments over real sockets: metric headers from real backends, the events API, results."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.load import from_dict
from proxy.config.reader import ConfigError
from proxy.runtime.server import ProxyServer
from tests.functional.conftest import StartVeer
from tests.functional.metric_backend import MetricBackend, start_experiment

TOKEN = "exp-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


EXPERIMENT = {"name": "ranking-v2", "split": 50, "metrics": [
    {"name": "accuracy", "type": "mean", "source": "header", "goal": "increase", "mde": "5%"},
    {"name": "converted", "type": "proportion", "source": "events", "goal": "increase"},
    {"name": "error_rate", "type": "mean", "source": "traffic", "goal": "decrease",
     "role": "guardrail"},
]}


@pytest.fixture
async def experiment(metric_backends: dict[str, MetricBackend], start_veer: StartVeer
                     ) -> AsyncIterator[tuple[ProxyServer, str]]:
    server, admin = await start_experiment(metric_backends, start_veer, EXPERIMENT, TOKEN)
    yield server, f"http://127.0.0.1:{admin.port}"
    await admin.stop()


async def _traffic(port: int, users: int, per_user: int) -> dict[str, str]:
    served: dict[str, str] = {}
    async with aiohttp.ClientSession() as s:
        for u in range(users):
            for _ in range(per_user):
                async with s.get(f"http://127.0.0.1:{port}/x",
                                 headers={"X-User-Id": f"u{u}"}) as r:
                    assert r.status == 200
                    assert "veer-metric" not in r.headers  # never reaches the client
                    served[f"u{u}"] = r.headers["x-veer-variant"]
                    assert r.headers["x-served-by"] == served[f"u{u}"]
    return served


async def test_header_metrics_are_per_user_and_never_reach_the_client(
        experiment: tuple[ProxyServer, str], metric_backends: dict[str, MetricBackend]) -> None:
    server, base = experiment
    served = await _traffic(server.port, users=60, per_user=3)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/experiments/ranking-v2/results") as r:
            assert r.status == 200
            res = await r.json()
        async with s.get(f"{base}/experiments") as r:
            listed = (await r.json())["experiments"]
    assert [e["name"] for e in listed] == ["ranking-v2"]
    for variant in ("original", "new"):
        users = [u for u, v in served.items() if v == variant]
        assert res["variants"][variant]["units"] == len(users)
        sent = metric_backends[variant].sent
        expected = sum(sum(sent[u]) / len(sent[u]) for u in users) / len(users)
        got = res["metrics"]["accuracy"][variant]
        assert got["n"] == len(users)
        assert math.isclose(got["mean"], expected, rel_tol=1e-12)
    acc = res["metrics"]["accuracy"]
    assert math.isclose(acc["difference"], acc["new"]["mean"] - acc["original"]["mean"])
    lo, hi = acc["ci"]
    assert lo < acc["difference"] < hi
    flo, fhi = acc["fixed_ci"]
    assert lo < flo < fhi < hi  # the always-valid interval is the wider one
    assert 0 <= acc["p_value"] <= 1
    assert res["malformed"] == 60  # one junk value per user, counted and ignored
    assert "cost" not in res["metrics"]  # not configured: not kept
    assert res["srm"]["mismatch"] is False and 0 <= res["srm"]["p_value"] <= 1
    assert res["metrics"]["error_rate"]["original"]["mean"] == 0
    assert res["metrics"]["accuracy"]["sample_size"]["users_needed"] > 0
    assert res["decision"]["action"] in ("ship", "keep running", "stop")


async def test_events_are_attributed_to_the_variant_that_served_the_user(
        experiment: tuple[ProxyServer, str]) -> None:
    server, base = experiment
    served = await _traffic(server.port, users=40, per_user=1)
    events: list[dict[str, Any]] = [{"user": u, "metric": "converted",
                                     "value": 1 if v == "new" else 0}
                                    for u, v in served.items()]
    events += [{"user": "u0", "metric": "nope", "value": 1},
               {"user": "u1", "metric": "converted", "value": "yes"},
               {"user": "u1", "metric": {"a": 1}, "value": 1}]  # schemathesis found this 500
    url = f"{base}/experiments/ranking-v2/events"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"events": events}) as r:
            assert r.status == 401
        async with s.post(url, json={"events": events}, headers=AUTH) as r:
            assert r.status == 202
            body = await r.json()
        assert body["accepted"] == 40 and body["rejected"] == 3
        async with s.post(f"{base}/experiments/other/events", json={"events": []},
                          headers=AUTH) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "not found"
        async with s.post(url, json={"events": [{}] * 10_001}, headers=AUTH) as r:
            assert r.status == 413
        async with s.post(url, json={"evts": []}, headers=AUTH) as r:
            assert r.status == 422
        async with s.post(url, json={"events": [{"user": "u0", "metric": "converted",
                                                  "value": 1}]}, headers=AUTH) as r:
            assert r.status == 200
            assert await r.json() == {"accepted": 1, "rejected": 0, "errors": []}
        async with s.get(f"{base}/experiments/ranking-v2/results") as r:
            res = await r.json()
    conv = res["metrics"]["converted"]
    n_new = sum(1 for v in served.values() if v == "new")
    # every new user converted, every original user did not (u0's late 1 makes it 1 there)
    assert conv["new"]["n"] == n_new and conv["new"]["mean"] == 1.0
    orig_mean = (1 / conv["original"]["n"]) if served["u0"] == "original" else 0.0
    assert math.isclose(conv["original"]["mean"], orig_mean)


async def test_an_event_for_a_user_veer_has_not_seen_goes_by_the_hash(
        experiment: tuple[ProxyServer, str]) -> None:
    server, base = experiment
    router, live = server.rt.snapshot.router, server.rt.live
    users = [f"later-{i}" for i in range(50)]
    events = [{"user": u, "metric": "converted", "value": 1} for u in users]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/experiments/ranking-v2/events", json={"events": events},
                          headers=AUTH) as r:
            assert r.status == 200
        async with s.get(f"{base}/experiments/ranking-v2/results") as r:
            res = await r.json()
    on_new = sum(1 for u in users if router.variant_of(u, live) == "new")
    assert 0 < on_new < 50
    assert res["metrics"]["converted"]["new"]["n"] == on_new
    assert res["metrics"]["converted"]["original"]["n"] == 50 - on_new
    # and the router does send them there once they come
    served = {}
    async with aiohttp.ClientSession() as s:
        for u in users[:10]:
            async with s.get(f"http://127.0.0.1:{server.port}/",
                             headers={"X-User-Id": u}) as r:
                served[u] = r.headers["x-veer-variant"]
    assert all(served[u] == router.variant_of(u, live) for u in served)


def test_experiment_config_errors_name_the_key() -> None:
    base: dict[str, Any] = {"upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                                          "new": {"endpoints": ["http://127.0.0.1:2"]}}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"experiment": {**EXPERIMENT, "split": 0}}, "experiment.split"),
        ({"experiment": {**EXPERIMENT, "split": 50}, "weights": {"new": 10}}, "weights"),
        ({"experiment": EXPERIMENT, "rollout": {"preset": "canary"}}, "rollout"),
        ({"experiment": {**EXPERIMENT, "metrics": [{"name": "a b"}]}},
         "experiment.metrics[0].name"),
        ({"experiment": {**EXPERIMENT, "metrics": [{"name": "x", "source": "traffic"}]}},
         "experiment.metrics[0].name"),
        ({"experiment": {**EXPERIMENT, "metrics": [{"name": "x", "type": "median"}]}},
         "experiment.metrics[0].type"),
    ]
    for extra, key in cases:
        with pytest.raises(ConfigError) as err:
            from_dict({**base, **extra}, "exp.yaml")
        assert err.value.path == key, (extra, err.value)
    cfg = from_dict({**base, "experiment": EXPERIMENT}, "exp.yaml")
    assert cfg.new_weight_bp == 5000 and cfg.rollout is None


async def test_schemathesis_on_the_experiment_endpoints(
        experiment: tuple[ProxyServer, str], tmp_path: Path) -> None:
    """Property-based requests from the OpenAPI spec against a configured experiment: no 5xx,
    answers match the schema (the 404 of an unknown name included)."""
    _, base = experiment
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
           "--include-path-regex", "^/experiments",
           "--checks", "not_a_server_error,status_code_conformance,"
           "content_type_conformance,response_schema_conformance",
           "--header", f"Authorization: Bearer {TOKEN}",
           "--max-examples", "40", "--phases", "examples,coverage,fuzzing",
           "--report", "junit", "--report-dir", str(tmp_path), "--workers", "1", "--seed", "1"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]


async def test_metrics_export_the_experiment_per_variant_and_metric(
        experiment: tuple[ProxyServer, str]) -> None:
    server, base = experiment
    served = await _traffic(server.port, users=30, per_user=2)
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        text = await r.text()
    n_new = sum(1 for v in served.values() if v == "new")
    assert f'veer_experiment_units{{experiment="ranking-v2",variant="new"}} {n_new:.1f}' in text
    assert ('veer_experiment_metric_users{experiment="ranking-v2",metric="accuracy",'
            f'variant="original"}} {30 - n_new:.1f}') in text
    assert 'veer_experiment_lift{bound="lower",experiment="ranking-v2",metric="accuracy"}' \
        in text or 'veer_experiment_lift{experiment="ranking-v2",metric="accuracy",' \
        'bound="lower"}' in text
    assert "veer_experiment_srm_p_value" in text
    assert 'veer_experiment_decision_info{action=' in text or \
        'veer_experiment_decision_info{experiment="ranking-v2",action=' in text


async def test_the_split_is_fixed_while_the_experiment_runs(
        experiment: tuple[ProxyServer, str]) -> None:
    server, base = experiment
    async with aiohttp.ClientSession() as s, s.put(f"{base}/weights", json={"new": 10},
                                                    headers=AUTH) as r:
        assert r.status == 409
        assert "experiment" in (await r.json())["detail"]
    assert server.rt.live.new_weight_bp == 5000
