"""Keep-alive upstream connections: an asyncio protocol per connection, parsed by httptools.

A connection serves one exchange at a time (no upstream pipelining). Parsed
response events go straight to the exchange's ``ResponseSink``; the sink
writes to the client without an await per chunk. Idle connections wait in
their endpoint's ``IdlePool`` and close after the upstream keep-alive timeout.

Reads land in one scratch buffer shared by every upstream connection of the
process (``ReadBuffer``, ``READ_SIZE`` bytes) and are parsed in place: a read
is at most that size, so a client that is slow to take its response holds at
most one read plus its transport's high-water mark before reading pauses,
instead of the 256 KiB a plain protocol's read allocates each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Protocol, cast

import httptools

from proxy.upstream.endpoint import Endpoint
from proxy.upstream.idle import IdlePool
from proxy.wire.ends import ConnectionEnd, protocol_factory
from proxy.wire.flow import Drain, ReadGate

# Parsed header lists are (name, value) as received.
Headers = list[tuple[bytes, bytes]]


# A response head (or its trailers) larger than this is a protocol error, not a buffer.
MAX_RESPONSE_HEAD = 256 * 1024
# One upstream read at most: bounds what a slow client can make veer hold.
READ_SIZE = 32 * 1024


class ReadBuffer:
    """The scratch buffer upstream reads land in (one per process; parsed before the next
    read can happen, so one is enough)."""

    __slots__ = ("data", "view")

    def __init__(self, size: int = READ_SIZE) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)


class UpstreamProtocolError(Exception):
    """The upstream sent something that is not valid HTTP/1.1."""


class ResponseSink(Protocol):
    """What an exchange does with the upstream's response as it is parsed."""

    def on_interim(self, status: int, headers: Headers) -> None: ...
    def on_head(self, status: int, headers: Headers, keep_alive: bool) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_upgraded(self, tail: bytes) -> None: ...
    def on_lost(self, exc: BaseException | None) -> None: ...
    def flush(self) -> None: ...


class UpstreamConnection(ConnectionEnd):
    """One TCP connection to one endpoint: an asyncio buffered protocol by its methods.

    No ``asyncio.BufferedProtocol`` base: uvloop (and its TLS layer) tell a buffered
    protocol by its ``get_buffer``, and a Python base class would keep mypyc from compiling
    this class natively (its attributes in a dict, every call through Python's lookup)."""

    def __init__(self, endpoint: Endpoint, idle: IdlePool[UpstreamConnection],
                 loop: asyncio.AbstractEventLoop, scratch: ReadBuffer) -> None:
        self.endpoint = endpoint
        self.idle = idle  # where this connection waits between exchanges
        self.loop = loop
        self._scratch = scratch.view
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.served = 0
        self.idle_since = 0.0
        self.last_activity = 0.0
        self.closed = False
        self.head_only = False  # the request was HEAD: the response has no body
        self.tunnel: asyncio.Transport | None = None  # raw piping after a 101
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._in_head = False  # between a message's start and its headers' end
        self._head_bytes = 0
        self._drain = Drain(loop)  # writing, towards the upstream
        self._reading = ReadGate()  # paused for the client's backpressure

    # -- asyncio.BufferedProtocol ---------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self._reading.transport = self.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch

    def eof_received(self) -> bool | None:
        return None  # close: connection_lost reports it

    def buffer_updated(self, nbytes: int) -> None:
        """Parse a read in place (the scratch is only valid during this call)."""
        data = self._scratch[:nbytes]
        self.last_activity = self.loop.time()
        if self.tunnel is not None:
            self.tunnel.write(bytes(data))  # the scratch is reused by the next read
            return
        sink = self.sink
        if sink is None:
            # Bytes on an idle connection: the server broke framing; do not reuse it.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            sink.flush()
            sink.on_upgraded(bytes(data[offset:]))
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadDone):
                sink.flush()
                return
            self.close()
            sink.on_lost(UpstreamProtocolError(str(exc)))
            return
        sink.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drain.resume()
        self.idle.discard(self)
        sink, self.sink = self.sink, None
        if self.tunnel is not None:
            self.tunnel.close()
        if sink is not None:
            sink.on_lost(exc)

    def pause_writing(self) -> None:
        self._drain.pause()
        if self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self._drain.resume()
        if self.tunnel is not None:
            self.tunnel.resume_reading()

    # -- httptools callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._in_head = True
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise UpstreamProtocolError("response headers or trailers too large")
        if self._in_head:
            self._headers.append((name, value))
        # else a trailer: dropped. It must never join the headers of a later response on
        # this connection, nor be sent to the client as a header of this one.

    def on_headers_complete(self) -> None:
        self._in_head = False
        sink = self.sink
        if sink is None:
            # More bytes after the response just completed, in the same read: the
            # server broke framing. The error closes the connection.
            raise UpstreamProtocolError("a response nobody asked for")
        status = self._parser.get_status_code()
        headers, self._headers = self._headers, []
        if 100 <= status < 200 and status != 101:
            sink.on_interim(status, headers)  # e.g. 103 Early Hints
            return
        keep_alive = self._parser.should_keep_alive()
        sink.on_head(status, headers, keep_alive)
        if self.head_only:
            # llhttp cannot be told a HEAD response has no body; end here and
            # start the next response with a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
            sink.on_end()
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        assert self.sink is not None
        self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self.sink is not None and self._parser.get_status_code() >= 200:
            self.sink.on_end()

    # -- used by the exchange -----------------------------------------------
    def start(self, sink: ResponseSink, head_only: bool) -> None:
        """Bind to an exchange before its request is written."""
        self.sink = sink
        self.head_only = head_only
        self.served += 1
        self.last_activity = self.loop.time()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the kernel buffer towards the upstream is full."""
        if not self.closed:
            await self._drain.wait()

    @property
    def reading_paused(self) -> bool:
        """Reading is paused because the client is slow to take the response."""
        return self._reading.paused

    def pause_reading(self) -> None:
        """The client is slow to take the response: stop reading the upstream."""
        if not self.closed:
            self._reading.pause("client")

    def resume_reading(self) -> None:
        """The client caught up."""
        self._reading.resume("client", self.closed)

    def release(self, keep: bool, max_idle: int) -> None:
        """Back to the idle list after a complete exchange, or closed."""
        self.sink = None
        if keep and not self.closed and len(self.idle) < max_idle:
            # The client's backpressure may have paused reading during the last write;
            # that client is done with this connection, the next one must be heard.
            self.resume_reading()
            self.idle_since = self.loop.time()
            self.idle.put(self)
        else:
            self.close()


class _HeadDone(Exception):
    """Stops the parser after a HEAD response's headers."""


async def connect(endpoint: Endpoint, idle: IdlePool[UpstreamConnection], timeout: float,
                  scratch: ReadBuffer, tls: ssl.SSLContext | None = None) -> UpstreamConnection:
    """A new connection to ``endpoint``, idling in ``idle`` between exchanges; over TLS
    with ``tls`` for an https endpoint, the URL's host as SNI and as the name verified
    (raises OSError, including ssl.SSLError, or TimeoutError; the timeout covers the
    handshake)."""
    loop = asyncio.get_running_loop()
    addr = endpoint.address
    endpoint.connects += 1
    secure = tls if addr.scheme == "https" else None
    conn = UpstreamConnection(endpoint, idle, loop, scratch)
    coro = loop.create_connection(protocol_factory(lambda: conn), addr.host, addr.port, ssl=secure,
                                  server_hostname=addr.host if secure is not None else None)
    if timeout > 0:
        await asyncio.wait_for(coro, timeout)
    else:
        await coro
    return conn
