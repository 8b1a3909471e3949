"""One request's exchange: route it, take an upstream connection, stream both ways.

The route is decided once, at arrival. The request head is rebuilt with
hop-by-hop headers removed and X-Forwarded-* set; the response head is
rebuilt with veer's own status line and framing. Small bodies travel in one
write; large or chunked ones stream with backpressure in both directions.
Connections come from ``proxy.upstream.acquire`` (reuse, connect, retry, failover). A
reused connection that closed before answering is replayed on another only for
an idempotent request without a body (RFC 9112 9.3.1): a POST, or any request
whose body went out, is never sent twice. Nothing is retried once the response
has started.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from proxy.http.fairness import ClientSlot
from proxy.http.heads import interim_head, request_head, response_head
from proxy.http.mirror import Shadow
from proxy.http.plane import DataPlane, Snapshot
from proxy.http.request import Request
from proxy.routing.router import Decision
from proxy.routing.variant import ORIGINAL, Variant
from proxy.upstream.acquire import acquire
from proxy.upstream.connection import Headers, UpstreamConnection, UpstreamProtocolError
from proxy.upstream.endpoint import Endpoint
from proxy.wire import h1
from proxy.wire.errors import COUNTED_AT_END, ProxyError

SMALL_BODY = 64 * 1024
_VARIANT_HEADER = {v: b"x-veer-variant: %s\r\n" % v.encode() for v in ("original", "new")}


class ClientSide(Protocol):
    """What an exchange needs of the client connection it answers."""

    slot: ClientSlot  # the client address's counters
    peer_ip: str
    peer_ip_bytes: bytes
    proto: bytes  # b"http" or b"https": the client connection's scheme
    last_activity: float
    upstream: UpstreamConnection | None  # the client's backpressure pauses its reading
    closed: bool

    def write(self, data: bytes) -> None: ...
    def writelines(self, data: list[bytes]) -> None: ...
    def abort(self) -> None: ...
    def take_upgrade_tail(self) -> bytes: ...

    def tunnel_to(self, upstream: asyncio.Transport) -> asyncio.Transport | None:
        """Pipe raw bytes to ``upstream`` from now on; the client's transport."""
        ...

    def finished(self, exchange: Exchange, reusable: bool) -> None:
        """The response is fully written (or failed)."""
        ...


# Phases, for the deadline check.
_CONNECTING, _SENDING, _WAITING, _RECEIVING, _DONE = range(5)


class Exchange:
    """Forwards one request and its response; also the upstream's ``ResponseSink``.

    The common case, a request without a body and an idle pooled connection, runs
    entirely in callbacks: ``start`` writes the request and the upstream's parser
    callbacks answer and conclude it, with no task or future per request (the profile
    had that machinery at 16% of CPU). Anything that must wait (a connect, a body to
    stream, a replay) runs as a task that awaits ``_waiter``; both ways end in
    ``_settle`` and then ``_conclude``.
    """

    __slots__ = (
        "_counters",
        "_error",
        "_first",
        "_out",
        "_settled",
        "_shadow",
        "_slot",
        "_stale",
        "_waiter",
        "bytes_sent",
        "chunked",
        "client",
        "close_client",
        "conn",
        "decision",
        "endpoint",
        "failed",
        "phase",
        "req",
        "resp_close_delimited",
        "response_started",
        "rt",
        "sent_at",
        "snap",
        "status",
        "upstream_keep_alive",
        "variant",
    )

    def __init__(self, rt: DataPlane, snap: Snapshot, client: ClientSide, req: Request) -> None:
        self.rt = rt
        # Of the request's arrival, to its end: its routing, limits and timeouts. Endpoints
        # and their health are always the current pools' (a reload may have removed some).
        self.snap = snap
        self.client = client
        self.req = req
        self.conn: UpstreamConnection | None = None
        self.endpoint: Endpoint | None = None  # the last one this request went to
        self.bytes_sent = 0  # response body bytes towards the client
        self.variant: Variant = ORIGINAL
        self.decision: Decision | None = None
        self.phase = _CONNECTING
        self.response_started = False
        self.chunked = False
        self.close_client = False
        self.resp_close_delimited = False
        self.upstream_keep_alive = True
        self.failed = False  # the upstream failed after the response began
        self.status = 0
        self.sent_at = 0.0
        self._out: list[bytes] = []
        self._settled = False  # the outcome is known (or, with _stale, a replay is due)
        self._stale = False
        self._error: ProxyError | None = None  # answered by veer at the end
        self._waiter: asyncio.Future[None] | None = None  # only when running as a task
        self._first: Endpoint | None = None  # picked by start, for acquire to connect
        self._shadow: Shadow | None = None  # the copy going to new, when mirrored

    # -- the exchange ---------------------------------------------------------
    def start(self) -> None:
        """Route the request and forward it (see the class docstring)."""
        rt, snap, req = self.rt, self.snap, self.req
        decision = req.decision
        assert decision is not None  # routed by the inbound side at arrival
        self.decision = decision
        self.variant = variant = decision.variant
        self._counters = counters = rt.recorder.variants[variant]
        counters.in_flight += 1
        rt.upstream_in_flight += 1
        self._slot = slot = self.client.slot
        slot.in_flight += 1
        if rt.upstream_in_flight > snap.limits.max_concurrent_upstream:
            self._settle(ProxyError("overload", "too many concurrent upstream requests"))
            return
        if rt.live.mirror_bp and variant == ORIGINAL:
            client = self.client
            self._shadow = rt.mirror.offer(req, client.peer_ip_bytes, client.proto)
        if req.body is None:
            pools = rt.snapshot.pools  # the current pools: a removed endpoint gets nothing new
            ep = pools.balancers[variant].pick(rt.loop.time())
            if ep is not None:
                conn = pools.idle[ep].take()
                if conn is not None:
                    self._bind(conn, variant)
                    self.sent_at = rt.loop.time()
                    self.phase = _WAITING
                    conn.write(request_head(req, self.client.peer_ip_bytes,
                                            ep.authority, self.client.proto))
                    return
                self._first = ep
        self._waiter = rt.loop.create_future()
        rt.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._forward()
        except ProxyError as err:  # no upstream connection could be had
            if not self._settled:
                self._settled, self._error = True, err
        finally:
            self._conclude()

    async def _forward(self) -> None:
        while True:
            conn, variant = await acquire(self.rt.snapshot.pools, self.variant, self.rt.loop,
                                          self.rt.read_buffer, self.rt.recorder, self._first)
            self._first = None
            self._bind(conn, variant)
            if self._settled:  # the client left or was rejected while we connected
                self._release(conn, keep=False)
                return
            head = request_head(self.req, self.client.peer_ip_bytes, conn.endpoint.authority,
                                self.client.proto)
            await self._send(conn, head)
            assert self._waiter is not None
            await self._waiter
            if not self._stale:
                return
            self._settled = self._stale = False
            self._waiter = self.rt.loop.create_future()

    def _settle(self, err: ProxyError | None = None, stale: bool = False) -> None:
        """The outcome is known: wake the task, or conclude here when there is none.
        ``stale`` means a reused connection died unused and the request must go again."""
        waiter = self._waiter
        if stale and waiter is None:  # a replay may need a new connection: go on as a task
            self._waiter = self.rt.loop.create_future()
            self.rt.loop.create_task(self._run())
            return
        self._settled, self._error, self._stale = True, err, stale
        if waiter is None:
            self._conclude()
        elif not waiter.done():
            waiter.set_result(None)

    def _conclude(self) -> None:
        """Answer a failure, record, and hand the client connection back (once)."""
        if self.phase == _DONE:
            return
        self.phase = _DONE
        if self._error is not None:
            self._fail(self._error)
        rt = self.rt
        self._counters.in_flight -= 1
        rt.upstream_in_flight -= 1
        self._slot.in_flight -= 1
        self._record()
        self.client.finished(self, not self.close_client)

    def _bind(self, conn: UpstreamConnection, variant: Variant) -> None:
        self.variant = variant
        self.conn = conn
        self.endpoint = conn.endpoint
        conn.endpoint.outstanding += 1
        conn.endpoint.total += 1
        conn.start(self, self.req.method == b"HEAD")
        self.client.upstream = conn

    async def _send(self, conn: UpstreamConnection, head: bytes) -> None:
        body = self.req.body
        self.phase = _SENDING
        if body is None:
            conn.write(head)
        elif body.complete and body.buffered <= SMALL_BODY and not body.consumed:
            whole = body.take_all()  # marks the body consumed: it is never sent twice
            conn.write(head + (h1.chunk(whole) + h1.LAST_CHUNK if self.req.chunked else whole))
            shadow = self._shadow
            if shadow is not None:
                shadow.feed(whole)
                shadow.body_done()
        else:
            conn.write(head)
            shadow = self._shadow
            while not self._settled:
                data = await body.read()
                if data is None:
                    if body.aborted:
                        conn.abort()
                    else:
                        if self.req.chunked:
                            conn.write(h1.LAST_CHUNK)
                        if shadow is not None:
                            shadow.body_done()
                    break
                if conn.closed:
                    break  # the upstream went away; its loss is reported by on_lost
                conn.write(h1.chunk(data) if self.req.chunked else data)
                if shadow is not None:
                    shadow.feed(data)
                await conn.drain()
        if self.phase == _SENDING:
            self.phase = _WAITING
            self.sent_at = self.rt.loop.time()

    # -- ResponseSink ---------------------------------------------------------
    def on_interim(self, status: int, headers: Headers) -> None:
        """A 1xx before the answer: 103 Early Hints (and 102) go on to an HTTP/1.1 client;
        100 does not (veer answers Expect itself)."""
        if status != 100 and self.req.version == "1.1" and not self.response_started:
            self._out.append(interim_head(status, headers))

    def on_head(self, status: int, headers: Headers, keep_alive: bool) -> None:
        req = self.req
        if status == 101 and req.upgrade is None:
            return  # refused in on_upgraded
        self.phase = _RECEIVING
        self.status = status
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        extra = _VARIANT_HEADER[self.variant]
        decision = self.decision
        if decision is not None and decision.set_cookie is not None:
            cfg = self.snap.config.routing
            extra += b"set-cookie: %s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax\r\n" % (
                cfg.cookie_name.encode(), decision.set_cookie.encode(), cfg.cookie_max_age)
        close = self.close_client or not req.keep_alive or self.rt.draining
        resp = response_head(status, headers, req, extra, close)
        if resp.metrics is not None and decision is not None and self.rt.outcomes.active:
            self.rt.outcomes.header(self.variant, decision.user, resp.metrics)
        self.chunked = resp.chunked
        self.resp_close_delimited = resp.upstream_close_delimited
        self.close_client = resp.close_client
        self._out.append(resp.head)

    def on_body(self, data: bytes) -> None:
        n = len(data)
        self.bytes_sent += n
        self.rt.recorder.variants[self.variant].bytes_out += n
        self._out.append(h1.chunk(data) if self.chunked else data)

    def on_end(self) -> None:
        if self.chunked:
            self._out.append(h1.LAST_CHUNK)
        conn = self.conn
        if conn is not None and not self._settled:
            self.flush()
            keep = (self.upstream_keep_alive and not self.resp_close_delimited
                    and self._upstream_reusable())
            self._release(conn, keep)
            self._settle()

    def flush(self) -> None:
        if self._out:
            self.client.writelines(self._out)
            self._out = []

    def on_upgraded(self, tail: bytes) -> None:
        conn, client = self.conn, self.client
        if conn is None or conn.transport is None:
            return
        if self.req.upgrade is None:
            # A 101 nobody asked for would turn the connection into a blind tunnel
            # (a known smuggling trick): treat it as a protocol error.
            conn.abort()
            return
        client_transport = client.tunnel_to(conn.transport)
        if client_transport is None:
            return
        conn.tunnel = client_transport
        if tail:
            client.write(tail)
        early = client.take_upgrade_tail()
        if early:
            conn.write(early)
        self.close_client = True
        if not self._settled:
            self._settle()

    def on_lost(self, exc: BaseException | None) -> None:
        conn = self.conn
        if self._settled or conn is None:
            return
        if self.resp_close_delimited and exc is None:
            self.on_end()  # a close-delimited body ends at a clean EOF
            return
        self.flush()
        self.conn = None
        conn.endpoint.outstanding -= 1
        kind = "protocol" if isinstance(exc, UpstreamProtocolError) else "reset"
        if not self.response_started and conn.served > 1 and self._replayable():
            self._settle(stale=True)
            return
        self._unhealthy(conn)
        if self.response_started:
            self.failed = True
            self.rt.recorder.variants[self.variant].errors[kind] += 1
            self.client.abort()
            self.close_client = True
            self._settle()
        else:
            self._settle(ProxyError(kind, f"upstream closed the connection "
                                               f"before responding ({self.variant})"))

    # -- endings --------------------------------------------------------------
    def check(self, now: float) -> None:
        """Deadlines, checked by the client connection's sweep (one registration per
        connection, not a set insert and removal per request)."""
        t = self.snap.timeouts
        kind = ""
        if self.phase == _WAITING and t.first_byte and now - self.sent_at > t.first_byte:
            kind = "no response within the first-byte timeout"
        elif self.phase == _SENDING and t.idle and now - self.client.last_activity > t.idle:
            # The client stopped sending its body: its fault (408), not the upstream's.
            self.abort(ProxyError("client", "request body not received in time", 408))
            return
        elif self.phase == _RECEIVING and t.idle and self.conn is not None \
                and now - self.conn.last_activity > t.idle \
                and not self.conn.reading_paused:  # a slow reader is the client's wait
            kind = "upstream idle timeout"
        elif self.phase != _DONE and t.total and now - self.req.arrival > t.total:
            kind = "total timeout"
        if kind:
            self.abort(ProxyError("timeout", f"{kind} ({self.variant})"))

    def client_lost(self) -> None:
        """The client went away: stop the upstream side too."""
        self.abort(None)

    def abort(self, err: ProxyError | None) -> None:
        """End the exchange now: cut the upstream; answer ``err`` if the response has not
        started, else cut the client too (a truncated response, never a clean short one)."""
        if self._settled and not self._stale:
            return
        self._stale = False  # a replay that was due will not happen
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.endpoint.outstanding -= 1
            conn.sink = None
            conn.abort()
            if err is not None and err.kind == "timeout":
                self._unhealthy(conn)
        self.close_client = True
        body = self.req.body
        if body is not None and not body.complete:
            body.abort()  # wake a send loop waiting for body bytes that will not come
        if err is not None and not self.response_started:
            self._settle(err)
            return
        if err is not None and err.kind in COUNTED_AT_END:
            self.failed = True
            self.rt.recorder.variants[self.variant].errors[err.kind] += 1
        self.flush()
        self.client.abort()
        self._settle()

    def _fail(self, err: ProxyError) -> None:
        self.status = err.status
        if err.kind in COUNTED_AT_END:  # connect and no_healthy are counted where they happen
            self.rt.recorder.variants[self.variant].errors[err.kind] += 1
        self.close_client = True
        head = self.req.method == b"HEAD"
        self.bytes_sent = 0 if head else len(h1.error_body(err.cause))
        self.client.write(h1.error_response(err.status, err.cause,
                                            extra=_VARIANT_HEADER[self.variant], head=head))

    def _unhealthy(self, conn: UpstreamConnection) -> None:
        """A reset, a protocol error or a timeout counts against the endpoint's health."""
        balancer = self.rt.snapshot.pools.balancers[self.variant]
        balancer.report_failure(conn.endpoint, self.rt.loop.time())

    def _release(self, conn: UpstreamConnection, keep: bool) -> None:
        self.conn = None
        conn.endpoint.outstanding -= 1
        balancer = self.rt.snapshot.pools.balancers[self.variant]
        if self.status >= 500:
            balancer.report_failure(conn.endpoint, self.rt.loop.time())
        else:
            balancer.report_success(conn.endpoint)
        conn.release(keep, self.rt.snapshot.pools.max_idle)

    def _upstream_reusable(self) -> bool:
        body = self.req.body
        return self.phase == _RECEIVING and (body is None or (body.complete and not body.aborted
                                                              and body.buffered == 0))

    def _replayable(self) -> bool:
        """Only an idempotent request with no body may go again on a fresh connection: the
        backend may have acted on what it read before closing (RFC 9112 9.3.1)."""
        return self.req.body is None and self.req.method in h1.IDEMPOTENT

    def _record(self) -> None:
        """Latency is arrival at veer to the end of the response (or of the failure)."""
        rt = self.rt
        outcomes, access, shadow = rt.outcomes, rt.access_log, self._shadow
        if not self.snap.recording and not outcomes.active and access is None \
                and shadow is None:
            return
        now = time.monotonic()  # the clock req.arrival was read from (see inbound)
        req = self.req
        latency_us = int((now - req.arrival) * 1_000_000)
        status = self.status if 100 <= self.status < 600 else 0
        if access is not None:
            ep, err = self.endpoint, self._error
            access.add((req.arrival, req.method, req.url, req.version, status, self.variant,
                        latency_us, self.bytes_sent,
                        ep.label if ep is not None else err.upstream if err is not None else None,
                        self.client.peer_ip, req.headers, err.kind if err is not None else None))
        if shadow is not None:
            shadow.original_done(status, latency_us, self.failed or status >= 500 or status == 0)
        if outcomes.active and self.decision is not None:
            outcomes.request(self.variant, self.decision.user, latency_us,
                             self.failed or status >= 500 or status == 0)
        if not self.snap.recording:
            return
        c = self.rt.recorder.variants[self.variant]
        c.record(status, latency_us, self.failed, now)
        body = self.req.body
        if body is not None:
            c.bytes_in += body.received
