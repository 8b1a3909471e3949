"""The client side: an asyncio protocol per connection, parsed by httptools (llhttp).

What veer checks on top of llhttp is ``proxy.http.head_rules``, and also here: header
size and count limits, the body limit and minimum pace, header names with
underscores dropped (a backend could read ``Content_Length`` as
``Content-Length``), and request trailers dropped, never merged into the
headers. A rejected request gets its 4xx and the connection closes; nothing of
it is forwarded.

Each request is routed when its head has arrived, so a pipelined request keeps
the decision of its arrival. Pipelined requests are answered in order, one
exchange at a time, with the queue bounded by ``limits.max_pipelined``.

An Upgrade is tunnelled only for the protocols in ``upgrades`` and only after
the backend's 101; until then what the client sends is held (bounded: reading
pauses). If the backend declines, the connection goes on as plain HTTP/1.1 with
a fresh parser, and what was held is parsed as the next requests. Any other
Upgrade (h2c) loses its Upgrade header and is served as a plain request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from typing import cast

import httptools

from proxy.http.exchange import Exchange
from proxy.http.head_rules import READ_BY_VEER, Reject, check_head, is_token, read_header, tunnels
from proxy.http.plane import DataPlane, Snapshot
from proxy.http.request import Body, Request
from proxy.upstream.connection import UpstreamConnection
from proxy.wire import h1
from proxy.wire.ends import ConnectionEnd
from proxy.wire.errors import ProxyError
from proxy.wire.flow import ReadGate

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NOT_FORWARDED = h1.REQUEST_NOT_FORWARDED
# Response bytes buffered for a client before veer stops reading its upstream.
WRITE_HIGH_WATER = 32 * 1024
# Held while an Upgrade request waits for the backend's answer; reading pauses beyond it.
UPGRADE_HOLD = 64 * 1024
class ClientConnection(ConnectionEnd):
    """One client connection: parses requests and runs their exchanges in order.

    An asyncio protocol by its methods, with no ``asyncio.Protocol`` base, so that mypyc
    compiles it natively (see ``UpstreamConnection``)."""

    def __init__(self, rt: DataPlane, proto: bytes = b"http") -> None:
        self.rt = rt
        self.proto = proto  # b"https" behind veer's TLS listener
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
        self._queue: deque[tuple[Request, Snapshot]] = deque()
        self._fatal: bytes | None = None  # error to send once earlier answers are out
        self._upgrade_tail = b""
        self._upgrading = False  # an Upgrade request is complete: hold what follows
        self._reading = ReadGate()
        self._header_count = 0
        self.write_paused_since = 0.0  # the client is not reading its response
        self.slot = rt.clients.join("")  # replaced at connection_made, with the address
        # The runtime's snapshot as each request's head begins: a reload applies to the
        # next request of every open connection, and never to half of one.
        self._snap = rt.snapshot
        self._limits = self._snap.limits
        self._captured_names: frozenset[bytes] = frozenset()

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self._reading.transport = self.transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.peer_ip_bytes = self.peer_ip.encode()
        self.rt.clients.leave(self.slot)
        self.slot = self.rt.clients.join(self.peer_ip)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # What veer holds for a client slow to read: beyond this, the upstream is not read.
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
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
        if self._upgrading:
            self._hold(data)  # after an Upgrade request, until the backend answers it
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            if self._upgrading:
                self._hold(rest)
            else:
                # An Upgrade veer does not tunnel (its header was removed): llhttp stops
                # after such a request anyway, so parse what follows with a fresh parser.
                self._parser = httptools.HttpRequestParser(self)
                if rest:
                    self.data_received(rest)
        except httptools.HttpParserInvalidMethodError:
            # A well-formed token llhttp does not know is "not implemented" (RFC 9110 9.1);
            # anything else is malformed. (In a pipelined read the first method is judged:
            # either way the request is refused and nothing of it is forwarded.)
            method = data.lstrip(b"\r\n").split(b" ", 1)[0]
            if method and is_token(method):
                self.fail(501, "request method not implemented")
            else:
                self.fail(400, "bad request method")
        except httptools.HttpParserError as exc:
            ctx = exc.__context__
            if isinstance(ctx, Reject):
                self.fail(ctx.status, ctx.cause)
            else:
                self.fail(400, f"bad request ({exc})")

    def eof_received(self) -> bool | None:
        return None  # close: connection_lost follows (uvloop's TLS layer calls this)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.rt.connections.discard(self)
        self.rt.sweeper.discard(self)
        self.rt.clients.leave(self.slot)
        if self.tunnel is not None:
            self.tunnel.close()
        if self._req is not None and self._req.body is not None and not self._req.body.complete:
            self._req.body.abort()
        if self._active is not None:
            self._active.client_lost()

    def pause_writing(self) -> None:
        self.write_paused_since = self.loop.time()
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_since = 0.0
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- httptools callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        # time.monotonic, not loop.time: uvloop's loop clock has millisecond steps (libuv's
        # uv_now), too coarse for latency. Both read CLOCK_MONOTONIC, so deadlines that
        # compare the two stay right to a millisecond.
        self._req = Request(time.monotonic())
        self._in_headers = True
        self._header_count = 0
        self._snap = snap = self.rt.snapshot
        self._limits = snap.limits
        self._captured_names = snap.router.header_names

    def on_url(self, url: bytes) -> None:
        req = self._req
        assert req is not None
        req.url += url
        req.header_bytes += len(url)
        if req.header_bytes > self._limits.max_header_bytes:
            raise Reject(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        req.header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        limits = self._limits
        if req.header_bytes > limits.max_header_bytes or self._header_count > limits.max_headers:
            raise Reject(431, "request headers too large")
        if not self._in_headers:
            return  # a trailer: never merged into the headers (routing has already run)
        lname = name.lower()
        if lname in READ_BY_VEER:
            read_header(req, lname, value)
        elif b"_" in lname:
            return  # normalised away: a backend might read it as a dash
        if lname in self._captured_names:
            old = req.captured.get(lname)
            req.captured[lname] = value if old is None else old + b"; " + value
        if lname not in NOT_FORWARDED:
            req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        self._in_headers = False
        parser = self._parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        check_head(req, self._limits.max_body_bytes)
        if parser.should_upgrade() and tunnels(req.upgrade_offer, self._snap.upgrades):
            req.upgrade = req.upgrade_offer
        if req.chunked or (req.content_length or 0) > 0:
            req.body = Body(self._pause_body, self._resume_body, self.loop.time())
        snap = self._snap
        router = snap.router
        req.decision = router.route(req.captured, req.query if router.needs_query else b"",
                                    self.peer_ip, self.rt.live)
        if self._active is None and not self._queue:
            self._start(req, snap)
        else:
            self._queue.append((req, snap))
            if len(self._queue) >= snap.limits.max_pipelined:
                self._pause("pipeline")

    def on_body(self, body: bytes) -> None:
        req = self._req
        assert req is not None and req.body is not None
        if req.body.received + len(body) > self._limits.max_body_bytes:
            raise Reject(413, "request body too large")
        req.body.feed(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        if req.body is not None:
            req.body.finish()
        if req.upgrade is None:
            self._req = None
        else:
            self._upgrading = True

    # -- exchanges ------------------------------------------------------------
    def _hold(self, data: bytes) -> None:
        """Keep bytes that follow an Upgrade request until the backend has answered it."""
        self._upgrade_tail += data
        if len(self._upgrade_tail) > UPGRADE_HOLD:
            self._pause("upgrade")

    def _start(self, req: Request, snap: Snapshot) -> None:
        if self.closed:
            return  # an earlier exchange closed the connection; the rest is not answered
        limit = snap.limits.max_concurrent_per_client
        if limit and self.slot.in_flight >= limit:
            # One address holds its share of the capacity already: refused before it is
            # routed, so it counts against no variant (a flood cannot trigger a rollback).
            self.slot.refused += 1
            self.rt.clients.refused += 1
            cause = "too many concurrent requests from this client"
            self._log_refused(req, 503, cause)
            self.write(h1.error_response(503, cause, head=req.method == b"HEAD"))
            self.close()
            return
        if (req.expect_continue and req.version == "1.1" and req.body is not None
                and not req.body.complete):
            self.write(CONTINUE)  # an HTTP/1.0 client does not know 100 (RFC 9110 15.2)
        self._active = ex = Exchange(self.rt, snap, self, req)
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
        if self._upgrading and ex.req.upgrade is not None:
            # The backend declined the Upgrade: plain HTTP/1.1 from here, parsed afresh
            # (later, not inside the upstream's parser callback, as for pipelining).
            self.loop.call_soon(self._after_declined_upgrade)
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

    def _after_declined_upgrade(self) -> None:
        if self.closed or not self._upgrading:
            return
        self._upgrading = False
        self._req = None
        self._parser = httptools.HttpRequestParser(self)
        held = self.take_upgrade_tail()
        self._resume("upgrade")
        if held:
            self.data_received(held)
        elif self.rt.draining:
            self.close()

    def _start_next(self) -> None:
        """The next pipelined request, once the previous exchange has finished."""
        if self._active is not None or not self._queue or self.closed:
            return
        req, snap = self._queue.popleft()
        self._start(req, snap)
        if len(self._queue) < snap.limits.max_pipelined:
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
            active.abort(ProxyError("client", cause, status))
            return
        self._log_refused(req, status, cause)
        self._fatal = h1.error_response(status, cause,
                                        head=req is not None and req.method == b"HEAD")
        if self._active is None and not self._queue:
            self.write(self._fatal)
            self.close()

    def _log_refused(self, req: Request | None, status: int, cause: str) -> None:
        """An access-log line for a request veer answered without routing it."""
        access = self.rt.access_log
        if access is None:
            return
        now = time.monotonic()
        head = req is not None and req.method == b"HEAD"
        if req is None:
            req = Request(now)  # broken before its method was read
        access.add((req.arrival, req.method, req.url, req.version, status, None,
                    int((now - req.arrival) * 1_000_000), 0 if head else len(h1.error_body(cause)),
                    None, self.peer_ip, req.headers, "client"))

    # -- I/O helpers ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(data)

    def take_upgrade_tail(self) -> bytes:
        """What the client sent after its Upgrade request, for the tunnel."""
        tail, self._upgrade_tail = self._upgrade_tail, b""
        return tail

    def tunnel_to(self, upstream: asyncio.Transport) -> asyncio.Transport | None:
        """From now on the client's bytes go to ``upstream`` as they come."""
        if self.transport is not None:
            self.tunnel = upstream
        return self.transport

    def _pause(self, reason: str) -> None:
        self._reading.pause(reason)

    def _resume(self, reason: str) -> None:
        self._reading.resume(reason, self.closed)

    def _pause_body(self) -> None:
        self._pause("body")

    def _resume_body(self) -> None:
        self._resume("body")

    # -- deadlines (called by the sweeper) ------------------------------------
    def check(self, now: float) -> None:
        active = self._active
        if active is not None:
            active.check(now)  # the exchange's own deadlines (first byte, idle, total)
        rt = self.rt
        snap = rt.snapshot  # the current one: a reload's timeouts apply to waiting connections
        t = snap.timeouts
        if self.write_paused_since and t.client_write \
                and now - self.write_paused_since > t.client_write:
            self.abort()  # not reading its response: cut (the exchange sees client_lost)
            return
        if self.tunnel is not None:
            up = self.upstream
            last = max(self.last_activity, up.last_activity if up is not None else 0.0)
            if t.idle and now - last > t.idle:
                self.close()
        elif self._in_headers and self._req is not None:
            if t.client_header and now - self._req.arrival > t.client_header:
                self.fail(408, "request headers not received in time")
        elif (self._req is not None and self._req.body is not None
              and self._req.body.too_slow(now, t.body_grace, snap.limits.min_body_rate)):
            self.fail(408, "request body arrived slower than limits.min_body_rate")
        elif self._active is None and self._req is None and not self._queue and (
                self.rt.draining or (t.client_idle and now - self.last_activity > t.client_idle)):
            self.close()
