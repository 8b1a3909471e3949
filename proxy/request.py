"""One parsed client request and its streaming body.

The body is a small queue of chunks between the inbound parser (producer) and
the exchange that writes them upstream (consumer). When too much is buffered
the client's socket stops being read, so memory stays bounded for any body size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

Headers = list[tuple[bytes, bytes]]

BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024


class Body:
    """Request body chunks in flight from the client to the upstream."""

    __slots__ = ("_chunks", "_on_pause", "_on_resume", "_paused", "_waiter", "aborted",
                 "buffered", "complete", "consumed", "received")

    def __init__(self, on_pause: Callable[[], None], on_resume: Callable[[], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_pause, self._on_resume = on_pause, on_resume
        self._paused = False
        self.buffered = 0
        self.received = 0
        self.complete = False
        self.aborted = False
        self.consumed = False  # some of it has been read (sent): no retry after this

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

    def take_all(self) -> bytes:
        """Everything buffered, at once (for small, complete bodies, which the caller keeps
        so that the request can be replayed on a fresh connection)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
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

    __slots__ = ("arrival", "body", "captured", "chunked", "connection_tokens",
                 "content_length", "expect_continue", "header_bytes", "headers", "host",
                 "keep_alive", "method", "upgrade", "url", "version", "xff")

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
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.header_bytes = 0
        self.body: Body | None = None

    @property
    def query(self) -> bytes:
        _, _, q = self.url.partition(b"?")
        return q
