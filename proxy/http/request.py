"""One parsed client request and its streaming body.

The body is a small queue of chunks between the inbound parser (producer) and
the exchange that writes them upstream (consumer). When too much is buffered
the client's socket stops being read, so memory stays bounded for any body size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.routing.router import Decision

Headers = list[tuple[bytes, bytes]]

# What one request body may hold in veer before the client's socket stops being read.
BODY_HIGH_WATER = 64 * 1024
BODY_LOW_WATER = 16 * 1024


class Body:
    """Request body chunks in flight from the client to the upstream."""

    __slots__ = ("_chunks", "_on_pause", "_on_resume", "_paused", "_waiter", "aborted",
                 "buffered", "complete", "consumed", "pace_base", "pace_since", "received")

    def __init__(self, on_pause: Callable[[], None], on_resume: Callable[[], None],
                 now: float = 0.0) -> None:
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_pause, self._on_resume = on_pause, on_resume
        self._paused = False
        self.buffered = 0
        self.received = 0
        self.complete = False
        self.aborted = False
        self.consumed = False  # some of it has been read (sent): no retry after this
        # The minimum-rate check counts from here (reset when veer's backpressure lifts:
        # time spent paused by veer is not held against the client).
        self.pace_since = now
        self.pace_base = 0

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self.received += len(data)
        if self.buffered > BODY_HIGH_WATER and not self._paused:
            self._paused = True
            self._on_pause()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    @property
    def paused(self) -> bool:
        """veer stopped reading the client because too much of the body is buffered."""
        return self._paused

    def too_slow(self, now: float, grace: float, min_rate: int) -> bool:
        """The body has averaged under ``min_rate`` bytes/s for longer than ``grace``."""
        if self.complete or self._paused or not min_rate:
            return False
        elapsed = now - self.pace_since
        return elapsed > grace and self.received - self.pace_base < min_rate * elapsed

    def take_all(self) -> bytes:
        """Everything buffered, at once (for small, complete bodies, which the caller keeps
        so that the request can be replayed on a fresh connection)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        self.consumed = True  # the caller sends it: from here on, it is not a fresh request
        return data

    async def read(self) -> bytes | None:
        """The next chunk, or None at the end of the body."""
        while not self._chunks:
            if self.complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self.buffered -= len(data)
        self.consumed = True
        if self._paused and self.buffered < BODY_LOW_WATER:
            self._paused = False
            self.pace_base = self.received
            self.pace_since = asyncio.get_running_loop().time()
            self._on_resume()
        return data

    def abort(self) -> None:
        """The client went away: wake the reader, which then sees an incomplete end."""
        self.complete = True
        self.aborted = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Request:
    """The head of one client request, as parsed and checked by the inbound side."""

    __slots__ = ("arrival", "body", "captured", "chunked", "codings", "connection_tokens",
                 "connection_values", "content_length", "decision", "expect_continue",
                 "header_bytes", "headers", "host", "keep_alive", "method", "upgrade",
                 "upgrade_offer", "url", "version", "xff")

    def __init__(self, arrival: float) -> None:
        self.arrival = arrival
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.headers: Headers = []
        self.captured: dict[bytes, bytes] = {}
        self.connection_tokens: list[bytes] = []
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.codings: bytes | None = None  # transfer codings under chunked, e.g. b"gzip"
        self.keep_alive = True
        self.upgrade: bytes | None = None  # the protocol veer will tunnel, once checked
        self.upgrade_offer = b""  # the Upgrade header as sent
        self.connection_values: list[bytes] | None = None  # Connection headers, as sent
        self.expect_continue = False
        self.header_bytes = 0
        self.body: Body | None = None
        self.decision: Decision | None = None  # routed at arrival, before any queueing

    @property
    def query(self) -> bytes:
        _, _, q = self.url.partition(b"?")
        return q
