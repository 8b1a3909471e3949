"""Webhook configuration and queueing, without sockets."""

from __future__ import annotations

import logging

import pytest

from proxy.config.hooks import Hook
from proxy.control.webhooks import Notifier


@pytest.mark.parametrize(
    "kw",
    [
        {"url": "https://example.com/h"},  # http only
        {"url": "example.com/h"},
        {"url": "http:///h"},
        {"url": "http://h:notaport/h"},
        {"url": "http://h/", "timeout": 0},
        {"url": "http://h/", "retries": -1},
    ],
)
def test_hook_rejects_bad_config(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Hook(**kw)  # type: ignore[arg-type]


def test_hook_wants() -> None:
    assert Hook("http://h/").wants("anything")
    only = Hook("http://h:8080/x", events=frozenset({"rollback", "abort"}))
    assert only.wants("rollback")
    assert not only.wants("advance")


async def test_queue_overflow_counts_dropped_before_start() -> None:
    n = Notifier([Hook("http://127.0.0.1:1/h")], max_queue=3)
    for i in range(5):
        n.notify({"kind": "advance", "i": i})
    assert n.dropped == 2
    await n.stop(flush_timeout=0)  # never started: the three queued are dropped too
    assert (n.sent, n.failed, n.dropped) == (0, 0, 5)


async def test_unserialisable_event_is_dropped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = Notifier([Hook("http://127.0.0.1:1/h")])
    cyclic: dict[str, object] = {"kind": "advance"}
    cyclic["self"] = cyclic
    with caplog.at_level(logging.WARNING, logger="veer.webhooks"):
        n.notify(cyclic)
        n.notify({"kind": "advance", "bad": {(1, 2): "tuple key"}})
    assert n.dropped == 2
    assert len(caplog.records) == 2
    await n.stop(flush_timeout=0)


async def test_no_hooks_queue_nothing() -> None:
    n = Notifier([], max_queue=1)
    n.notify({"kind": "advance"})
    n.notify({"kind": "advance"})
    assert n.dropped == 0
    await n.stop(flush_timeout=0)
