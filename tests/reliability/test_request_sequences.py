"""Sequences of requests on one client connection, checked by h11 on both sides.

A property test sends 1..8 requests over one raw client connection to veer,
pipelined or one by one, with every body framing (none, Content-Length 0 and N,
chunked with 0..5 chunks, chunked with request trailers, Expect: 100-continue),
Upgrade requests, hop-by-hop headers, and every backend behaviour of
``recording_backend``. h11 parses what the backend receives and what the client
receives. The checks:

(a) the backend received exactly the requests veer answered (plus the one whose
    upstream failed), in order, each once (a replay only for an idempotent request
    without a body), with the client's end-to-end headers and body; request
    trailers never appear as headers, and h11 found nothing wrong in the bytes;
(b) the client got one final response per request, in order, each naming its
    own request, with no header from another exchange; a response whose upstream
    failed is a clean 502 or a cut connection, and nothing follows it;
(c) after a declined Upgrade the next request is answered within ``STALL`` (a second
    in the property: loopback answers take milliseconds, and a hang costs one
    ``STALL`` per example while Hypothesis shrinks).

The focused tests at the end pin defects one by one: five known ones (an empty chunked
body sent twice, response trailers leaking into the next response, a declined Upgrade
wedging the connection, request trailers forwarded as headers, a POST replayed), then
two the property found (a body on veer's own error answer to HEAD; a WebSocket Upgrade
pipelined behind another request never forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from proxy.config.load import from_dict
from proxy.runtime.server import ProxyServer
from tests.reliability.recording_backend import (
    BEHAVIOURS,
    Headers,
    ReceivedRequest,
    RecordingBackend,
    describe,
)

STALL = 2.0  # seconds without a byte from veer while an answer is due: "not answered"
PROPERTY_STALL = 1.0
HOST = b"veer.test"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})  # RFC 9110 9.2.2
FRAMINGS = ("none", "cl0", "cl", "chunked", "chunked-trailers")
FAULTY = frozenset({"truncate", "oversend", "drop"})  # the upstream misbehaves
REQUEST_TRAILERS: Headers = [(b"X-User-Id", b"admin"), (b"X-Req-Trailer", b"1")]
# Headers veer itself writes on the upstream request (framing, X-Forwarded-*, upgrade).
VEER_WRITES = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                         b"content-length", b"transfer-encoding", b"connection", b"upgrade"})
# Headers that exist only as response trailers or in the bogus extra response.
FOREIGN = frozenset({b"x-trailer", b"x-bogus"})
_EOF = ("peer closed connection without sending complete message body",
        "peer unexpectedly closed connection")


@dataclass(frozen=True)
class Spec:
    """One client request and how the backend is asked to answer it."""

    seq: int
    method: str = "GET"
    user: str = "u1"
    framing: str = "none"
    body: bytes = field(default=b"", repr=False)
    chunks: tuple[bytes, ...] = field(default=(), repr=False)  # chunked: joined == body
    expect: bool = False
    behave: str = "normal"
    upgrade: str | None = None
    pad: int = 0
    hop: bool = False  # Connection names x-hop; TE: trailers

    def brief(self) -> str:
        """The spec in one line, body as sizes (it is derived from seq and size)."""
        return f"{self!r}[body={len(self.body)}, chunks={[len(c) for c in self.chunks]}]"

    @property
    def target(self) -> bytes:
        return b"/r/%d?u=%s" % (self.seq, self.user.encode())

    @property
    def accepted_upgrade(self) -> bool:
        return self.behave == "upgrade" and self.upgrade == "websocket"

    @property
    def replayable(self) -> bool:
        """May be retried on a fresh connection: idempotent and no body byte sent."""
        return self.method in IDEMPOTENT and not self.body

    def end_to_end(self) -> Headers:
        """The client's end-to-end headers, as the backend must see them (in order)."""
        headers = [(b"host", HOST), (b"x-seq", b"%d" % self.seq),
                   (b"x-user-id", self.user.encode()), (b"x-behave", self.behave.encode())]
        if self.pad:
            headers.append((b"x-pad", b"%d" % self.pad))
        return [*headers, (b"x-custom", b"v-%d" % self.seq)]

    def events(self) -> list[h11.Event]:
        headers = list(self.end_to_end())
        tokens = [b"Upgrade"] if self.upgrade else []
        if self.hop:
            tokens.append(b"x-hop")
            headers += [(b"TE", b"trailers"), (b"x-hop", b"must-not-pass")]
        if tokens:
            headers.append((b"Connection", b", ".join(tokens)))
        if self.upgrade:
            headers.append((b"Upgrade", self.upgrade.encode()))
        if self.framing in ("cl0", "cl"):
            headers.append((b"Content-Length", b"%d" % len(self.body)))
        elif self.framing != "none":
            headers.append((b"Transfer-Encoding", b"chunked"))
        if self.expect:
            headers.append((b"Expect", b"100-continue"))
        events: list[h11.Event] = [h11.Request(method=self.method, target=self.target,
                                               headers=headers)]
        if self.framing == "cl" and self.body:
            events.append(h11.Data(data=self.body))
        elif self.framing.startswith("chunked"):
            events += [h11.Data(data=c) for c in self.chunks]
        trailers = REQUEST_TRAILERS if self.framing == "chunked-trailers" else []
        events.append(h11.EndOfMessage(headers=trailers))
        return events

    def wire(self) -> tuple[bytes, bytes]:
        """(head, body) bytes, serialised by h11."""
        conn = h11.Connection(h11.CLIENT)
        events = self.events()
        head = conn.send(events[0]) or b""
        return head, b"".join(conn.send(e) or b"" for e in events[1:])


@dataclass
class Outcome:
    """What the client got for one request."""

    kind: str  # response | interim | truncated | closed | timeout | invalid
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    interim: list[int] = field(default_factory=list)
    detail: str = ""

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


class Client:
    """A raw client connection; h11 (fed the same requests) parses the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stall: float = STALL) -> None:
        self.reader, self.writer, self.stall = reader, writer, stall
        self.h11 = h11.Connection(h11.CLIENT)
        self.eof = False
        self._writes: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, port: int, stall: float = STALL) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, stall)

    def send(self, data: bytes) -> None:
        """Write in the background, so that a big pipelined write never blocks reading."""
        async def write() -> None:
            with contextlib.suppress(ConnectionError):
                self.writer.write(data)
                await self.writer.drain()
        self._writes.append(asyncio.get_running_loop().create_task(write()))

    def expect(self, spec: Spec) -> None:
        """Tell the parser which request the next response answers."""
        for event in spec.events():
            self.h11.send(event)

    async def read_more(self) -> bytes | None:
        """The next bytes (b"" at the end), or None after ``stall`` seconds of silence."""
        if self.eof:
            return b""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), self.stall)
        except TimeoutError:
            return None
        except ConnectionError:
            data = b""
        self.eof = not data
        return data

    async def response(self, until_continue: bool = False) -> Outcome:
        """The next final response (or a 100 Continue before it, if asked)."""
        out = Outcome("timeout")
        body = bytearray()
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                cut = self.eof and str(exc).startswith(_EOF)
                out.kind = ("truncated" if out.status else "closed") if cut else "invalid"
                out.detail, out.body = str(exc), bytes(body)
                return out
            if event is h11.NEED_DATA:
                data = await self.read_more()
                if data is None:
                    out.body, out.detail = bytes(body), f"nothing from veer for {self.stall}s"
                    return out
                self.h11.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                out.interim.append(event.status_code)
                if event.status_code == 101:
                    out.kind, out.status, out.headers = "response", 101, list(event.headers)
                    return out
                if until_continue and event.status_code == 100:
                    out.kind = "interim"
                    return out
            elif isinstance(event, h11.Response):
                out.status, out.headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.kind, out.body = "response", bytes(body)
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return out
            else:  # ConnectionClosed or PAUSED
                out.kind, out.detail = "closed", repr(event)
                return out

    async def rest(self) -> tuple[bytes, bool]:
        """Whatever else arrives until the connection closes: (bytes, closed)."""
        data = bytearray(self.h11.trailing_data[0])
        while (more := await self.read_more()) is not None and more:
            data += more
        return bytes(data), self.eof

    async def close(self) -> None:
        for task in self._writes:
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@asynccontextmanager
async def running(new_weight: float = 50) -> AsyncIterator[tuple[ProxyServer, RecordingBackend]]:
    """A recording backend behind both pools of a fresh veer."""
    backend = await RecordingBackend().start()
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstreams": {"original": {"endpoints": [backend.url]},
                      "new": {"endpoints": [backend.url]}},
        "routing": {"salt": "sequences", "user_key": ["header:x-user-id"]},
        "weights": {"new": new_weight},
        "timeouts": {"connect": "1s", "first_byte": "5s"},
        "health": {"max_ejected_percent": 0},  # never eject: each example stands alone
    }
    server = ProxyServer(from_dict(cfg, "<test>"))
    try:
        await server.start()
        yield server, backend
    finally:
        await server.stop()
        await backend.close()


async def run_sequence(client: Client, specs: list[Spec], pipelined: bool) -> list[Outcome]:
    """Send ``specs`` and collect one outcome per request, stopping at the first that is
    not a clean 200 (after a 101, the tunnel is checked with an echo)."""
    if pipelined:
        client.send(b"".join(b"".join(s.wire()) for s in specs))
    outcomes: list[Outcome] = []
    for spec in specs:
        client.expect(spec)
        head, body = spec.wire()
        out: Outcome | None = None
        early: list[int] = []
        if not pipelined and spec.expect and (spec.body or spec.framing.startswith("chunked")):
            client.send(head)  # the body waits for veer's 100 Continue
            out = await client.response(until_continue=True)
            if out.kind == "interim":
                client.send(body)
                early, out = out.interim, None
            elif out.kind == "timeout":
                out.detail = "no 100 Continue for Expect: 100-continue"
        elif not pipelined:
            client.send(head + body)
        if out is None:
            out = await client.response()
            out.interim[:0] = early
        outcomes.append(out)
        if out.kind != "response" or out.status != 200:
            break
    last = outcomes[-1]
    if last.kind == "response" and last.status == 101:
        client.send(b"ping-%d\r\n" % specs[len(outcomes) - 1].seq)
        echoed = bytearray(client.h11.trailing_data[0])
        while len(echoed) < len(b"ping-%d\r\n" % specs[len(outcomes) - 1].seq):
            more = await client.read_more()
            if not more:
                break
            echoed += more
        last.body = bytes(echoed)  # the tunnel's echo, checked by the caller
    elif last.kind == "response" and last.status == 502:
        extra, closed = await client.rest()
        if extra or not closed:
            last.kind = "invalid"
            last.detail = f"bytes after veer's 502 (connection: close): {extra!r}, closed={closed}"
    return outcomes


def check_response(spec: Spec, out: Outcome) -> list[str]:
    """Problems with the client's outcome for ``spec``."""
    upgrade = f" upgrade={spec.upgrade}" if spec.upgrade else ""
    who = f"request {spec.seq} ({spec.method} {spec.framing} behave={spec.behave}{upgrade})"
    problems: list[str] = []
    leaked = [(n, v) for n, v in out.headers if n in FOREIGN or v == b"leaked=1"]
    if leaked:
        problems.append(f"{who}: headers from another exchange: {leaked}")
    if out.kind in ("timeout", "invalid"):
        return [*problems, f"{who}: {out.kind} ({out.detail}) interim={out.interim} "
                           f"status={out.status}"]
    if out.kind == "response" and out.status in (200, 101):
        if out.values(b"x-seq") != [b"%d" % spec.seq]:
            problems.append(f"{who}: answered by x-seq {out.values(b'x-seq')}")
        if (out.status == 101) != spec.accepted_upgrade:
            problems.append(f"{who}: status {out.status}, accepted upgrade "
                            f"{spec.accepted_upgrade}")
        if not set(out.interim) <= {100, 101, 103}:
            problems.append(f"{who}: interim responses {out.interim}")
        if out.status == 101:
            if out.body != b"ping-%d\r\n" % spec.seq:
                problems.append(f"{who}: the tunnel echoed {out.body!r}")
        elif spec.method == "HEAD":
            if out.body:
                problems.append(f"{who}: a HEAD response with a body {out.body[:80]!r}")
        else:
            got = json.loads(out.body)
            want = {"seq": str(spec.seq), "method": spec.method,
                    "target": spec.target.decode(), "len": describe(spec.body)[0],
                    "sha": describe(spec.body)[1], "pad": "p" * spec.pad}
            wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            if wrong:
                problems.append(f"{who}: response body disagrees (got, want): {wrong}")
    elif spec.behave not in FAULTY:
        problems.append(f"{who}: {out.kind} status={out.status} ({out.detail}) from a "
                        f"well-behaved upstream")
    elif out.kind == "response" and (out.status != 502 or out.values(b"x-seq")):
        problems.append(f"{who}: a failed upstream answered as {out.status} "
                        f"x-seq={out.values(b'x-seq')}")
    return problems


def check_received(spec: Spec, got: ReceivedRequest) -> list[str]:
    """Problems with how request ``spec`` reached the backend."""
    who = f"request {spec.seq} at the backend"
    problems = []
    if (got.method, got.target) != (spec.method.encode(), spec.target):
        problems.append(f"{who}: {got.method!r} {got.target!r}")
    passed = [(n, v) for n, v in got.headers if n not in VEER_WRITES]
    if passed != spec.end_to_end():
        problems.append(f"{who}: end-to-end headers {passed} != {spec.end_to_end()}")
    upgrade = [spec.upgrade.encode()] if spec.upgrade else []
    # veer tunnels only websocket; another Upgrade (h2c) may be removed and served as HTTP.
    if got.values(b"upgrade") not in ([upgrade] if spec.upgrade == "websocket" else [upgrade, []]):
        problems.append(f"{who}: upgrade {got.values(b'upgrade')}")
    if got.body != spec.body:
        problems.append(f"{who}: body {describe(got.body)} != {describe(spec.body)}")
    allowed = {(n.lower(), v) for n, v in REQUEST_TRAILERS}
    if not {(n, v) for n, v in got.trailers} <= allowed:
        problems.append(f"{who}: trailers {got.trailers}")
    return problems


def check_sequence(specs: list[Spec], outcomes: list[Outcome],
                   backend: RecordingBackend) -> None:
    """(a) and (b) of the module docstring, all problems at once."""
    problems = [p for spec, out in zip(specs, outcomes, strict=False)
                for p in check_response(spec, out)]
    answered = [o.kind == "response" and o.status in (200, 101) for o in outcomes]
    reached = len(outcomes) if not all(answered) else len(specs)
    if all(answered) and len(outcomes) < len(specs):
        problems.append(f"only {len(outcomes)} of {len(specs)} requests were answered")
    problems += [f"backend: h11 rejected what veer sent: {f}" for f in backend.failures]
    problems += [f"backend: a request cut short: {f}" for f in backend.incomplete]
    got = backend.requests
    j = 0
    for i, spec in enumerate(specs[:reached]):
        if j >= len(got):
            problems.append(f"request {spec.seq} never reached the backend")
            break
        problems += check_received(spec, got[j])
        j += 1
        failed = i == len(outcomes) - 1 and not answered[-1]
        if failed and spec.behave == "drop" and spec.replayable and j < len(got) \
                and got[j].header(b"x-seq") == b"%d" % spec.seq:
            j += 1  # one allowed replay of an idempotent request without a body
    if j < len(got):
        extra = [(r.method, r.header(b"x-seq"), r.conn) for r in got[j:]]
        problems.append(f"the backend received more requests than were sent once: {extra}")
    assert not problems, "\n".join(problems)


@st.composite
def specs_strategy(draw: st.DrawFn) -> list[Spec]:
    """1..8 requests; an accepted upgrade is the last (the connection is a tunnel then)."""
    count = draw(st.integers(1, 8))
    specs: list[Spec] = []
    for seq in range(1, count + 1):
        # One request in four asks for an Upgrade (a GET without a body).
        upgrade = draw(st.sampled_from([None, None, None, "websocket", "h2c"]))
        method = "GET" if upgrade else draw(st.sampled_from(METHODS))
        framing = "none" if upgrade else draw(st.sampled_from(FRAMINGS))
        size = 0 if framing in ("none", "cl0") else draw(st.one_of(
            st.sampled_from([0, 1, 2, 1024, 65535, 65536, 65537, 200 * 1024]),
            st.integers(0, 4096), st.integers(0, 200 * 1024)))
        seed = hashlib.sha256(b"%d-%d" % (seq, size)).digest()
        body = (seed * (size // 32 + 1))[:size]
        cuts = sorted(draw(st.lists(st.integers(0, size), max_size=4))) if size else []
        chunks = tuple(c for c in (body[a:b] for a, b in
                                   zip([0, *cuts], [*cuts, size], strict=True)) if c)
        spec = Spec(seq=seq, method=method, user=draw(st.sampled_from(["u1", "u2", "u3", "u4"])),
                    framing=framing, body=body, chunks=chunks,
                    expect=framing != "none" and draw(st.booleans()),
                    behave=draw(st.sampled_from(BEHAVIOURS)), upgrade=upgrade,
                    pad=draw(st.sampled_from([0, 0, 0, 1, 5000, 100_000])),
                    hop=draw(st.booleans()))
        specs.append(spec)
        if spec.accepted_upgrade:
            break
    return specs


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=specs_strategy(), pipelined=st.booleans())
async def test_request_sequences_on_one_connection(specs: list[Spec], pipelined: bool) -> None:
    note(f"pipelined={pipelined}\n" + "\n".join(s.brief() for s in specs))
    async with running(new_weight=50) as (server, backend):
        client = await Client.open(server.port, PROPERTY_STALL)
        try:
            outcomes = await run_sequence(client, specs, pipelined)
        finally:
            await client.close()
        check_sequence(specs, outcomes, backend)


# -- known defects, one by one ---------------------------------------------------------

async def one_connection(specs: list[Spec], pipelined: bool = False,
                         new_weight: float = 0) -> tuple[list[Outcome], RecordingBackend]:
    async with running(new_weight) as (server, backend):
        client = await Client.open(server.port)
        try:
            return await run_sequence(client, specs, pipelined), backend
        finally:
            await client.close()


def seqs(backend: RecordingBackend, where: Callable[[ReceivedRequest], bool] = bool) -> list[
        bytes | None]:
    return [r.header(b"x-seq") for r in backend.requests if where(r)]


async def test_empty_chunked_post_reaches_backend_as_one_empty_request() -> None:
    """``POST`` with body ``0\\r\\n\\r\\n``: one request, empty body, nothing after it."""
    outcomes, backend = await one_connection(
        [Spec(1, "POST", framing="chunked"), Spec(2, "GET")])
    assert backend.failures == [], "veer sent bytes after the empty chunked body"
    assert seqs(backend) == [b"1", b"2"] and backend.requests[0].body == b""
    assert [(o.kind, o.status) for o in outcomes] == [("response", 200)] * 2


async def test_response_trailers_do_not_become_headers_of_the_next_response() -> None:
    """Two clients, one pooled upstream connection: user A's response trailers
    (``set-cookie: leaked=1``) must not turn into headers of user B's response."""
    async with running(0) as (server, backend):
        got: list[Outcome] = []
        for spec in (Spec(1, user="alice", behave="trailers"), Spec(2, user="bob")):
            client = await Client.open(server.port)
            try:
                got += await run_sequence(client, [spec], pipelined=False)
            finally:
                await client.close()
        assert len(backend.raw) == 1, "precondition: both went over one upstream connection"
    assert [o.status for o in got] == [200, 200]
    assert got[1].values(b"x-seq") == [b"2"]
    assert got[1].values(b"set-cookie") == [] and got[1].values(b"x-trailer") == [], \
        f"bob's response carries alice's trailers: {got[1].headers}"


@pytest.mark.parametrize(("upgrade", "pipelined"), [("h2c", False), ("websocket", True)])
async def test_declined_upgrade_then_next_request_is_answered(upgrade: str,
                                                              pipelined: bool) -> None:
    """The backend answers an Upgrade request with a plain 200: the connection stays
    HTTP, and the next request on it is answered within ``STALL`` seconds."""
    outcomes, backend = await one_connection(
        [Spec(1, "GET", upgrade=upgrade), Spec(2, "GET")], pipelined=pipelined)
    assert outcomes[0].status == 200 and outcomes[0].values(b"x-seq") == [b"1"]
    assert len(outcomes) == 2 and outcomes[1].kind == "response", \
        f"the request after a declined upgrade: {outcomes[1].kind} after {STALL}s"
    assert outcomes[1].values(b"x-seq") == [b"2"] and seqs(backend) == [b"1", b"2"]


async def test_request_trailers_never_become_upstream_headers() -> None:
    """A chunked request's trailer ``X-User-Id: admin`` is not a header upstream."""
    spec = Spec(1, "POST", user="u1", framing="chunked-trailers", body=b"hello",
                chunks=(b"hel", b"lo"))
    outcomes, backend = await one_connection([spec])
    assert outcomes[0].status == 200
    (got,) = backend.requests
    assert got.values(b"x-user-id") == [b"u1"], f"upstream headers: {got.headers}"
    assert got.values(b"x-req-trailer") == []


@pytest.mark.parametrize("framing", ["cl", "none"])
async def test_post_is_not_replayed_when_pooled_connection_drops(framing: str) -> None:
    """The backend reads a POST on a pooled connection and closes without answering:
    veer must not send it again (RFC 9110 9.2.2); the client gets a 502."""
    body = b"pay=1" if framing == "cl" else b""
    outcomes, backend = await one_connection(
        [Spec(1, "GET"), Spec(2, "POST", framing=framing, body=body, behave="drop")])
    assert backend.requests[0].conn == backend.requests[1].conn, "precondition: pooled"
    assert seqs(backend, lambda r: r.method == b"POST") == [b"2"], \
        "the POST reached the backend more than once"
    assert [o.status for o in outcomes] == [200, 502]


# -- defects the property found ----------------------------------------------------------

async def test_veer_error_response_to_head_has_no_body() -> None:
    """A HEAD whose upstream fails gets veer's 502 without content (RFC 9110 9.3.2):
    a body after it would be read by the client as the start of the next response."""
    outcomes, _ = await one_connection([Spec(1, "HEAD", behave="drop")])
    (out,) = outcomes
    assert out.status == 502
    assert out.kind == "response", f"{out.kind}: {out.detail}"


@pytest.mark.parametrize("behave", ["normal", "upgrade"])
async def test_websocket_upgrade_pipelined_behind_another_request(behave: str) -> None:
    """A WebSocket Upgrade queued behind a request in flight is forwarded in its turn,
    then declined (200, the next request is answered) or accepted (101, a tunnel)."""
    specs = [Spec(1, "GET"), Spec(2, "GET", upgrade="websocket", behave=behave)]
    if behave == "normal":
        specs.append(Spec(3, "GET"))
    outcomes, backend = await one_connection(specs, pipelined=True)
    assert [(o.kind, o.status) for o in outcomes] == \
        [("response", 200), ("response", 200 if behave == "normal" else 101)] + \
        [("response", 200)] * (len(specs) - 2), \
        [(o.kind, o.status, o.detail) for o in outcomes]
    assert seqs(backend) == [b"%d" % s.seq for s in specs]
    if behave == "upgrade":
        assert outcomes[1].body == b"ping-2\r\n", "the tunnel did not echo"
