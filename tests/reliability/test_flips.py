"""Weights flipped every 10 ms for 10 s under live traffic: no errors, no mixed answers,
and every user's variant is one that one of the two weights would pick (sticky per weight)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from admin.demo.backend import Backend
from proxy.routing.hashing import bucket, choose
from proxy.routing.variant import NEW, ORIGINAL
from proxy.runtime.server import ProxyServer
from tests.functional.conftest import StartVeer, base_config

SALT = "test"  # base_config's routing salt
LOW_BP, HIGH_BP = 1000, 6000  # the two weights the flipper alternates between
FLIP_EVERY = 0.01
DURATION = 10.0
WORKERS = 12
USERS = [f"user-{i}" for i in range(2000)]


@dataclass
class Tally:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


async def _worker(session: aiohttp.ClientSession, url: str, rng: random.Random,
                  stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        user = rng.choice(USERS)
        try:
            async with session.get(url, headers={"X-User-Id": user}) as r:
                body: Any = await r.json() if r.status == 200 else await r.text()
                variant = r.headers.get("x-veer-variant", "")
                status = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tally.errors.append(f"{user}: {type(exc).__name__}: {exc}")
            continue
        tally.requests += 1
        if status != 200:
            tally.errors.append(f"{user}: HTTP {status}: {str(body)[:200]}")
            continue
        backend = str(body.get("backend", ""))
        if variant not in (ORIGINAL, NEW) or not backend.startswith(variant):
            tally.mismatched.append(f"{user}: x-veer-variant {variant!r}, backend {backend!r}")
        tally.seen[user].add(variant)


async def _flipper(server: ProxyServer, stop: asyncio.Event) -> int:
    """The load: alternate the weight every 10 ms until told to stop."""
    flips = 0
    while not stop.is_set():
        server.rt.live.set_weight(HIGH_BP if server.rt.live.new_weight_bp == LOW_BP else LOW_BP)
        flips += 1
        await asyncio.sleep(FLIP_EVERY)
    return flips


async def test_weight_flips_under_traffic(backends: dict[str, Backend],
                                          start_veer: StartVeer) -> None:
    veer = await start_veer(base_config(backends, weights={"new": LOW_BP / 100}))
    loop = asyncio.get_running_loop()
    url = f"http://127.0.0.1:{veer.port}/flip"
    tally = Tally()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=WORKERS)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        workers = [loop.create_task(_worker(session, url, random.Random(i), stop, tally))
                   for i in range(WORKERS)]
        flipper = loop.create_task(_flipper(veer, stop))
        try:
            done, _ = await asyncio.wait([flipper, *workers], timeout=DURATION,
                                         return_when=asyncio.FIRST_EXCEPTION)
            for t in done:  # a task that ended early ended with an exception: surface it
                t.result()
        finally:
            stop.set()
        flips = await asyncio.wait_for(flipper, 5)
        await asyncio.wait_for(asyncio.gather(*workers), 15)

    print(f"\nflip test: {tally.requests} requests, {flips} weight flips, "
          f"{len(tally.seen)} distinct users")
    assert not tally.errors, (len(tally.errors), tally.errors[:10])
    assert not tally.mismatched, (len(tally.mismatched), tally.mismatched[:10])
    assert tally.requests >= 1000, tally.requests
    assert flips >= 100, flips

    wrong, moved, between = [], 0, 0
    for user, variants in tally.seen.items():
        allowed = {choose(bucket(SALT, user), LOW_BP), choose(bucket(SALT, user), HIGH_BP)}
        if not variants <= allowed:
            wrong.append((user, bucket(SALT, user), sorted(variants)))
        if len(allowed) == 2:
            between += 1
            moved += len(variants) == 2
    assert not wrong, wrong[:10]
    # The flips took effect: users between the two weights were seen on both variants.
    print(f"users between the weights: {between}, seen on both variants: {moved}")
    assert between > 0 and moved > 0
