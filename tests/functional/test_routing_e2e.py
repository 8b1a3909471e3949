"""Routing through real sockets: the split, stickiness, overrides and live weight changes."""

from __future__ import annotations

import asyncio

import aiohttp

from admin.demo.backend import Backend
from proxy.routing.hashing import bucket, choose
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config


async def test_split_matches_the_hash_and_users_stick(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends))
    url = f"http://127.0.0.1:{server.port}/"
    users = [f"user-{i}" for i in range(1500)]
    seen: dict[str, set[str]] = {u: set() for u in users}
    sem = asyncio.Semaphore(32)

    async def hit(s: aiohttp.ClientSession, user: str) -> None:
        async with sem, s.get(url, headers={"X-User-Id": user}) as r:
            assert r.status == 200
            body = await r.json()
            variant = r.headers["x-veer-variant"]
            assert body["backend"].startswith(variant)
            seen[user].add(variant)

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(hit(s, u) for u in users * 2))
    assert all(len(v) == 1 for v in seen.values()), "a user moved between variants"
    on_new = {u for u, v in seen.items() if v == {"new"}}
    expected = {u for u in users if choose(bucket("test", u), 1000) == "new"}
    assert on_new == expected
    assert 0.08 < len(on_new) / len(users) < 0.12
    rec = server.rt.recorder
    assert rec.snapshot("new").requests == 2 * len(on_new)
    assert rec.snapshot("original").requests == 2 * (len(users) - len(on_new))


async def test_cookie_key_and_anonymous_cookie(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, weights={"new": 50}))
    url = f"http://127.0.0.1:{server.port}/"
    # unsafe=True: keep cookies set by an IP-address host, as a browser would for a name.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(url, headers={"Cookie": "uid=AB12A-user"}) as r:
            assert r.status == 200
            assert "veer_uid" not in r.cookies  # had a key: no anonymous cookie
        async with s.get(url) as r:
            set_cookie = r.headers["set-cookie"]
            assert set_cookie.startswith("veer_uid=") and "HttpOnly" in set_cookie
            first = r.headers["x-veer-variant"]
        uid = set_cookie.split(";")[0].split("=", 1)[1]
        assert first == choose(bucket("test", uid), 5000)
        for _ in range(5):  # the session's cookie jar sends veer_uid back: same variant
            async with s.get(url) as r:
                assert "set-cookie" not in r.headers
                assert r.headers["x-veer-variant"] == first


async def test_force_header_only_when_enabled(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    off = await start_veer(base_config(backends, weights={"new": 0}))
    on = await start_veer(base_config(backends, weights={"new": 0},
                                      routing={"salt": "test", "force": {"enabled": True}}))
    async with aiohttp.ClientSession() as s:
        headers = {"X-User-Id": "someone", "X-Veer-Variant": "new"}
        async with s.get(f"http://127.0.0.1:{off.port}/", headers=headers) as r:
            assert r.headers["x-veer-variant"] == "original"
        async with s.get(f"http://127.0.0.1:{on.port}/", headers=headers) as r:
            assert r.headers["x-veer-variant"] == "new"


async def test_allow_and_deny_lists(backends: dict[str, Backend], start_veer: StartVeer) -> None:
    routing = {"salt": "test", "user_key": ["header:X-User-Id"], "group_key": ["header:X-Group"],
               "allow": {"users": ["alice"], "groups": ["staff"]},
               "deny": {"users": ["bob"]}}
    server = await start_veer(base_config(backends, weights={"new": 0}, routing=routing))
    url = f"http://127.0.0.1:{server.port}/"
    async with aiohttp.ClientSession() as s:
        async def variant(headers: dict[str, str]) -> str:
            async with s.get(url, headers=headers) as r:
                return r.headers["x-veer-variant"]

        assert await variant({"X-User-Id": "alice"}) == "new"
        assert await variant({"X-User-Id": "carol", "X-Group": "beta, staff"}) == "new"
        assert await variant({"X-User-Id": "carol"}) == "original"
        server.rt.live.set_weight(10000)
        assert await variant({"X-User-Id": "bob"}) == "original"
        assert await variant({"X-User-Id": "carol"}) == "new"


async def test_weight_change_applies_to_next_request_not_in_flight(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    server = await start_veer(base_config(backends, weights={"new": 0}))
    url = f"http://127.0.0.1:{server.port}/slow?s=0.5"
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.ensure_future(s.get(url, headers={"X-User-Id": "u1"}))
        await until(lambda: server.rt.recorder.snapshot("original").in_flight > 0,
                    timeout=5, interval=0.005, what="the request to arrive")
        server.rt.live.set_weight(10000)
        async with s.get(f"http://127.0.0.1:{server.port}/", headers={"X-User-Id": "u1"}) as r:
            assert r.headers["x-veer-variant"] == "new"
        resp = await in_flight
        assert resp.headers["x-veer-variant"] == "original"
        assert (await resp.text()).startswith("original")
        resp.release()
