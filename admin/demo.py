"""``veer demo``: two demo backends, veer in front, paced traffic, and a live view of the split.

Everything runs in one process on 127.0.0.1 ephemeral ports; nothing else is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys

import aiohttp
import uvloop

from admin.backend import Backend, start_backend
from proxy.config import ConfigError, from_dict
from proxy.recorder import CountersSnapshot
from proxy.routing import NEW, ORIGINAL
from proxy.server import ProxyServer

USERS = [f"user-{i}" for i in range(1000)]
WORKERS = 16


def _errors(c: CountersSnapshot) -> int:
    """5xx answers (from the backend or made by veer) plus requests that got no response."""
    return c.status_classes[5] + c.status_classes[0]


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


class _Traffic:
    """Paced requests from simulated users; remembers which variants each user saw."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.interval = url, 1.0 / rate
        self.next_at = 0.0
        self.seen: dict[str, set[str]] = {}
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
            except (aiohttp.ClientError, TimeoutError):
                self.failed += 1


async def _demo(seconds: float, weight: float, rate: float) -> int:
    loop = asyncio.get_running_loop()
    backends: list[Backend] = []
    server: ProxyServer | None = None
    workers: list[asyncio.Task[None]] = []
    try:
        backends = [await start_backend("original"), await start_backend("new")]
        config = from_dict({
            "listen": "127.0.0.1:0",
            "upstreams": {"original": {"endpoints": [backends[0].url]},
                          "new": {"endpoints": [backends[1].url]}},
            "routing": {"salt": "demo", "user_key": ["header:X-User-Id"]},
            "weights": {"new": weight},
        }, "<demo>")
        server = ProxyServer(config)
        await server.start()
        rec, rt = server.rt.recorder, server.rt
        print(f"veer on 127.0.0.1:{server.port}  original {backends[0].url}  new {backends[1].url}"
              f"  weight {weight:g}%  {rate:g} req/s from {len(USERS)} users"
              + ("  (Ctrl-C to stop)" if not seconds else ""), flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        traffic = _Traffic(f"http://127.0.0.1:{server.port}/demo", rate)
        conn = aiohttp.TCPConnector(limit=WORKERS)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            workers = [asyncio.create_task(traffic.worker(session)) for _ in range(WORKERS)]
            t0 = last_t = loop.time()
            last = {v: rec.snapshot(v) for v in (ORIGINAL, NEW)}
            tick = 1
            while not stop.is_set():
                end = t0 + (min(tick, seconds) if seconds else tick)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, end - loop.time()))
                now = loop.time()
                cur = {v: rec.snapshot(v) for v in (ORIGINAL, NEW)}
                d = {v: cur[v].requests - last[v].requests for v in cur}
                dt = max(now - last_t, 1e-9)
                print(f"{now - t0:6.1f}s  weight {rt.new_weight_bp / 100:6.2f}%  "
                      f"new {_pct(d[NEW], d[NEW] + d[ORIGINAL])} "
                      f"(cum {_pct(cur[NEW].requests, cur[NEW].requests + cur[ORIGINAL].requests)})"
                      f"  original {d[ORIGINAL] / dt:6.1f} req/s err {_errors(cur[ORIGINAL])}"
                      f"  new {d[NEW] / dt:6.1f} req/s err {_errors(cur[NEW])}", flush=True)
                last, last_t = cur, now
                for b in backends:
                    b.seen.clear()  # the demo backend logs every request; keep memory flat
                if seconds and tick >= seconds:
                    break
                tick += 1
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return _summary(rec.snapshot(ORIGINAL), rec.snapshot(NEW), traffic, loop.time() - t0)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for w in workers:
            w.cancel()
        if server is not None:
            await server.stop()
        for b in backends:
            await b.close()


def _summary(orig: CountersSnapshot, new: CountersSnapshot, traffic: _Traffic,
             elapsed: float) -> int:
    total = orig.requests + new.requests
    switched = sum(1 for s in traffic.seen.values() if len(s) > 1)
    on_new = sum(1 for s in traffic.seen.values() if s == {NEW})
    print(f"summary: {total} requests in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f} req/s); "
          f"original {orig.requests} (errors {_errors(orig)}), "
          f"new {new.requests} (errors {_errors(new)}) = {_pct(new.requests, total).strip()} new; "
          f"client failures {traffic.failed}")
    print(f"sticky: {len(traffic.seen)} users seen, {on_new} on new "
          f"({_pct(on_new, len(traffic.seen)).strip()}), {switched} users switched variant")
    if switched or not traffic.seen:
        print("veer demo: FAILED: " + ("a user saw both variants" if switched
                                       else "no request got an answer through veer"))
        return 1
    return 0


def run_demo(seconds: float, weight: float, rate: float) -> int:
    """Run the demo for ``seconds`` (0 = until Ctrl-C).

    Returns 0 on success, 1 if no traffic got through or a user switched variant, 2 on bad
    arguments.
    """
    if seconds < 0 or rate <= 0:
        print("veer demo: --seconds must be >= 0 and --rate > 0", file=sys.stderr)
        return 2
    try:
        return uvloop.run(_demo(seconds, weight, rate))
    except ConfigError as exc:
        print(f"veer demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
