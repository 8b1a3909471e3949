"""Mirroring: copies of a share of original's requests sent to new, answers judged, discarded.

The client's request goes to original as always; a ``Shadow`` is a copy of it
(head, and the body as the exchange sends it, up to ``mirror.max_body``) that
goes to new on a connection of its own once the body is complete. Nothing of
the copy ever reaches the client, and nothing the client waits for waits for
the copy: the exchange only hands it references to the body chunks it sends
anyway. At most ``mirror.queue`` copies are in flight; beyond that a copy is
dropped and counted. A copy never fails over, never retries, and carries
``x-veer-shadow: 1`` so the backend can tell it from a user's request.

When both answers are in, the shadow's (status, latency from its send) goes
into the ``shadow`` series and original's answer to the same request into
``paired``; a different status counts as a mismatch. Those are the series a
shadow phase's gates judge, so a release is judged before any user is routed
to it. A copy whose original did not complete (the client left) is recorded
nowhere.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from proxy.config.model import Config
from proxy.http.heads import request_head
from proxy.http.request import Request
from proxy.routing.live import LiveState
from proxy.routing.variant import NEW, PAIRED, SHADOW
from proxy.telemetry.recorder import Recorder
from proxy.upstream.connection import Headers, ReadBuffer, UpstreamConnection, connect
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.pools import Pools
from proxy.wire import h1

SHADOW_HEADER = b"x-veer-shadow: 1\r\n"


class _Snapshot(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def pools(self) -> Pools: ...
    @property
    def recording(self) -> bool: ...


class Plane(Protocol):
    """What the mirror needs of the data plane (``proxy.http.plane.DataPlane``)."""

    loop: asyncio.AbstractEventLoop
    live: LiveState
    recorder: Recorder
    read_buffer: ReadBuffer

    @property
    def snapshot(self) -> _Snapshot: ...


class Mirror:
    """One process's copies in flight, and the choice of which requests are copied."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.in_flight: set[Shadow] = set()
        self._credit = 0  # basis points accumulated: a copy each time it passes 10000
        self.sent = 0

    def offer(self, req: Request, peer_ip: bytes, proto: bytes) -> Shadow | None:
        """A copy of ``req`` if this request is one of the mirrored share (an exact share,
        spread evenly: every 10000 / mirror_bp-th request), its method is mirrored and its
        body can fit; else None."""
        cfg = self.plane.snapshot.config.mirror
        if req.method.decode("latin-1") not in cfg.methods or req.upgrade is not None:
            return None  # (an Upgrade would open a real tunnel on new)
        if req.content_length is not None and req.content_length > cfg.max_body:
            return None
        # The share is of the requests that can be mirrored: others spend none of it.
        self._credit += self.plane.live.mirror_bp
        if self._credit < 10000:
            return None
        self._credit -= 10000
        return Shadow(self, req, peer_ip, proto, req.body is None)

    def check(self, now: float) -> None:
        """Cut copies past ``mirror.timeout`` (the data plane's sweeper calls this)."""
        limit = self.plane.snapshot.config.mirror.timeout
        for shadow in [s for s in self.in_flight if now - s.sent_at > limit]:
            shadow.on_lost(TimeoutError("no complete answer within the mirror's timeout"))


class Shadow:
    """One copy: its body as it is sent to original, its answer, and original's."""

    __slots__ = ("_chunks", "_payload", "_size", "close_delimited", "conn", "done", "failed",
                 "head_only", "keep", "latency_s", "launched", "mirror", "orig", "peer_ip",
                 "proto", "req", "sent_at", "status", "void")

    def __init__(self, mirror: Mirror, req: Request, peer_ip: bytes, proto: bytes,
                 complete: bool) -> None:
        self.mirror = mirror
        self.req = req
        self.peer_ip = peer_ip
        self.proto = proto
        self.head_only = req.method == b"HEAD"
        self._chunks: list[bytes] | None = [] if not complete else None
        self._size = 0
        self.conn: UpstreamConnection | None = None
        self.launched = self.done = self.failed = False
        self.keep = True  # the copy's connection may be reused
        self.close_delimited = False  # the answer's body ends when new closes
        self._payload = b""  # what was written, for one resend after a stale connection
        self.void = False  # not sent, or its original never completed: recorded nowhere
        self.status = 0
        self.sent_at = self.latency_s = 0.0
        self.orig: tuple[int, int, bool] | None = None  # original's status, latency, failed
        if complete:
            self._launch()

    # -- fed by the exchange ------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """A body chunk the exchange sends to original (a reference, not a copy)."""
        chunks = self._chunks
        if chunks is None:
            return
        self._size += len(data)
        if self._size > self.mirror.plane.snapshot.config.mirror.max_body:
            self._chunks = None  # too large to copy: this request is not mirrored
            self.done = self.void = True
            return
        chunks.append(data)

    def body_done(self) -> None:
        """The whole body went to original: the copy can go."""
        if self._chunks is not None and not self.launched:
            self._launch()

    def original_done(self, status: int, latency_us: int, failed: bool) -> None:
        """Original's answer to the request (the exchange concluded)."""
        self.orig = (status, latency_us, failed)
        if status == 0:  # the client left before any answer: nothing to compare with
            self.void = True
        if not self.launched:
            self._chunks = None  # the body never completed: nothing to compare
            self.done = self.void = True
            return
        self._pair()

    # -- the copy's own exchange --------------------------------------------------------
    def _launch(self) -> None:
        self.launched = True
        mirror = self.mirror
        plane = mirror.plane
        if len(mirror.in_flight) >= plane.snapshot.config.mirror.queue:
            plane.recorder.variants[SHADOW].dropped += 1
            self.done = self.void = True
            self._chunks = None
            return
        mirror.in_flight.add(self)
        mirror.sent += 1
        self.sent_at = time.monotonic()
        pools = plane.snapshot.pools
        ep = pools.balancers[NEW].pick(plane.loop.time())
        if ep is None:
            self._finish(0, True)  # no endpoint of new to copy to: new fails this request
            return
        conn = pools.idle[ep].take()
        if conn is not None:
            self._write(conn)
        else:
            plane.loop.create_task(self._connect(ep))

    async def _connect(self, ep: Endpoint) -> None:
        plane = self.mirror.plane
        pools = plane.snapshot.pools
        try:
            conn = await connect(ep, pools.idle[ep], pools.connect_timeout, plane.read_buffer,
                                 pools.tls[NEW])
        except (OSError, TimeoutError):
            pools.balancers[NEW].report_failure(ep, plane.loop.time())
            self._finish(0, True)
            return
        if self.done:  # timed out while connecting
            conn.close()
            return
        self._write(conn)

    def _write(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.endpoint.outstanding += 1
        conn.start(self, self.head_only)
        req = self.req
        head = request_head(req, self.peer_ip, conn.endpoint.authority, self.proto)
        if not self._payload:
            body = b"".join(self._chunks or ())
            self._chunks = None
            if req.chunked:
                body = (h1.chunk(body) if body else b"") + h1.LAST_CHUNK
            self._payload = head[:-2] + SHADOW_HEADER + b"\r\n" + body
        conn.write(self._payload)

    # -- ResponseSink ---------------------------------------------------------------
    def on_interim(self, status: int, headers: Headers) -> None:
        return None

    def on_head(self, status: int, headers: Headers, keep_alive: bool) -> None:
        self.status = status
        self.keep = keep_alive
        # No length and not chunked: the body runs to the close (RFC 9112 6.3), a complete
        # answer when the connection then closes cleanly.
        framed = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers)
        self.close_delimited = not framed and not self.head_only and status not in (204, 304)

    def on_body(self, data: bytes) -> None:
        return None  # discarded: the copy's answer is judged by its status and time

    def on_end(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.endpoint.outstanding -= 1
            plane = self.mirror.plane
            balancer = plane.snapshot.pools.balancers[NEW]
            if self.status >= 500:
                balancer.report_failure(conn.endpoint, plane.loop.time())
            else:
                balancer.report_success(conn.endpoint)
            conn.release(self.keep, plane.snapshot.pools.max_idle)
        self._finish(self.status, self.status >= 500)

    def on_upgraded(self, tail: bytes) -> None:
        self.on_lost(None)  # a copy is never tunnelled

    def on_lost(self, exc: BaseException | None) -> None:
        if self.status and self.close_delimited and exc is None and self.conn is not None:
            self.keep = False
            self.on_end()  # a close-delimited body ends at a clean close
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.endpoint.outstanding -= 1
            conn.sink = None
            conn.abort()
            if (not self.status and conn.served > 1 and not self.done
                    and self.req.method in h1.IDEMPOTENT and not isinstance(exc, TimeoutError)):
                # A pooled connection new had closed as the copy arrived, unread (as the
                # exchange does for users): once more, on a fresh connection.
                self.mirror.plane.loop.create_task(self._connect(conn.endpoint))
                return
        self._finish(self.status, True)

    def flush(self) -> None:
        return None

    # -- the verdict ----------------------------------------------------------------
    def _finish(self, status: int, failed: bool) -> None:
        if self.done:
            return
        self.done = True
        self.status, self.failed = status, failed
        self.mirror.in_flight.discard(self)
        self.latency_s = time.monotonic() - self.sent_at
        self._pair()

    def _pair(self) -> None:
        """Record both answers, once both are in."""
        if not self.done or self.void or self.orig is None:
            return
        plane = self.mirror.plane
        if not plane.snapshot.recording:
            return
        status, latency_us, failed = self.orig
        now = time.monotonic()
        shadow = plane.recorder.variants[SHADOW]
        shadow.record(self.status, int(self.latency_s * 1_000_000), self.failed, now)
        plane.recorder.variants[PAIRED].record(status, latency_us, failed, now)
        if self.status != status:
            shadow.mismatches += 1
        self.orig = None  # recorded once
