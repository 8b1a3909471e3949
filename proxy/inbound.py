"""The client side: an asyncio protocol per connection, parsed by httptools (llhttp).

llhttp in strict mode rejects the framing attacks (CL+TE, duplicate or bad
Content-Length, bad Transfer-Encoding, obs-fold, bare CR/LF, bad tokens);
this module adds what a proxy must check on top: one Host, no
Transfer-Encoding on HTTP/1.0, header size and count limits, body limit, and
header names with underscores dropped (a backend could read ``Content_Length``
as ``Content-Length``). A rejected request gets its 4xx and the connection
closes; nothing of it is forwarded.

Pipelined requests are answered in order, one exchange at a time, with the
queue bounded by ``limits.max_pipelined``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from proxy import h1
from proxy.forward import Exchange
from proxy.h1 import ProxyError
from proxy.request import Body, Request

if TYPE_CHECKING:
    from proxy.runtime import Runtime
    from proxy.upstream import UpstreamConnection

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NOT_FORWARDED = h1.REQUEST_NOT_FORWARDED
# Headers whose values veer itself reads (one set lookup per header finds them).
_READ_BY_VEER = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                           b"x-forwarded-for", b"expect", b"upgrade"})


class Reject(Exception):
    """A request that must be answered with ``status`` and a closed connection."""

    def __init__(self, status: int, cause: str) -> None:
        super().__init__(cause)
        self.status, self.cause = status, cause


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and runs their exchanges in order."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.loop = rt.loop
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.peer_ip_bytes = b""  # for X-Forwarded-For, encoded once per connection
        self.upstream: UpstreamConnection | None = None  # for flow control of the response
        self.tunnel: asyncio.Transport | None = None  # raw piping after a 101
        self.closed = False
        self.last_activity = 0.0
        self._parser = httptools.HttpRequestParser(self)
        self._req: Request | None = None  # being parsed
        self._in_headers = False
        self._active: Exchange | None = None
        self._queue: deque[Request] = deque()
        self._fatal: bytes | None = None  # error to send once earlier answers are out
        self._upgrade_tail = b""
        self._paused_for: set[str] = set()
        self._connection_values: list[bytes] = []
        self._header_count = 0
        self._upgrade_value = b""
        limits = rt.config.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_body = limits.max_body_bytes
        self._captured_names = rt.router.header_names

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.peer_ip_bytes = self.peer_ip.encode()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_activity = self.loop.time()
        self.rt.connections.add(self)
        self.rt.sweeper.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self._fatal is not None or self.closed:
            return
        if self._req is not None and self._req.upgrade is not None and self._req.body is None:
            self._upgrade_tail += data  # after an Upgrade request, until the tunnel is up
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_tail += data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            ctx = exc.__context__
            if isinstance(ctx, Reject):
                self.fail(ctx.status, ctx.cause)
            else:
                self.fail(400, f"bad request ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.rt.connections.discard(self)
        self.rt.sweeper.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
        if self._req is not None and self._req.body is not None and not self._req.body.complete:
            self._req.body.abort()
        if self._active is not None:
            self._active.client_lost()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- httptools callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        # time.monotonic, not loop.time: uvloop's loop clock has millisecond steps (libuv's
        # uv_now), too coarse for latency. Both read CLOCK_MONOTONIC, so deadlines that
        # compare the two stay right to a millisecond.
        self._req = Request(time.monotonic())
        self._in_headers = True
        self._connection_values = []
        self._header_count = 0
        self._upgrade_value = b""

    def on_url(self, url: bytes) -> None:
        req = self._req
        assert req is not None
        req.url += url
        req.header_bytes += len(url)
        if req.header_bytes > self._max_header_bytes:
            raise Reject(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        req.header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if req.header_bytes > self._max_header_bytes or self._header_count > self._max_headers:
            raise Reject(431, "request headers too large")
        lname = name.lower()
        if lname in _READ_BY_VEER:
            self._read_header(req, lname, value)
        elif b"_" in lname:
            return  # normalised away: a backend might read it as a dash
        if lname in self._captured_names:
            old = req.captured.get(lname)
            req.captured[lname] = value if old is None else old + b"; " + value
        if lname not in NOT_FORWARDED:
            req.headers.append((name, value))

    def _read_header(self, req: Request, lname: bytes, value: bytes) -> None:
        if lname == b"host":
            if req.host is not None:
                raise Reject(400, "more than one Host header")
            req.host = value
        elif lname == b"content-length":
            req.content_length = int(value)  # llhttp has validated the digits
        elif lname == b"transfer-encoding":
            req.chunked = True  # llhttp insists chunked is final; we re-frame anyway
        elif lname == b"connection":
            self._connection_values.append(value)
        elif lname == b"x-forwarded-for":
            req.xff = value if req.xff is None else req.xff + b", " + value
        elif lname == b"expect":
            if value.strip().lower() != b"100-continue":
                raise Reject(417, "unsupported Expect")
            req.expect_continue = True
        elif lname == b"upgrade":
            self._upgrade_value = value

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        self._in_headers = False
        parser = self._parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        if req.method == b"CONNECT":
            raise Reject(405, "CONNECT is not supported by a reverse proxy")
        if req.version not in ("1.1", "1.0"):
            raise Reject(505, f"HTTP/{req.version} is not supported")
        if req.url[:1] != b"/" and req.url != b"*":
            _to_origin_form(req)
        if req.version == "1.1" and req.host is None:
            raise Reject(400, "missing Host header")
        if req.chunked and req.version == "1.0":
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        if req.content_length is not None and req.content_length > self._max_body:
            raise Reject(413, "request body too large")
        if self._connection_values:
            req.connection_tokens = list(h1.connection_tokens(self._connection_values))
        if parser.should_upgrade():
            req.upgrade = self._upgrade_value
        if req.chunked or (req.content_length or 0) > 0:
            req.body = Body(self._pause_body, self._resume_body)
        if self._active is None and not self._queue:
            self._start(req)
        else:
            self._queue.append(req)
            if len(self._queue) >= self.rt.config.limits.max_pipelined:
                self._pause("pipeline")

    def on_body(self, body: bytes) -> None:
        req = self._req
        assert req is not None and req.body is not None
        if req.body.received + len(body) > self._max_body:
            raise Reject(413, "request body too large")
        req.body.feed(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        if req.body is not None:
            req.body.finish()
        if req.upgrade is None:
            self._req = None

    # -- exchanges ------------------------------------------------------------
    def _start(self, req: Request) -> None:
        if self.closed:
            return  # an earlier exchange closed the connection; the rest is not answered
        if req.expect_continue and req.body is not None and not req.body.complete:
            self.write(CONTINUE)
        self._active = ex = Exchange(self.rt, self, req)
        ex.start()  # may finish (and call finished) before it returns

    def finished(self, ex: Exchange, reusable: bool) -> None:
        """Called by the exchange when its response is fully written (or failed)."""
        self._active = None
        if self.tunnel is None:
            self.upstream = None  # a tunnel keeps it: for backpressure and its idle clock
        self.last_activity = self.loop.time()
        body = ex.req.body
        if body is not None and not body.complete:
            reusable = False  # the rest of the request body is still on the wire
        if not reusable or self.transport is None or self.tunnel is not None:
            if self.tunnel is None:
                self.close()
            return
        if self._queue:
            # Not now: this may run inside the upstream's parser callback, and the next
            # request could take that same connection while the parser still reads it.
            self.loop.call_soon(self._start_next)
        elif self._fatal is not None:
            self.write(self._fatal)
            self.close()
        elif self.rt.draining and self._req is None:
            self.close()

    def _start_next(self) -> None:
        """The next pipelined request, once the previous exchange has finished."""
        if self._active is not None or not self._queue or self.closed:
            return
        self._start(self._queue.popleft())
        if len(self._queue) < self.rt.config.limits.max_pipelined:
            self._resume("pipeline")

    def fail(self, status: int, cause: str) -> None:
        """Reject the request being parsed: answer after earlier ones, then close."""
        req, self._req = self._req, None
        if req is not None and req.body is not None:
            req.body.abort()
        self._pause("fatal")
        active = self._active
        if active is not None and active.req is req:
            # Already being forwarded (e.g. its body grew past the limit): the
            # exchange answers, or cuts the response, and the connection closes.
            self._fatal = b""
            active.abort(ProxyError(status, "client", cause))
            return
        self._fatal = h1.error_response(status, cause)
        if self._active is None and not self._queue:
            self.write(self._fatal)
            self.close()

    # -- I/O helpers ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection (the client sees a truncated response, never a clean one)."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def take_upgrade_tail(self) -> bytes:
        tail, self._upgrade_tail = self._upgrade_tail, b""
        return tail

    def _pause(self, reason: str) -> None:
        if not self._paused_for and self.transport is not None:
            self.transport.pause_reading()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _pause_body(self) -> None:
        self._pause("body")

    def _resume_body(self) -> None:
        self._resume("body")

    # -- deadlines (called by the sweeper) ------------------------------------
    def check(self, now: float) -> None:
        active = self._active
        if active is not None:
            active.check(now)  # the exchange's own deadlines (first byte, idle, total)
        t = self.rt.config.timeouts
        if self.tunnel is not None:
            up = self.upstream
            last = max(self.last_activity, up.last_activity if up is not None else 0.0)
            if t.idle and now - last > t.idle:
                self.close()
        elif self._in_headers and self._req is not None:
            if t.client_header and now - self._req.arrival > t.client_header:
                self.fail(408, "request headers not received in time")
        elif self._active is None and self._req is None and not self._queue and (
                self.rt.draining or (t.client_idle and now - self.last_activity > t.client_idle)):
            self.close()


def _to_origin_form(req: Request) -> None:
    """``GET http://host/path`` -> ``GET /path`` with Host = host (RFC 9112 3.2.2), so the
    backend cannot see a Host that disagrees with the target veer routed."""
    scheme, sep, rest = req.url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise Reject(400, "request target must be origin-form or absolute-form")
    authority, slash, path = rest.partition(b"/")
    if not authority or b"@" in authority:
        raise Reject(400, "bad authority in request target")
    req.url = b"/" + path if slash else b"/"
    req.host = authority
    req.headers = [(n, v) for n, v in req.headers if n.lower() != b"host"]
    req.headers.append((b"Host", authority))
