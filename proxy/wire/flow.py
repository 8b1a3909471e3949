"""Flow control, the same for both sides of an exchange.

``ReadGate`` pauses reading a transport while any reason holds (a full body
buffer, a queue of pipelined requests, a slow client downstream) and resumes it
when the last reason goes. ``Drain`` lets a writer wait while the transport's
write buffer is above its high-water mark (asyncio's ``pause_writing`` and
``resume_writing``).
"""

from __future__ import annotations

import asyncio


class ReadGate:
    """Reading is paused while at least one reason holds."""

    __slots__ = ("_reasons", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reasons: set[str] = set()

    @property
    def paused(self) -> bool:
        """Some reason holds reading."""
        return bool(self._reasons)

    def pause(self, reason: str) -> None:
        """Stop reading for ``reason`` (idempotent)."""
        if not self._reasons and self.transport is not None:
            self.transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str, closed: bool = False) -> None:
        """``reason`` no longer holds; reading resumes when no other does (not once closed)."""
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons and self.transport is not None and not closed:
                self.transport.resume_reading()


class Drain:
    """Writers wait here while the write buffer is above its high-water mark."""

    __slots__ = ("_loop", "_waiter", "paused")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False

    def pause(self) -> None:
        """The transport said ``pause_writing``."""
        self.paused = True

    def resume(self) -> None:
        """The transport said ``resume_writing`` (or closed): wake the writer."""
        self.paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once writing may go on."""
        if self.paused:
            self._waiter = self._loop.create_future()
            await self._waiter
