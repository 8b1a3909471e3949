"""Raw-socket helpers: send exact bytes, read what comes back, and a backend that records bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data``; read until the server closes or goes quiet. Returns (reply, closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = b""
    closed = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                if reply:
                    break  # an answer came and then silence: the connection stayed open
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            reply += chunk
    finally:
        writer.close()
    return reply, closed


@dataclass
class RawBackend:
    """A TCP server that records every byte it receives and answers each request with 200."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.received += data
                if b"\r\n\r\n" in data:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
