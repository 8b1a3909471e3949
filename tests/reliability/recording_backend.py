"""A recording HTTP/1.1 backend whose parser is h11, not ours.

Every byte veer sends is kept per connection and parsed by h11 into
``ReceivedRequest`` records (method, target, headers, body, trailers). A parse
error on bytes veer sent is a *failure*: veer put bad or ambiguous bytes on the
wire (for example a second ``0\\r\\n\\r\\n`` after a chunked body). A connection
veer closed in the middle of a request is recorded apart, as *incomplete*.

Each request is answered with a JSON body naming it: the client's ``x-seq``,
the method and target, and the length and SHA-256 of the body as received.
The request header ``x-behave`` picks how (see ``BEHAVIOURS``); ``x-pad: N``
adds N bytes of padding to the response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field

import h11

Headers = list[tuple[bytes, bytes]]

# How the backend answers, chosen per request by its ``x-behave`` header.
BEHAVIOURS: tuple[str, ...] = (
    "normal",       # 200 with content-length
    "chunked",      # 200, transfer-encoding: chunked, in several chunks
    "trailers",     # chunked, with trailers set-cookie: leaked=1 and x-trailer: t
    "early-hints",  # 103 Early Hints, then the normal 200
    "continue",     # an unsolicited 100 Continue, then the normal 200
    "close",        # the normal 200 with connection: close, then the connection closes
    "truncate",     # head with content-length, half the body, then close
    "oversend",     # the normal 200 and, in the same write, a bogus extra response; close
    "upgrade",      # 101 if the request asked for Upgrade: websocket (then echo), else 200
    "drop",         # read the whole request, then close without answering
)
# Response trailers of the "trailers" behaviour: they must never become a header.
RESPONSE_TRAILERS: Headers = [(b"set-cookie", b"leaked=1"), (b"x-trailer", b"t")]
# The complete response nobody asked for that "oversend" appends.
BOGUS_RESPONSE = (b"HTTP/1.1 200 OK\r\nx-seq: bogus\r\nx-bogus: 1\r\nset-cookie: leaked=1\r\n"
                  b"content-length: 5\r\n\r\nbogus")

_EOF_ERRORS = ("peer closed connection without sending complete message body",
               "peer unexpectedly closed connection")


@dataclass
class ReceivedRequest:
    """One request as h11 parsed it (header names lower-cased by h11)."""

    conn: int  # connection number, from 0
    index: int  # position on its connection, from 0
    method: bytes
    target: bytes
    headers: Headers
    body: bytes = b""
    trailers: Headers = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case), in order."""
        return [v for n, v in self.headers if n == name]

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name``, or None."""
        found = self.values(name)
        return found[0] if found else None


def describe(body: bytes) -> tuple[int, str]:
    """(length, SHA-256 hex prefix) of a body, as the backend reports it."""
    return len(body), hashlib.sha256(body).hexdigest()[:16]


@dataclass
class RecordingBackend:
    """An asyncio TCP server on 127.0.0.1 that records and answers requests."""

    port: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)  # bytes received, per connection
    failures: list[str] = field(default_factory=list)  # h11 errors on what veer sent
    incomplete: list[str] = field(default_factory=list)  # closed mid-request
    server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RecordingBackend:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, close every connection and wait for the handlers."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        index = 0
        try:
            while True:
                req = await self._read_request(conn, reader, raw, cid, index)
                if req is None:
                    break
                self.requests.append(req)
                index += 1
                if not await self._respond(conn, reader, writer, raw, req):
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            where = f"connection {cid} after {index} request(s): {exc}; bytes: {bytes(raw)!r}"
            if str(exc).startswith(_EOF_ERRORS):
                self.incomplete.append(where)
            else:
                self.failures.append(where)
        except (ConnectionError, h11.LocalProtocolError) as exc:
            # A reset, or an answer h11 could not send (e.g. a reply veer's framing made
            # impossible): the connection is unusable, not a verdict on veer.
            self.incomplete.append(f"connection {cid}: {exc!r}")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            raw: bytearray, cid: int, index: int) -> ReceivedRequest | None:
        """The next complete request, or None at a clean end of the connection."""
        req: ReceivedRequest | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                raw += data
                conn.receive_data(data)  # b"" marks the end of the stream
            elif isinstance(event, h11.Request):
                req = ReceivedRequest(cid, index, event.method, event.target,
                                      list(event.headers))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert req is not None
                req.body, req.trailers = bytes(body), list(event.headers)
                return req
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen while the client side is still sending
                raise h11.RemoteProtocolError(f"unexpected parser state {event!r}")

    async def _respond(self, conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, raw: bytearray,
                       req: ReceivedRequest) -> bool:
        """Answer ``req`` by its ``x-behave``; True if the connection stays open."""
        behave = (req.header(b"x-behave") or b"normal").decode()
        if behave == "drop":
            return False
        head_only = req.method == b"HEAD"
        length, digest = describe(req.body)
        pad = int(req.header(b"x-pad") or b"0")
        payload = json.dumps({
            "seq": (req.header(b"x-seq") or b"").decode(), "method": req.method.decode(),
            "target": req.target.decode(), "len": length, "sha": digest,
            "conn": req.conn, "index": req.index, "pad": "p" * pad,
        }).encode()
        headers: Headers = [(b"x-seq", req.header(b"x-seq") or b""),
                            (b"content-type", b"application/json")]
        out = bytearray()
        if behave == "upgrade" and (req.header(b"upgrade") or b"").lower() == b"websocket":
            out += conn.send(h11.InformationalResponse(
                status_code=101, headers=[*headers, (b"upgrade", b"websocket"),
                                          (b"connection", b"Upgrade")]))
            writer.write(bytes(out) + conn.trailing_data[0])
            await self._echo(reader, writer, raw)
            return False
        if behave == "early-hints":
            out += conn.send(h11.InformationalResponse(
                status_code=103, headers=[(b"link", b"</style.css>; rel=preload")]))
        elif behave == "continue":
            out += conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        if behave in ("chunked", "trailers"):
            headers.append((b"transfer-encoding", b"chunked"))
            if behave == "trailers":
                headers.append((b"trailer", b"set-cookie, x-trailer"))
        else:
            headers.append((b"content-length", b"%d" % len(payload)))
        if behave == "close":
            headers.append((b"connection", b"close"))
        out += conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        if behave == "truncate":
            cut = b"" if head_only else payload[: len(payload) // 2]
            writer.write(bytes(out) + cut)
            await writer.drain()
            return False
        if not head_only:
            step = max(1, len(payload) // 3) if behave in ("chunked", "trailers") else None
            pieces = [payload] if step is None else [
                payload[i:i + step] for i in range(0, len(payload), step)]
            for piece in pieces:
                out += conn.send(h11.Data(data=piece))
        trailers = RESPONSE_TRAILERS if behave == "trailers" and not head_only else []
        out += conn.send(h11.EndOfMessage(headers=trailers))
        if behave == "oversend":
            out += BOGUS_RESPONSE
        writer.write(bytes(out))  # one write: the extra bytes arrive with the response
        await writer.drain()
        return behave not in ("close", "oversend") and conn.our_state is h11.DONE

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    raw: bytearray) -> None:
        """After a 101: send back every byte that arrives, until the peer closes."""
        await writer.drain()
        while data := await reader.read(65536):
            raw += data
            writer.write(data)
            await writer.drain()
