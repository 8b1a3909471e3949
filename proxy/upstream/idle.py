"""The idle keep-alive connections of one endpoint: reused newest first, expired oldest first."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Reusable(Protocol):
    """A connection that can wait idle."""

    @property
    def closed(self) -> bool: ...
    @property
    def idle_since(self) -> float: ...
    def close(self) -> None: ...


C = TypeVar("C", bound=Reusable)


class IdlePool(Generic[C]):
    """LIFO of idle connections: the most recently used is the warmest, the oldest expires."""

    __slots__ = ("_conns", "retired")

    def __init__(self) -> None:
        self._conns: deque[C] = deque()
        self.retired = False  # its endpoint left the pool: nothing waits here any more

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[C]:
        return iter(self._conns)

    def put(self, conn: C) -> None:
        """Back from an exchange, ready for the next (closed if the endpoint is gone)."""
        if self.retired:
            conn.close()
        else:
            self._conns.append(conn)

    def take(self) -> C | None:
        """The most recently used open connection, if any."""
        conns = self._conns
        while conns:
            conn = conns.pop()
            if not conn.closed:
                return conn
        return None

    def discard(self, conn: C) -> None:
        """``conn`` closed while idle."""
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    def expire(self, before: float) -> None:
        """Close connections idle since before ``before`` (oldest are at the front)."""
        conns = self._conns
        while conns:
            conn = conns[0]
            if conn.idle_since > before and not conn.closed:
                break
            conns.popleft()
            conn.close()

    def close_all(self, retire: bool = False) -> None:
        """Close every idle connection (the process stops); with ``retire``, also those that
        come back later (the endpoint left the pool while they were in use)."""
        self.retired = self.retired or retire
        conns, self._conns = self._conns, deque()
        for conn in conns:
            conn.close()
