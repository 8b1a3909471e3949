"""Messages between a supervisor and one worker: a JSON object a line, over a socket pair.

The supervisor sends the live state (weights, cohorts) whenever it changes and
asks for reloads; the worker sends its report every tick. Writes never wait:
the socket buffers, and the peer reads as it goes.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

LINE_LIMIT = 64 * 1024 * 1024  # a report with a minute of queued slots fits


class Channel:
    """One end of a supervisor-worker connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    async def open(sock: socket.socket) -> Channel:
        """A channel over a connected Unix socket (one end of ``socket.socketpair``)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return Channel(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        """Queue one message (never waits; dropped if the peer has gone)."""
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None once the peer has gone (a reset too: a peer that died
        with our messages unread). ValueError on a malformed or oversized one, after which
        the channel cannot be trusted: close it."""
        try:
            line = await self.reader.readline()
        except ConnectionError:
            return None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise ValueError(f"unreadable message: {exc}") from None
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("a message is a JSON object")
        return message

    def close(self) -> None:
        """Close our end."""
        self.writer.close()
