"""Mirroring against a peer veer did not write: h11 backends that record every byte, as
original and as new. Concurrent users send distinct bodies (content-length and chunked)
on keep-alive connections; every copy new parses must be exactly its own request (the same
target, the same user, the same body bytes, marked once), and every answer each user gets
must be original's answer to that user's request: no byte of one exchange in another."""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp

from proxy.config.load import from_dict
from proxy.runtime.server import ProxyServer
from tests.deadline import until
from tests.reliability.recording_backend import RecordingBackend, describe


async def test_copies_carry_exactly_their_own_request_and_users_get_only_their_answers(
) -> None:
    original, new = await RecordingBackend().start(), await RecordingBackend().start()
    server = ProxyServer(from_dict({
        "listen": "127.0.0.1:0",
        "upstreams": {"original": {"endpoints": [original.url]},
                      "new": {"endpoints": [new.url]}},
        "routing": {"user_key": ["header:X-User-Id"]},
        "weights": {"new": 0},
        "mirror": {"percent": 100, "methods": ["GET", "POST"], "max_body": "64KiB"},
    }, "<test>"))
    await server.start()
    rng = random.Random(15)
    sent: dict[str, tuple[str, bytes]] = {}  # seq -> (user, body)

    async def user(u: int) -> None:
        async with aiohttp.ClientSession() as s:  # one keep-alive connection per user
            for i in range(12):
                seq = f"u{u}-{i}"
                body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 7, 3000))))
                sent[seq] = (f"user-{u}", body)

                async def chunks(data: bytes = body) -> object:
                    for k in range(0, len(data), 1000):
                        yield data[k:k + 1000]

                chunked = i % 3 == 2 and body
                async with s.request(
                        "POST" if body else "GET", f"http://127.0.0.1:{server.port}/r/{seq}",
                        data=chunks() if chunked else (body or None),
                        headers={"X-User-Id": f"user-{u}", "x-seq": seq}) as r:
                    answer = json.loads(await r.read())
                    assert r.status == 200 and answer["seq"] == seq, answer
                    assert (answer["len"], answer["sha"]) == describe(body), (seq, answer)

    try:
        await asyncio.gather(*(user(u) for u in range(8)))
        await until(lambda: len(new.requests) == len(sent), timeout=15,
                    what=f"{len(sent)} copies at new")
        assert not new.failures and not original.failures, (new.failures, original.failures)
        assert sorted(r.header(b"x-seq").decode() for r in new.requests  # type: ignore[union-attr]
                      ) == sorted(sent)
        for r in new.requests:
            seq = (r.header(b"x-seq") or b"").decode()
            who, body = sent[seq]
            assert r.target == f"/r/{seq}".encode()
            assert r.values(b"x-user-id") == [who.encode()] and r.body == body, seq
            assert r.values(b"x-veer-shadow") == [b"1"]
        assert all(r.values(b"x-veer-shadow") == [] for r in original.requests)
        rec = server.rt.recorder.variants
        await until(lambda: rec["shadow"].requests == len(sent), timeout=10,
                    what="every copy judged")
        assert rec["shadow"].mismatches == 0
    finally:
        await server.stop()
        await original.close()
        await new.close()
