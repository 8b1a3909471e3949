"""``veer demo``: two backends, veer in front, live traffic, and a rollout that runs by itself.

The plan advances 10% -> 25% -> 50% -> 100% in about 25 seconds; at ``--degrade-at``
the new backend starts failing and veer rolls back on its own. Once a second
the terminal shows the phase, the weight and both sides' rate, error rate and
p99; events print as they happen. Everything runs in one process on
127.0.0.1 ephemeral ports; nothing else is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import sys
from typing import Any

import aiohttp
import uvloop

from admin.demo.backend import Backend, start_backend
from admin.server import AdminServer
from proxy.config.load import from_dict
from proxy.config.reader import ConfigError
from proxy.routing.variant import NEW, ORIGINAL
from proxy.runtime.server import ProxyServer

USERS = [f"user-{i}" for i in range(5000)]
WORKERS = 16
GATES = {"max_error_rate": "5%", "max_p99": "100ms", "min_requests": 100}


EXPERIMENT = {"name": "demo-ranking", "split": 50, "metrics": [
    {"name": "accuracy", "type": "mean", "source": "header", "goal": "increase", "mde": "2%"},
    {"name": "converted", "type": "proportion", "source": "events", "goal": "increase"},
    {"name": "error_rate", "type": "mean", "source": "traffic", "goal": "decrease",
     "role": "guardrail", "margin": "1%"},
]}
ACCURACY = {ORIGINAL: 0.80, NEW: 0.83}  # what the demo's backends report
CONVERSION = {ORIGINAL: 0.10, NEW: 0.12}  # chance a user converts, posted as an event


def demo_config(original: str, new: str, weight: float | None,
                experiment: bool = False) -> dict[str, Any]:
    """veer's config for the demo: a rollout plan, a fixed weight if one is given, or an
    A/B experiment."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": {"original": {"endpoints": [original]}, "new": {"endpoints": [new]}},
        "routing": {"salt": "demo", "user_key": ["header:X-User-Id"]},
    }
    if experiment:
        cfg["experiment"] = EXPERIMENT
    elif weight is not None:
        cfg["weights"] = {"new": weight}
    else:
        cfg["rollout"] = {"name": "demo", "tick": "250ms", "plan": [
            {"name": "canary", "weight": 10, "duration": "6s", "gates": GATES},
            {"name": "ramp", "weight": 25, "duration": "6s", "gates": GATES},
            {"name": "half", "weight": 50, "duration": "6s", "gates": GATES},
            {"name": "full", "weight": 100, "gates": GATES},
        ]}
    return cfg


class _Traffic:
    """Paced requests from simulated users; remembers which variants each user saw."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.interval = url, 1.0 / rate
        self.next_at = 0.0
        self.seen: dict[str, set[str]] = {}
        self.fresh: dict[str, str] = {}  # users served since the last events batch
        self.failed = 0

    async def worker(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            slot = max(self.next_at, now)
            self.next_at = slot + self.interval
            if slot > now:
                await asyncio.sleep(slot - now)
            user = random.choice(USERS)
            try:
                async with session.get(self.url, headers={"X-User-Id": user}) as r:
                    await r.read()
                    variant = r.headers.get("x-veer-variant")
                if variant is not None:
                    self.seen.setdefault(user, set()).add(variant)
                    self.fresh[user] = variant
            except (aiohttp.ClientError, TimeoutError):
                self.failed += 1


def _line(server: ProxyServer, elapsed: float, last: dict[str, int], dt: float) -> str:
    rt = server.rt
    now = rt.loop.time()
    head = f"{elapsed:5.0f}s  new {rt.live.new_weight_bp / 100:5.1f}%"
    if rt.rollout is not None:
        c = rt.rollout.controller
        head += f"  {c.phase.name:>6}/{c.state.status:<12}"
    parts = [head]
    for v in (ORIGINAL, NEW):
        rec = rt.recorder.variants[v]
        w = rec.window(10, now)
        rate = (rec.requests - last[v]) / dt
        last[v] = rec.requests
        p99 = f"{w.p99 * 1e3:6.1f} ms" if w.requests else "     - ms"
        parts.append(f"{v:>8} {rate:6.0f} req/s err {100 * w.error_rate:5.1f}% p99 {p99}")
    return "  ".join(parts)


async def _post_conversions(session: aiohttp.ClientSession, admin: str, token: str,
                            traffic: _Traffic, posted: set[str]) -> None:
    """Each user served for the first time converts or not, with their variant's chance;
    the outcome (1 or 0) goes to veer's events API, as a shop's backend would send it."""
    batch = []
    for user, variant in traffic.fresh.items():
        if user not in posted:
            posted.add(user)
            batch.append({"user": user, "metric": "converted",
                          "value": 1 if random.random() < CONVERSION[variant] else 0})
    traffic.fresh.clear()
    if batch:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(f"{admin}/experiments/{EXPERIMENT['name']}/events",
                                    json={"events": batch},
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()


def _experiment_line(server: ProxyServer) -> str:
    runner = server.rt.experiment
    res = runner.last if runner is not None else None
    if res is None:
        return "        experiment: collecting"
    units = res["variants"]
    parts = [f"        experiment {res['name']}: users {units['original']['units']}/"
             f"{units['new']['units']}  SRM {'MISMATCH' if res['srm']['mismatch'] else 'ok'}"]
    for name in ("accuracy", "converted"):
        m = res["metrics"][name]
        if m["lift"] is None or m["lift_ci"] is None:
            parts.append(f"{name} -")
            continue
        lo, hi = m["lift_ci"]
        parts.append(f"{name} {m['lift']:+.1%} [{lo:+.1%}, {hi:+.1%}]")
    parts.append(f"-> {res['decision']['action']}")
    return "  ".join(parts)


async def _demo(seconds: float, weight: float | None, rate: float, degrade_at: float,
                experiment: bool = False) -> int:
    loop = asyncio.get_running_loop()
    backends: list[Backend] = []
    server: ProxyServer | None = None
    admin: AdminServer | None = None
    workers: list[asyncio.Task[None]] = []
    try:
        backends = [await start_backend("original"), await start_backend("new")]
        server = ProxyServer(from_dict(demo_config(backends[0].url, backends[1].url, weight,
                                                   experiment), "<demo>"))
        if experiment:
            backends[0].fault.accuracy, backends[1].fault.accuracy = ACCURACY[ORIGINAL], \
                ACCURACY[NEW]
            degrade_at = 0
        await server.start()
        token = secrets.token_urlsafe(12)
        admin = AdminServer(server.rt, token=token)
        await admin.start()
        print(f"veer on 127.0.0.1:{server.port}: original {backends[0].url}, new "
              f"{backends[1].url}; {rate:g} req/s from {len(USERS)} users"
              + (f"; new degrades at {degrade_at:g}s" if degrade_at else ""), flush=True)
        print(f"dashboard: http://127.0.0.1:{admin.port}/ui  (admin token: {token})  "
              f"CLI: VEER_ADMIN=http://127.0.0.1:{admin.port} VEER_ADMIN_TOKEN={token} "
              "veer status", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        traffic = _Traffic(f"http://127.0.0.1:{server.port}/demo", rate)
        conn = aiohttp.TCPConnector(limit=WORKERS)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=10)) as session:
            workers = [asyncio.create_task(traffic.worker(session)) for _ in range(WORKERS)]
            t0 = last_t = loop.time()
            last = {ORIGINAL: 0, NEW: 0}
            shown = 0
            tick = 1
            converted: set[str] = set()
            while not stop.is_set() and not (seconds and tick > seconds):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, t0 + tick - loop.time()))
                now = loop.time()
                if degrade_at and now - t0 >= degrade_at and not backends[1].fault.error_rate:
                    backends[1].fault.error_rate, backends[1].fault.delay = 0.3, 0.15
                    print("        >>> the new release degrades: 30% errors, +150 ms", flush=True)
                events = server.rt.journal.events
                for e in events[shown:]:
                    print(f"        event: {e.kind} {e.from_} -> {e.to}: {e.reason}",
                          flush=True)
                shown = len(events)
                print(_line(server, now - t0, last, max(now - last_t, 1e-9)), flush=True)
                if experiment:
                    await _post_conversions(session, f"http://127.0.0.1:{admin.port}", token,
                                            traffic, converted)
                    print(_experiment_line(server), flush=True)
                last_t = now
                for b in backends:
                    b.seen.clear()  # the backend logs every request; keep memory flat
                tick += 1
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        switched = sum(1 for s in traffic.seen.values() if len(s) > 1)
        print(f"summary: {len(traffic.seen)} users, client failures {traffic.failed}; "
              f"{switched} users saw both variants (only when the weight changed)")
        return 0 if traffic.seen else 1
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for w in workers:
            w.cancel()
        if admin is not None:
            await admin.stop()
        if server is not None:
            await server.stop()
        for b in backends:
            await b.close()


def run_demo(seconds: float, weight: float | None, rate: float, degrade_at: float,
             experiment: bool = False) -> int:
    """Run the demo for ``seconds`` (0 = until Ctrl-C). 0 on success, 2 on bad arguments."""
    if seconds < 0 or rate <= 0 or degrade_at < 0:
        print("veer demo: --seconds and --degrade-at must be >= 0, --rate > 0", file=sys.stderr)
        return 2
    try:
        return uvloop.run(_demo(seconds, weight, rate, degrade_at, experiment))
    except ConfigError as exc:
        print(f"veer demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
