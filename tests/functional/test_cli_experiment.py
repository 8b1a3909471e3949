"""``veer experiment list|results`` as a real subprocess against a live veer running an
experiment (backends reporting ``veer-metric`` headers), and against one without."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from admin.cli.render import render_experiment_results
from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.metric_backend import MetricBackend, start_experiment
from tests.functional.test_cli import Result, closed_port, veer
from tests.functional.test_experiment import EXPERIMENT

TOKEN = "exp-cli-token"
NAME = "ranking-v2"
USERS = 300  # u0..u299: their split under salt "exp" is the same every run
SHIPPED = "confidently better: accuracy; no metric worse"


@dataclass
class Live:
    """A veer running the experiment, its admin API, and a CLI pointed at it."""

    server: ProxyServer
    admin: AdminServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"

    async def cli(self, *args: str) -> Result:
        return await veer(*args, env={"VEER_ADMIN": self.url, "VEER_ADMIN_TOKEN": TOKEN})

    async def get(self, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            assert r.status == 200, (path, r.status)
            body: dict[str, Any] = await r.json()
            return body


@pytest.fixture
async def live(metric_backends: dict[str, MetricBackend], start_veer: StartVeer
               ) -> AsyncIterator[Live]:
    server, admin = await start_experiment(metric_backends, start_veer, EXPERIMENT, TOKEN)
    try:
        yield Live(server, admin)
    finally:
        await admin.stop()


async def shipped(live: Live) -> dict[str, int]:
    """One request per user, then wait for the runner to decide ship; users per variant."""
    async with aiohttp.ClientSession() as s:
        for u in range(USERS):
            async with s.get(f"http://127.0.0.1:{live.server.port}/x",
                             headers={"X-User-Id": f"u{u}"}) as r:
                assert r.status == 200
                await r.read()
    runner = live.server.rt.experiment
    assert runner is not None
    # >= min_users (100) per variant and new better by 0.05 on accuracy: ship
    await until(lambda: runner.decision == "ship", 10, interval=0.05,
                what="the experiment runner to decide ship")
    res = await live.get(f"/experiments/{NAME}/results")
    units = {v: int(res["variants"][v]["units"]) for v in ("original", "new")}
    assert sum(units.values()) == USERS
    return units


def line(pattern: str, text: str) -> None:
    assert re.search(pattern, text, re.M), f"no line matching {pattern!r} in:\n{text}"


async def test_list_and_results_tables_and_json(live: Live) -> None:
    units = await shipped(live)
    o, n = units["original"], units["new"]
    listed, listed_json, named, only, raw, status = await asyncio.gather(
        live.cli("experiment", "list"), live.cli("experiment", "list", "--json"),
        live.cli("experiment", "results", NAME), live.cli("experiment", "results"),
        live.cli("experiment", "results", "--json"), live.cli("status"))

    assert listed.code == 0, listed
    rows = listed.out.splitlines()
    assert rows[0].split() == ["NAME", "SPLIT", "USERS", "ORIGINAL", "USERS", "NEW", "DECISION",
                               "STARTED", "METRICS"], listed.out
    assert re.fullmatch(rf"{NAME}\s+50% new\s+{o}\s+{n}\s+ship\s+"
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+"
                        r"accuracy, converted, error_rate \(guardrail\)", rows[1]), listed.out
    assert len(rows) == 2, listed.out
    assert listed_json.code == 0, listed_json
    exps = json.loads(listed_json.out)["experiments"]
    assert [(e["name"], e["split"], e["units"], e["decision"]) for e in exps] == [
        (NAME, 50.0, units, "ship")]
    assert [m["name"] for m in exps[0]["metrics"]] == ["accuracy", "converted", "error_rate"]

    for r in (named, only):  # NAME may be left out: there is one experiment
        assert r.code == 0, r
        assert r.err == "", r
        out = r.out
        line(rf"^experiment\s+{NAME}: 50% of users on new, running \d+s$", out)
        line(rf"^decision\s+ship: {SHIPPED}$", out)
        line(r"^srm\s+ok: p=\S+ always valid, chi-square p=\S+ \(new has \d+\.\d% of users, "
             r"50% expected\)$", out)
        line(rf"^users\s+original {o}  new {n}$", out)
        line(rf"^ignored\s+{USERS} malformed metric values$", out)  # one junk= per user
        # accuracy: both variants, difference, lift and its interval, p, verdict, users needed
        line(r"^accuracy: mean from header, increase is better, primary$", out)
        line(r"^  VARIANT\s+USERS\s+MEAN\s+SD$", out)
        line(rf"^  original\s+{o}\s+0\.8\d*\s+0\.0\d+$", out)
        line(rf"^  new\s+{n}\s+0\.[89]\d*\s+0\.0\d+$", out)
        line(r"^  difference\s+\+0\.0\d+$", out)
        line(r"^  lift\s+\+\d\.\d\d%  \(95% always valid: \+\d\.\d\d% \.\. \+\d+\.\d\d%\)$", out)
        line(r"^  interval\s+\+0\.0\d+ \.\. \+0\.0\d+  \(95% always valid; the decision reads "
             r"this one\)$", out)
        line(r"^  p-value\s+<0\.0001  \(fixed horizon; its interval \+0\.0\d+ \.\. \+0\.0\d+\)$",
             out)
        line(r"^  verdict\s+better$", out)
        line(rf"^  users needed\s+\d+ for a 5% effect at 80% power; {USERS} now, reached$", out)
        # converted: no events posted, so no users; error_rate: a guardrail that never varies
        line(r"^converted: proportion from events, increase is better, primary$", out)
        line(r"^  original\s+0\s+-\s+-$", out)
        line(r"^  difference\s+-  \(needs 2 users per variant\)$", out)
        line(r"^error_rate: mean from traffic, decrease is better, guardrail$", out)
        assert len(re.findall(r"^  verdict\s+inconclusive$", out, re.M)) == 2, out
    assert named.out.split("\n", 1)[1] == only.out.split("\n", 1)[1]  # past "running Ns"

    assert raw.code == 0, raw
    res = json.loads(raw.out)
    assert res["name"] == NAME and res["decision"] == {"action": "ship", "reason": SHIPPED}
    assert {v: res["variants"][v]["units"] for v in ("original", "new")} == units
    assert list(res["metrics"]) == ["accuracy", "converted", "error_rate"]
    assert res["metrics"]["accuracy"]["verdict"] == "better"
    assert res["srm"]["mismatch"] is False

    assert status.code == 0, status
    line(r"^rollout\s+none \(the experiment's split\)$", status.out)
    line(rf"^experiment\s+{NAME}  50% on new, ship \({SHIPPED}\)  "
         rf"\(veer experiment results {NAME}\)$", status.out)


async def test_results_tracks_events_posted_to_the_api(live: Live) -> None:
    await shipped(live)
    events = [{"user": f"u{u}", "metric": "converted", "value": 1 if u % 3 == 0 else 0}
              for u in range(USERS)]
    async with aiohttp.ClientSession() as s, s.post(
            f"{live.url}/experiments/{NAME}/events", json={"events": events},
            headers={"Authorization": f"Bearer {TOKEN}"}) as posted:
        assert posted.status == 200, await posted.text()
    res = await live.get(f"/experiments/{NAME}/results")
    conv = res["metrics"]["converted"]
    r = await live.cli("experiment", "results")
    assert r.code == 0, r
    block = r.out.split("converted: proportion from events", 1)[1].split("\n\n", 1)[0]
    line(rf"^  original\s+{conv['original']['n']}\s+0\.\d+\s+0\.\d+$", block)
    line(r"^  difference\s+[+-]?\d\.\d+(e-\d+)?$", block)
    line(r"^  lift\s+[+-]\d+\.\d\d%  \(95% always valid: -\d+\.\d\d% \.\. \+\d+\.\d\d%\)$",
         block)
    line(r"^  p-value\s+\d\.\d{4}  \(fixed horizon; its interval ", block)
    line(r"^  verdict\s+inconclusive$", block)


async def test_an_unknown_experiment_is_refused_with_the_apis_error(live: Live) -> None:
    r, raw = await asyncio.gather(live.cli("experiment", "results", "nope"),
                                  live.cli("experiment", "results", "nope", "--json"))
    for x in (r, raw):
        assert x.code == 1, x  # the documented "API refused" exit code
        assert x.out == "", x
        assert x.err.strip() == f"veer: not found: no experiment 'nope' (configured: ['{NAME}'])"


async def test_without_an_experiment(backends: dict[str, Backend], start_veer: StartVeer
                                     ) -> None:
    server = await start_veer(base_config(backends, admin={"listen": "127.0.0.1:0"}))
    admin = AdminServer(server.rt, token=TOKEN)
    await admin.start()
    env = {"VEER_ADMIN": f"http://127.0.0.1:{admin.port}"}
    try:
        listed, listed_json, results, named = await asyncio.gather(
            veer("experiment", "list", env=env), veer("experiment", "list", "--json", env=env),
            veer("experiment", "results", env=env), veer("experiment", "results", NAME, env=env))
    finally:
        await admin.stop()
    assert listed.code == 0, listed
    assert listed.out.strip() == ("no experiment is configured (add an experiment: section to "
                                  "veer's config)")
    assert listed_json.code == 0 and json.loads(listed_json.out) == {"experiments": []}
    assert results.code == 1, results
    assert results.out == ""
    assert results.err.strip() == ("veer: not found: no experiment is configured in this veer "
                                   "(add an experiment: section to its config)")
    assert named.code == 1, named
    assert named.err.strip() == f"veer: not found: no experiment '{NAME}' (configured: [])"


async def test_usage_and_unreachable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    bare, unknown, extra, down = await asyncio.gather(
        veer("experiment", "--admin", url), veer("experiment", "frob", "--admin", url),
        veer("experiment", "results", "a", "b", "--admin", url),
        veer("experiment", "list", "--admin", url))
    for r in (bare, unknown, extra):
        assert r.code == 2 and r.err.strip(), r
    assert "{list,results}" in bare.err, bare
    assert down.code == 3, down
    assert down.err.startswith(f"veer: cannot reach the admin API at {url}: connection "
                               "refused"), down.err


def test_results_rendering_of_a_stop_an_srm_mismatch_and_an_eta() -> None:
    """The parts a healthy live run does not reach: a mismatch, a stop, users still needed."""
    metric: dict[str, Any] = {
        "type": "mean", "source": "header", "goal": "decrease", "role": "guardrail",
        "margin": 0.02, "original": {"n": 40, "mean": 120.5, "sd": 10.25},
        "new": {"n": 60, "mean": 131.0, "sd": 11.0}, "difference": 10.5, "ci": [2.25, 18.75],
        "p_value": 0.0123, "fixed_ci": [6.0, 15.0], "lift": 0.0871, "lift_ci": [0.012, None],
        "verdict": "worse",
        "sample_size": {"mde": 0.05, "power": 0.8, "users_needed": 400, "users_now": 100,
                        "eta_s": 125.0}}
    res: dict[str, Any] = {
        "name": "x", "split": 25.0, "elapsed_s": 3725.0, "alpha": 0.1,
        "variants": {"original": {"units": 40}, "new": {"units": 60}},
        "srm": {"p_value": 0.00002, "mismatch": True, "chi2_p_value": 1e-9, "expected_new": 0.25,
                "observed_new": 0.6},
        "metrics": {"latency": metric},
        "decision": {"action": "stop", "reason": "sample ratio mismatch"},
        "malformed": 0, "dropped": {"units": 3, "values": 7}}
    out = render_experiment_results(res)
    line(r"^experiment\s+x: 25% of users on new, running 1h02m$", out)
    line(r"^decision\s+stop: sample ratio mismatch$", out)
    line(r"^srm\s+MISMATCH: p=2e-05 always valid, chi-square p=1e-09 \(new has 60\.0% of "
         r"users, 25% expected\); the assignment or the logging is broken$", out)
    line(r"^dropped\s+3 users and 7 values beyond max_users \(counted, not kept\)$", out)
    assert "ignored" not in out
    line(r"^latency: mean from header, decrease is better, guardrail \(margin 2%\)$", out)
    line(r"^  original\s+40\s+120\.5\s+10\.25$", out)
    line(r"^  difference\s+\+10\.5$", out)
    line(r"^  lift\s+\+8\.71%  \(90% always valid: \+1\.20% \.\. \+inf\)$", out)
    line(r"^  interval\s+\+2\.25 \.\. \+18\.75  \(90% always valid; ", out)
    line(r"^  p-value\s+0\.0123  \(fixed horizon; its interval \+6 \.\. \+15\)$", out)
    line(r"^  verdict\s+worse$", out)
    line(r"^  users needed\s+400 for a 5% effect at 80% power; 100 now, about 2m05s to go at "
         r"the current rate$", out)
