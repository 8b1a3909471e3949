"""A backend that parses what it receives with h11 (a parser veer does not use) and answers
each request with bytes a test script chooses: trailers, 1xx, early close, over-send.

Every request is recorded with its headers, body and trailers exactly as the backend's
parser saw them, so a test can assert the backend received exactly the client's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11


@dataclass
class Received:
    """One request as the backend parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    connection: int = 0

    def header(self, name: bytes) -> bytes | None:
        """The first value of ``name`` (lower case), if any."""
        return next((v for n, v in self.headers if n == name), None)


# Given the request, the raw bytes to answer with (None: close without answering).
Script = Callable[[Received], Awaitable[bytes | None]]


async def ok(req: Received) -> bytes:
    """A plain 200 naming the request target."""
    body = b"ok " + req.target
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


class ScriptedBackend:
    """An h11 backend on 127.0.0.1 answering with ``script``."""

    def __init__(self, script: Script = ok) -> None:
        self.script = script
        self.received: list[Received] = []
        self.errors: list[str] = []  # what h11 refused: veer sent bad or ambiguous bytes
        self.raw = bytearray()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The endpoint URL for veer's config."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        conn = h11.Connection(h11.SERVER)
        current: Received | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    self.raw += data
                    conn.receive_data(data)
                    if not data:
                        break
                    continue
                if isinstance(event, h11.Request):
                    current = Received(event.method, event.target, list(event.headers),
                                       connection=conn_id)
                    self.received.append(current)
                elif isinstance(event, h11.Data) and current is not None:
                    current.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage) and current is not None:
                    current.trailers = list(event.headers)
                    answer = await self.script(current)
                    if answer is None:
                        break
                    writer.write(answer)
                    await writer.drain()
                    current = None
                    # The answer's bytes were ours, not h11's: start its next cycle with a
                    # fresh connection fed what it had received beyond this request.
                    rest, closed = conn.trailing_data
                    conn = h11.Connection(h11.SERVER)
                    if rest:
                        conn.receive_data(bytes(rest))  # b"" would mean end of stream
                    if closed:
                        conn.receive_data(b"")
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError as exc:
            self.errors.append(str(exc))
        except ConnectionError:
            pass
        finally:
            writer.close()
