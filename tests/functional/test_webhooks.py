"""Notifier and ConfirmGate against a real aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from proxy.config.hooks import Hook
from proxy.control.webhooks import ConfirmGate, Notifier
from tests.deadline import until


@dataclass
class Rule:
    """How the receiver answers one path."""

    fail_first: int = 0  # answer 503 to this many requests first
    status: int = 200
    delay: float = 0.0  # hold each answer this long (or until released)


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    """A webhook receiver that records every POST and misbehaves per path on cue."""

    port: int = 0
    rules: dict[str, Rule] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [s.body for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.path, await request.json(), dict(request.headers)))
        rule = self.rules.setdefault(request.path, Rule())
        if rule.fail_first > 0:
            rule.fail_first -= 1
            return web.Response(status=503)
        if rule.delay:
            # The slow receiver under test; released early at teardown so cleanup is quick.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), rule.delay)
        return web.Response(status=rule.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rcv = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rcv.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        rcv.port = runner.addresses[0][1]
        yield rcv
    finally:
        rcv.release.set()
        await runner.cleanup()


MakeNotifier = Callable[..., Awaitable[Notifier]]


@pytest.fixture
async def make_notifier(receiver: Receiver) -> AsyncIterator[MakeNotifier]:
    """Started notifiers with a short backoff; all stopped before the receiver goes."""
    made: list[Notifier] = []

    async def make(hooks: list[Hook], **kw: Any) -> Notifier:
        n = Notifier(hooks, **{"backoff": 0.01, **kw})
        await n.start()
        made.append(n)
        return n

    yield make
    for n in made:
        await n.stop(flush_timeout=0)


@pytest.fixture
async def gate_for(
    receiver: Receiver,
) -> AsyncIterator[Callable[[list[Hook]], Awaitable[ConfirmGate]]]:
    made: list[ConfirmGate] = []

    async def make(hooks: list[Hook]) -> ConfirmGate:
        g = ConfirmGate(hooks)
        await g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        await g.stop()


async def test_delivers_json_with_headers(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    n = await make_notifier([Hook(receiver.url("/events"))])
    n.notify({"kind": "advance", "from": 10, "to": 25, "evidence": {"p99_ms": 12.5}, "at": 1.5j})
    await until(lambda: n.sent == 1)
    [seen] = receiver.seen
    assert seen.path == "/events"
    # default=str: a value json cannot encode travels as its str().
    assert seen.body == {
        "kind": "advance",
        "from": 10,
        "to": 25,
        "evidence": {"p99_ms": 12.5},
        "at": "1.5j",
    }
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "veer"
    assert (n.failed, n.dropped) == (0, 0)


async def test_retries_503_then_succeeds(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    receiver.rules["/h"] = Rule(fail_first=2)
    n = await make_notifier([Hook(receiver.url("/h"), retries=3)])
    n.notify({"kind": "advance"})
    await until(lambda: n.sent == 1)
    assert receiver.hits("/h") == 3
    assert n.failed == 0


async def test_4xx_is_not_retried(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    receiver.rules["/h"] = Rule(status=404)
    n = await make_notifier([Hook(receiver.url("/h"), retries=3)])
    n.notify({"kind": "advance"})
    await until(lambda: n.failed == 1)
    assert receiver.hits("/h") == 1
    assert n.sent == 0


async def test_gives_up_after_retries(
    receiver: Receiver, make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.rules["/h"] = Rule(fail_first=100)
    n = await make_notifier([Hook(receiver.url("/h"), retries=2)])
    with caplog.at_level(logging.WARNING, logger="veer.webhooks"):
        n.notify({"kind": "rollback"})
        await until(lambda: n.failed == 1)
    assert receiver.hits("/h") == 3
    assert n.sent == 0
    assert any("giving up after 3 attempt(s)" in r.getMessage() for r in caplog.records)


async def test_connection_refused_is_retried_then_failed(make_notifier: MakeNotifier) -> None:
    # Port 1 on loopback: nothing listens, every attempt is a connection error.
    n = await make_notifier([Hook("http://127.0.0.1:1/h", retries=2)])
    n.notify({"kind": "advance"})
    await until(lambda: n.failed == 1)
    assert n.sent == 0


async def test_events_filter(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    n = await make_notifier(
        [
            Hook(receiver.url("/rollbacks"), events=frozenset({"rollback"})),
            Hook(receiver.url("/all")),
        ]
    )
    for kind in ("advance", "rollback", "pause"):
        n.notify({"kind": kind})
    await until(lambda: n.sent == 4)
    assert receiver.bodies("/rollbacks") == [{"kind": "rollback"}]
    assert receiver.bodies("/all") == [{"kind": "advance"}, {"kind": "rollback"}, {"kind": "pause"}]


async def test_unwanted_kind_is_not_queued(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    n = await make_notifier([Hook(receiver.url("/h"), events=frozenset({"rollback"}))], max_queue=1)
    n.notify({"kind": "rollback"})
    n.notify({"kind": "advance"})  # wanted by nobody: must not push the rollback out
    await until(lambda: n.sent == 1)
    assert receiver.bodies("/h") == [{"kind": "rollback"}]
    assert n.dropped == 0


async def test_notify_does_not_block_on_slow_hook(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    receiver.rules["/slow"] = Rule(delay=1.0)
    n = await make_notifier([Hook(receiver.url("/slow"))])
    n.notify({"kind": "advance", "i": 0})
    await until(lambda: receiver.hits("/slow") == 1)  # the worker is now stuck in a POST
    for i in range(1, 51):
        t0 = time.perf_counter()
        n.notify({"kind": "advance", "i": i})
        assert time.perf_counter() - t0 < 0.005
    assert n.sent == 0


async def test_overflow_drops_oldest(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    receiver.rules["/h"] = Rule(delay=30.0)
    n = await make_notifier([Hook(receiver.url("/h"), timeout=60.0)], max_queue=3)
    n.notify({"kind": "advance", "i": 0})
    await until(lambda: receiver.hits("/h") == 1)  # event 0 is in flight, the queue is empty
    for i in range(1, 6):
        n.notify({"kind": "advance", "i": i})
    assert n.dropped == 2
    receiver.rules["/h"].delay = 0
    receiver.release.set()
    await until(lambda: n.sent == 4)
    assert [b["i"] for b in receiver.bodies("/h")] == [0, 3, 4, 5]


async def test_stop_flushes_pending(receiver: Receiver) -> None:
    receiver.rules["/h"] = Rule(delay=0.02)
    n = Notifier([Hook(receiver.url("/h"))])
    await n.start()
    for i in range(5):
        n.notify({"kind": "advance", "i": i})
    await n.stop(flush_timeout=5.0)
    assert (n.sent, n.dropped) == (5, 0)
    assert [b["i"] for b in receiver.bodies("/h")] == [0, 1, 2, 3, 4]
    n.notify({"kind": "advance"})  # after stop: counted, never sent
    assert n.dropped == 1


async def test_stop_gives_up_after_flush_timeout(receiver: Receiver) -> None:
    receiver.rules["/h"] = Rule(delay=30.0)
    n = Notifier([Hook(receiver.url("/h"), timeout=60.0)])
    await n.start()
    for i in range(3):
        n.notify({"kind": "advance", "i": i})
    await until(lambda: receiver.hits("/h") == 1)
    t0 = time.monotonic()
    await n.stop(flush_timeout=0.2)
    assert time.monotonic() - t0 < 2.0
    assert (n.sent, n.dropped) == (0, 3)  # one cut off in flight, two never started


# ConfirmGate

GateFor = Callable[[list[Hook]], Awaitable[ConfirmGate]]


async def test_confirm_all_2xx(receiver: Receiver, gate_for: GateFor) -> None:
    gate = await gate_for([Hook(receiver.url("/a")), Hook(receiver.url("/b"))])
    assert gate.result("phase-2") is None  # never requested
    gate.request("phase-2", {"phase": 2, "weight": 25})
    await until(lambda: gate.result("phase-2") is not None)
    assert gate.result("phase-2") is True
    assert receiver.bodies("/a") == receiver.bodies("/b") == [{"phase": 2, "weight": 25}]
    gate.request("phase-2", {"phase": 2, "weight": 25})  # confirmed: once per key
    assert gate.result("phase-2") is True


async def test_confirm_one_500_fails_then_retry(receiver: Receiver, gate_for: GateFor) -> None:
    receiver.rules["/b"] = Rule(status=500)
    gate = await gate_for([Hook(receiver.url("/a")), Hook(receiver.url("/b"), retries=3)])
    gate.request("k", {})
    await until(lambda: gate.result("k") is not None)
    assert gate.result("k") is False
    assert receiver.hits("/b") == 1  # confirm hooks get one attempt per request
    receiver.rules["/b"].status = 204
    gate.request("k", {})  # after False, a new request tries again
    assert gate.result("k") is None
    await until(lambda: gate.result("k") is not None)
    assert gate.result("k") is True
    assert (receiver.hits("/a"), receiver.hits("/b")) == (2, 2)


async def test_confirm_timeout_fails(receiver: Receiver, gate_for: GateFor) -> None:
    receiver.rules["/slow"] = Rule(delay=30.0)
    gate = await gate_for([Hook(receiver.url("/a")), Hook(receiver.url("/slow"), timeout=0.2)])
    gate.request("k", {})
    await until(lambda: gate.result("k") is not None, timeout=3.0)
    assert gate.result("k") is False


async def test_confirm_pending_and_deduplicated(receiver: Receiver, gate_for: GateFor) -> None:
    receiver.rules["/a"] = Rule(delay=30.0)
    receiver.rules["/b"] = Rule(delay=30.0)
    gate = await gate_for(
        [Hook(receiver.url("/a"), timeout=60.0), Hook(receiver.url("/b"), timeout=60.0)]
    )
    gate.request("k", {"n": 1})
    gate.request("k", {"n": 2})
    await until(lambda: receiver.hits("/a") == 1 and receiver.hits("/b") == 1)
    gate.request("k", {"n": 3})
    assert gate.result("k") is None
    receiver.release.set()
    await until(lambda: gate.result("k") is not None)
    assert gate.result("k") is True
    assert receiver.bodies("/a") == receiver.bodies("/b") == [{"n": 1}]


async def test_confirm_request_before_start_raises() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        ConfirmGate([]).request("k", {})
