"""Ports on 127.0.0.1 for the processes tests start: a free one, and whether one accepts."""

from __future__ import annotations

import asyncio
import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def accepts(port: int) -> bool:
    """True when something listens on ``port`` (the connection is closed at once)."""
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    writer.close()
    return True
