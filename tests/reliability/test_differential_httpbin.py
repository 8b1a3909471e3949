"""Differential test against a real backend: httpbin under gunicorn, direct and through veer.

One gunicorn (gthread workers, keep-alive) serves httpbin on a socket this module binds
and hands over (``fd://``), so the port is never raced. Each case starts a veer whose
``original`` and ``new`` pools both point at that gunicorn (weight 50), then sends the
same request three times, as a user routed to new, a user routed to original and an
anonymous user (who gets a ``veer_uid`` cookie), each once direct and once through veer.
The client is h11 over a raw socket: strict parsing, no decompression, no redirects, no
cookie jar, the exact headers given.

What must match: the status, the body bytes (or, for random or request-echoing bodies, a
normalised form), and every response header except hop-by-hop ones, ``date``,
``server``, framing (``content-length`` is compared only where both sides send it and the
body is stable) and veer's own ``x-veer-variant`` and ``veer_uid`` cookie, which are
checked separately. In echoed requests the X-Forwarded-* headers must be veer's (For is
the client's list plus 127.0.0.1, Proto is http, Host is the Host sent) and everything
else must be what the direct request echoes.

Skipped, with the reason, when gunicorn or httpbin cannot be imported; under CI=true that
fails instead (``make setup-test`` installs both).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import http.client
import importlib
import importlib.metadata
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import h11
import pytest

from tests.deadline import until_sync
from tests.functional.conftest import StartVeer

HOST = "httpbin.test"  # sent as Host both ways, so URLs built from it are the same
USER_AGENT = "veer-differential/1"
SALT = "AB12A"  # README: AB12A:122 has bucket 2287 (new at 50%), AB12A:155 has 9923
NEW_USER, ORIGINAL_USER = "122", "155"
REQUEST_TIMEOUT = 5.0
STARTUP_TIMEOUT = 30.0
PEER = "127.0.0.1"

# Never compared: each hop has its own (veer writes its own framing and connection).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
NOT_COMPARED = HOP_BY_HOP | {"date", "server", "content-length", "x-veer-variant"}
# Must never reach the client from veer (the connection header is veer's own).
MUST_NOT_LEAK = frozenset({"keep-alive", "proxy-connection", "te", "trailer", "upgrade"})
VEER_COOKIE = re.compile(r"veer_uid=[^;]+; Path=/; Max-Age=\d+; HttpOnly; SameSite=Lax")

# Body kinds: how two bodies are compared.
RAW = "raw"  # byte for byte
LENGTH = "length"  # same length (random bytes, unseeded)
ECHO = "echo"  # httpbin's JSON echo of the request, normalised
ECHO_LINES = "echo-lines"  # one JSON echo per line (/stream/N)
GZIP, DEFLATE, BROTLI = "gzip", "deflate", "brotli"  # compressed echo: decompress, normalise
UUID = "uuid"  # {"uuid": <a version 4 uuid>}
ECHO_KINDS = frozenset({ECHO, ECHO_LINES, GZIP, DEFLATE, BROTLI})


@dataclass(frozen=True)
class Case:
    """One request, sent the same way direct and through veer."""

    method: str
    target: str
    label: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    chunked: bool = False
    kind: str = RAW
    volatile: frozenset[str] = frozenset()  # response headers with per-response values
    dropped: frozenset[str] = frozenset()  # echoed request headers veer must not forward
    echoes_body: bool = False  # the echo's "data" must be the body sent
    stable_length: bool | None = None  # compare content-length; default: by kind

    @property
    def id(self) -> str:
        return f"{self.method} {self.target}" + (f" [{self.label}]" if self.label else "")

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    @property
    def length_comparable(self) -> bool:
        if self.stable_length is not None:
            return self.stable_length
        return self.kind in (RAW, LENGTH)


@dataclass(frozen=True)
class Identity:
    """Who sends the request: a routed user (X-User-Id) or an anonymous one."""

    name: str
    headers: tuple[tuple[str, str], ...]
    variant: str | None  # the variant veer must pick; None: either (anonymous)


IDENTITIES = (
    Identity("new-user", (("X-User-Id", NEW_USER),), "new"),
    Identity("original-user", (("X-User-Id", ORIGINAL_USER),), "original"),
    Identity("anonymous", (), None),
)


@dataclass
class Reply:
    """A response as h11 parsed it: lower-case header names in order, the decoded body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    interim: list[int] = field(default_factory=list)
    received: int = 0  # body bytes so far (for a failure message)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


# -- the cases ------------------------------------------------------------------------


def _payload(size: int, seed: int) -> bytes:
    """Deterministic bytes; below 64 bytes printable (echoed as text), above binary
    (echoed by httpbin as a base64 data URL)."""
    if size < 64:
        return (b"abcdefghij" * 7)[:size]
    return random.Random(seed).randbytes(size)


def _body_cases() -> list[Case]:
    sizes = {"0B": 0, "1B": 1, "64KiB": 64 * 1024, "1MiB": 1024 * 1024}
    out: list[Case] = []
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for label, size in sizes.items():
            if size == 1024 * 1024 and method in ("PATCH", "DELETE"):
                continue  # the big ones twice are enough for the runtime budget
            for chunked in (False, True):
                framing = "chunked" if chunked else "CL"
                out.append(Case(method, "/anything/body", f"{label} {framing}",
                                headers=(("Content-Type", "application/octet-stream"),),
                                body=_payload(size, size + len(method)), chunked=chunked,
                                kind=ECHO, echoes_body=True))
    return out


_STATUSES = (200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308,
             400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415,
             416, 417, 418, 421, 422, 425, 426, 428, 429, 431, 451,
             500, 501, 502, 503, 504, 505, 511, 599)
_BASIC = "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
_ODD_QUERY = ("/get?a=1&a=2&sp=%20x%20&plus=a+b&u=%E2%9C%93&empty=&novalue"
              "&sub=!$'()*,;:@/?&tilde=~x&pct=%25%26%3D&nul=%00")
_RESPONSE_HEADERS = ("/response-headers?Set-Cookie=a%3D1%3B%20Path%3D%2F"
                     "&Set-Cookie=b%3D2%3B%20HttpOnly&Set-Cookie=c%3D3"
                     "&X-Multi=1&X-Multi=2&Cache-Control=no-store&Vary=Accept-Encoding"
                     "&X-Odd=a%20b%2C%20c%3B%20d%3D%22e%22&Content-Language=de")

CASES: list[Case] = [
    # Request inspection (echoes).
    Case("GET", "/get", kind=ECHO),
    Case("GET", _ODD_QUERY, "odd legal query", kind=ECHO),
    Case("GET", "/headers", kind=ECHO),
    Case("GET", "/headers?show_env=1", "X-Forwarded-* visible", kind=ECHO),
    Case("GET", "/headers?show_env=1", "client X-Forwarded-* spoofed",
         headers=(("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-Proto", "https"),
                  ("X-Forwarded-Host", "evil.test")), kind=ECHO),
    Case("GET", "/headers", "hop-by-hop request headers",
         headers=(("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
                  ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
                  ("Proxy-Authorization", "Basic eDp5")),
         dropped=frozenset({"Connection", "X-Hop", "Keep-Alive", "Te", "Proxy-Authorization"}),
         kind=ECHO),
    Case("GET", "/headers", "odd legal request headers",
         headers=(("X-Empty", ""), ("X-Dup", "a"), ("X-Dup", "b"),
                  ("X-Spaces", "a \t b  c"), ("X-Long", "v" * 4000),
                  ("X-Token", "!#$%&'*+-.^_`|~"), ("X_Under", "dropped by both"),
                  *((f"X-Many-{i}", str(i)) for i in range(40))), kind=ECHO),
    Case("GET", "/user-agent"),
    Case("GET", "/ip", kind=ECHO),
    Case("GET", "http://httpbin.test/get?abs=1", "absolute-form target", kind=ECHO),
    Case("GET", "/anything/a%2Fb/%7E/semi;colon=1/!$&'()*+,=:@~", "odd legal path", kind=ECHO),
    Case("TRACE", "/anything", kind=ECHO),
    Case("GET", "/anything", "GET with a body", body=b"body on a GET", kind=ECHO,
         echoes_body=True),
    Case("OPTIONS", "*", "asterisk-form"),
    Case("PURGE", "/anything", "unknown method"),
    Case("OPTIONS", "/get", "CORS preflight",
         headers=(("Origin", "http://app.test"), ("Access-Control-Request-Method", "PUT"),
                  ("Access-Control-Request-Headers", "X-Custom, Content-Type"))),
    Case("HEAD", "/get", stable_length=False),
    Case("HEAD", "/bytes/1000?seed=7"),
    Case("HEAD", "/stream-bytes/1000?seed=7"),
    Case("HEAD", "/range/1000", "Range", headers=(("Range", "bytes=10-19"),)),
    Case("HEAD", "/html"),
    Case("HEAD", "/redirect/1"),
    Case("HEAD", "/status/204"),
    # Bodies up.
    *_body_cases(),
    Case("POST", "/post", "form", headers=(("Content-Type", "application/x-www-form-urlencoded"),),
         body=b"a=1&b=%20two&c=%E2%9C%93&c=again", kind=ECHO),
    Case("POST", "/anything", "json", headers=(("Content-Type", "application/json"),),
         body=b'{"k": [1, 2, {"x": null}], "s": "\\u2713"}', kind=ECHO),
    Case("POST", "/post", "multipart",
         headers=(("Content-Type", "multipart/form-data; boundary=XyZ"),),
         body=(b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nvalue\r\n"
               b"--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"a.bin\"\r\n"
               b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\x02\xff\r\n--XyZ--\r\n"),
         kind=ECHO),
    Case("POST", "/anything", "Expect 100-continue",
         headers=(("Expect", "100-continue"), ("Content-Type", "text/plain")),
         body=b"hello after expect", dropped=frozenset({"Expect"}), kind=ECHO,
         echoes_body=True),
    Case("POST", "/status/201", "body to a status", body=b"ignored"),
    # Statuses.
    *(Case("GET", f"/status/{code}") for code in _STATUSES),
    # Response formats and dynamic data.
    Case("GET", "/bytes/1024?seed=42"),
    Case("GET", "/bytes/102400?seed=3", "100KiB"),
    Case("GET", "/bytes/64", "unseeded", kind=LENGTH),
    Case("GET", "/stream-bytes/6000?seed=5&chunk_size=7", "tiny chunks"),
    Case("GET", "/stream-bytes/102400?seed=9", "chunked 100KiB"),
    Case("GET", "/stream/5", kind=ECHO_LINES),
    Case("GET", "/range/1000"),
    Case("GET", "/range/1000", "bytes=100-199", headers=(("Range", "bytes=100-199"),)),
    Case("GET", "/range/1000", "bytes=-50", headers=(("Range", "bytes=-50"),)),
    Case("GET", "/range/1000", "bytes=990-", headers=(("Range", "bytes=990-"),)),
    Case("GET", "/range/1000", "unsatisfiable", headers=(("Range", "bytes=5000-"),)),
    Case("GET", "/range/102400?chunk_size=333", "chunked range",
         headers=(("Range", "bytes=1-50000"),)),
    Case("GET", "/drip?numbytes=5&duration=0.1&delay=0"),
    Case("GET", "/drip?numbytes=3&duration=0&code=203", "drip code"),
    Case("GET", "/delay/0", kind=ECHO),
    Case("GET", "/delay/0.2", kind=ECHO),
    Case("GET", "/gzip", headers=(("Accept-Encoding", "gzip, deflate, br"),), kind=GZIP),
    Case("GET", "/deflate", headers=(("Accept-Encoding", "gzip, deflate, br"),), kind=DEFLATE),
    Case("GET", "/brotli", headers=(("Accept-Encoding", "gzip, deflate, br"),), kind=BROTLI),
    Case("GET", "/encoding/utf8"),
    Case("GET", "/html"),
    Case("GET", "/json"),
    Case("GET", "/xml"),
    Case("GET", "/robots.txt"),
    Case("GET", "/deny"),
    Case("GET", "/uuid", kind=UUID),
    Case("GET", "/base64/SFRUUEJJTiBpcyBhd2Vzb21l"),
    Case("GET", "/base64/4pyTIMOgIGxhIG1vZGU=", "utf-8"),
    Case("GET", "/links/3/1"),
    Case("GET", "/forms/post"),
    Case("GET", "/image/png"),
    Case("GET", "/image/svg"),
    Case("GET", "/image", "Accept webp", headers=(("Accept", "image/webp"),)),
    # Response headers.
    Case("GET", _RESPONSE_HEADERS, "multiple Set-Cookie"),
    Case("POST", "/response-headers?X-From=post", body=b""),
    Case("GET", "/response-headers?X-Big=" + "b" * 6000 + "&X-Empty=", "big and empty values"),
    # Redirects (Location compared as a header).
    Case("GET", "/redirect/1"),
    Case("GET", "/redirect/3"),
    Case("GET", "/redirect/2?absolute=true", "absolute"),
    Case("GET", "/relative-redirect/2"),
    Case("GET", "/absolute-redirect/2"),
    Case("GET", "/redirect-to?url=http%3A%2F%2Fexample.test%2F%3Fa%3D1%26b%3D2&status_code=307"),
    # Cookies.
    Case("GET", "/cookies", headers=(("Cookie", "a=1; b=two; c=%E2%9C%93"),)),
    Case("GET", "/cookies", "sticky veer_uid sent", headers=(("Cookie", "veer_uid=abc; a=1"),)),
    Case("GET", "/cookies/set?a=1&b=2"),
    Case("GET", "/cookies/set/name/value"),
    Case("GET", "/cookies/delete?a", headers=(("Cookie", "a=1"),)),
    # Auth.
    Case("GET", "/basic-auth/alice/s3cr3t", "no credentials"),
    Case("GET", "/basic-auth/alice/s3cr3t", "good credentials",
         headers=(("Authorization", _BASIC),)),
    Case("GET", "/basic-auth/alice/other", "wrong credentials",
         headers=(("Authorization", _BASIC),)),
    Case("GET", "/hidden-basic-auth/alice/s3cr3t", "no credentials"),
    Case("GET", "/bearer", "no token"),
    Case("GET", "/bearer", "token", headers=(("Authorization", "Bearer t0ken.abc"),)),
    # Caching.
    Case("GET", "/cache", volatile=frozenset({"last-modified", "etag"}), kind=ECHO),
    Case("GET", "/cache", "If-Modified-Since",
         headers=(("If-Modified-Since", "Tue, 01 Dec 2020 00:00:00 GMT"),)),
    Case("GET", "/cache/60", kind=ECHO),
    Case("GET", "/etag/xyz", kind=ECHO),
    Case("GET", "/etag/xyz", "If-None-Match hit", headers=(("If-None-Match", '"xyz"'),)),
    Case("GET", "/etag/xyz", "If-None-Match miss", headers=(("If-None-Match", '"abc"'),),
         kind=ECHO),
    Case("GET", "/etag/xyz", "If-Match miss", headers=(("If-Match", '"abc"'),)),
]


def _check_unique(cases: list[Case]) -> None:
    seen: set[str] = set()
    for c in cases:
        assert c.id not in seen, f"duplicate case id {c.id}"
        seen.add(c.id)


_check_unique(CASES)


# -- the backend ----------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (make setup-test should have installed it)")
    print(f"skipping the httpbin differential test: {reason}")
    pytest.skip(reason)


def _require_httpbin() -> None:
    """Import gunicorn and httpbin in a child (importing httpbin here would warn)."""
    try:
        probe = subprocess.run([sys.executable, "-c", "import gunicorn, httpbin"],
                               capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"cannot run {sys.executable}: {exc}")
        return
    if probe.returncode != 0:
        tail = probe.stderr.strip().splitlines()[-1:] or ["no output"]
        _unavailable(f"gunicorn or httpbin cannot be imported ({tail[0]}); "
                     "install them with: make setup-test")


def _gunicorn_args(fd: int) -> list[str]:
    args = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", "--workers", "2",
            "--worker-class", "gthread", "--threads", "8", "--keep-alive", "60",
            "--graceful-timeout", "2", "--log-level", "info"]
    version = importlib.metadata.version("gunicorn")
    major_minor = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if major_minor >= (25, 1):
        args.append("--no-control-socket")  # else it writes $HOME/.gunicorn/gunicorn.ctl
    return [*args, "httpbin:app"]


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection(PEER, port, timeout=2)
    try:
        conn.request("GET", "/get")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="module")
def httpbin_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """httpbin under gunicorn on 127.0.0.1, on a socket bound here and passed as fd://."""
    _require_httpbin()
    log_path = tmp_path_factory.mktemp("httpbin") / "gunicorn.log"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind((PEER, 0))
        listener.listen(256)
        port: int = listener.getsockname()[1]
        fd = listener.fileno()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(_gunicorn_args(fd), pass_fds=(fd,), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {proc.returncode}:\n"
                                     + _tail(log_path))
            return _answers(port)

        until_sync(ready, STARTUP_TIMEOUT, interval=0.05,
                   what=f"gunicorn httpbin on port {port}")
        yield port
    finally:
        _stop(proc)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop our gunicorn master (SIGINT: quick shutdown; it stops its workers), by PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _veer_config(port: int) -> dict[str, Any]:
    url = f"http://{PEER}:{port}"
    return {
        "listen": f"{PEER}:0",
        "upstreams": {"original": {"endpoints": [url]}, "new": {"endpoints": [url]}},
        "routing": {"salt": SALT, "user_key": ["header:X-User-Id"], "anonymous": "cookie"},
        "weights": {"new": 50},
    }


# -- the client -----------------------------------------------------------------------


def _pieces(body: bytes) -> list[bytes]:
    """A chunked body in uneven chunks (1 byte, an odd size, then 16 KiB pieces)."""
    if not body:
        return []
    out, rest = [body[:1]], body[1:]
    for size in (4093,):
        if rest:
            out.append(rest[:size])
            rest = rest[size:]
    while rest:
        out.append(rest[:16384])
        rest = rest[16384:]
    return out


class FetchError(Exception):
    """No complete, well-formed response: a timeout, a reset, or bad HTTP (h11's verdict)."""


async def fetch(port: int, case: Case, identity: Identity) -> Reply:
    """Send ``case`` as ``identity`` to 127.0.0.1:``port`` on a fresh connection."""
    partial = Reply(0, [], b"")
    reader, writer = await asyncio.open_connection(PEER, port)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await _exchange(reader, writer, case, identity, partial)
    except TimeoutError:
        raise FetchError(f"no complete response within {REQUEST_TIMEOUT:.0f}s (got status "
                         f"{partial.status or 'none'}, {partial.received} body bytes)") from None
    except (h11.ProtocolError, ConnectionError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc} (got status {partial.status or 'none'}, "
                         f"{partial.received} body bytes)") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    case: Case, identity: Identity, partial: Reply) -> Reply:
    conn = h11.Connection(our_role=h11.CLIENT)
    headers: list[tuple[str, str]] = [("Host", HOST), ("User-Agent", USER_AGENT)]
    if case.header("Accept") is None:
        headers.append(("Accept", "*/*"))
    headers += [*case.headers, *identity.headers]
    if case.body is not None:
        headers.append(("Transfer-Encoding", "chunked") if case.chunked
                       else ("Content-Length", str(len(case.body))))
    writer.write(conn.send(h11.Request(method=case.method, target=case.target,
                                       headers=headers)) or b"")

    async def send_body() -> None:
        if case.body is not None:
            for piece in _pieces(case.body) if case.chunked else [case.body]:
                if piece:
                    writer.write(conn.send(h11.Data(data=piece)) or b"")
                    await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    sender = asyncio.ensure_future(send_body())
    try:
        reply = await _receive(reader, conn, partial)
        if not sender.done():
            sender.cancel()  # answered without reading the whole body: fine
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        return reply
    finally:
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender


async def _receive(reader: asyncio.StreamReader, conn: h11.Connection,
                   reply: Reply) -> Reply:
    """Read one response into ``reply`` (filled as it arrives, for the failure message)."""
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))  # b"" is the end of the stream
        elif isinstance(event, h11.InformationalResponse):
            reply.interim.append(event.status_code)
        elif isinstance(event, h11.Response):
            reply.status = event.status_code
            reply.headers = [(n.decode("latin-1").lower(), v.decode("latin-1"))
                             for n, v in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
            reply.received = len(body)
        elif isinstance(event, h11.EndOfMessage):
            reply.body = bytes(body)
            return reply
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("connection closed before the response ended")


# -- comparing ------------------------------------------------------------------------


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _end_to_end(reply: Reply, case: Case, via: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in reply.headers:
        if name in NOT_COMPARED or name in case.volatile:
            continue
        if via and name == "set-cookie" and value.startswith("veer_uid="):
            continue
        out.setdefault(name, []).append(value)
    return out


def _veer_own(case: Case, identity: Identity, via: Reply) -> list[str]:
    problems: list[str] = []
    variants = via.get_all("x-veer-variant")
    want = [identity.variant] if identity.variant else None
    if (want is not None and variants != want) or (
            want is None and (len(variants) != 1 or variants[0] not in ("new", "original"))):
        problems.append(f"x-veer-variant: got {variants}, expected {want or 'new|original'}")
    cookies = [v for v in via.get_all("set-cookie") if v.startswith("veer_uid=")]
    sends_uid = "veer_uid=" in (case.header("Cookie") or "")
    if identity.variant is None and not sends_uid:
        if len(cookies) != 1 or not VEER_COOKIE.fullmatch(cookies[0]):
            problems.append(f"anonymous request: expected one veer_uid cookie, got {cookies}")
    elif cookies:
        problems.append(f"veer_uid cookie set for a known user: {cookies}")
    leaked = sorted({n for n, _ in via.headers if n in MUST_NOT_LEAK})
    if leaked:
        problems.append(f"hop-by-hop headers reached the client: {leaked}")
    if via.get_all("content-length") and via.get_all("transfer-encoding"):
        problems.append("veer sent both content-length and transfer-encoding")
    if len(via.get_all("content-length")) > 1:
        problems.append(f"veer sent several content-length: {via.get_all('content-length')}")
    return problems


def _decoded(kind: str, data: bytes) -> bytes:
    if kind == GZIP:
        return gzip.decompress(data)
    if kind == DEFLATE:
        return zlib.decompress(data)
    if kind == BROTLI:
        brotli = importlib.import_module("brotlicffi")  # httpbin's own dependency
        return cast(bytes, brotli.decompress(data))
    return data


def _normalise_echo(doc: Any, case: Case, via: bool, problems: list[str]) -> Any:
    """Check and remove what veer is meant to change in an echoed request."""
    if not isinstance(doc, dict):
        return doc
    side = "veer" if via else "direct"
    client_xff = case.header("X-Forwarded-For")
    veer_xff = f"{client_xff}, {PEER}" if client_xff else PEER
    headers = doc.get("headers")
    if isinstance(headers, dict):
        headers = dict(headers)
        want: dict[str, str | None]
        if via:
            want = {"X-Forwarded-Host": HOST, "X-Forwarded-For": veer_xff,
                    "X-Forwarded-Proto": "http"}
        else:
            want = {n: case.header(n) for n in
                    ("X-Forwarded-Host", "X-Forwarded-For", "X-Forwarded-Proto")}
        for name, expected in want.items():
            got = headers.pop(name, None)
            hidden = name != "X-Forwarded-Host" and "show_env" not in case.target
            if got != expected and not (hidden and got is None):
                problems.append(f"{side} echoed {name}: {got!r}, expected {expected!r}")
        for name in case.dropped:
            got = headers.pop(name, None)
            if via and got is not None:
                problems.append(f"veer forwarded {name}: {got!r} (must drop it)")
        doc = {**doc, "headers": headers}
    if "origin" in doc:
        expected_origin = veer_xff if via else (client_xff or PEER)
        if doc["origin"] != expected_origin:
            problems.append(f"{side} echoed origin {doc['origin']!r}, "
                            f"expected {expected_origin!r}")
        doc = {**doc, "origin": "<origin>"}
    return doc


def _json_or_raw(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _echo_form(case: Case, data: bytes, via: bool, problems: list[str]) -> Any:
    text = _decoded(case.kind, data)
    if case.kind == ECHO_LINES:
        return [_normalise_echo(_json_or_raw(line), case, via, problems)
                for line in text.splitlines()]
    return _normalise_echo(_json_or_raw(text), case, via, problems)


def _expected_data(body: bytes) -> str:
    """httpbin's json_safe: text as is, else a base64 data URL."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return "data:application/octet-stream;base64," + base64.b64encode(body).decode()


def _describe_bytes(direct: bytes, via: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(direct, via, strict=False)) if a != b),
              min(len(direct), len(via)))
    return (f"body: direct {len(direct)} bytes, veer {len(via)} bytes, first difference at "
            f"{at}: direct {direct[at:at + 40]!r}, veer {via[at:at + 40]!r}")


def _compare_echo(case: Case, direct: Reply, via: Reply) -> list[str]:
    problems: list[str] = []
    d = _echo_form(case, direct.body, False, problems)
    v = _echo_form(case, via.body, True, problems)
    if d != v:
        if isinstance(d, dict) and isinstance(v, dict):
            for key in sorted(d.keys() | v.keys()):
                dv, vv = d.get(key), v.get(key)
                if isinstance(dv, dict) and isinstance(vv, dict):
                    for sub in sorted(dv.keys() | vv.keys()):
                        if dv.get(sub) != vv.get(sub):
                            problems.append(f"echo {key}.{sub}: direct {_short(dv.get(sub))}, "
                                            f"veer {_short(vv.get(sub))}")
                elif dv != vv:
                    problems.append(f"echo {key}: direct {_short(dv)}, veer {_short(vv)}")
        else:
            problems.append(f"echo: direct {_short(d)}, veer {_short(v)}")
    if (case.echoes_body and case.body is not None and isinstance(v, dict)
            and v.get("data") != _expected_data(case.body)):
        problems.append(f"veer's echo of the body differs from the body sent: "
                            f"{_short(v.get('data'), 120)}")
    return problems


def _is_uuid4_doc(data: bytes) -> bool:
    doc = _json_or_raw(data)
    if not isinstance(doc, dict) or set(doc) != {"uuid"} or not isinstance(doc["uuid"], str):
        return False
    try:
        return uuid.UUID(doc["uuid"]).version == 4
    except ValueError:
        return False


def _compare_body(case: Case, direct: Reply, via: Reply) -> list[str]:
    if case.method == "HEAD" or direct.status in (204, 304) or case.kind == RAW:
        return [] if direct.body == via.body else [_describe_bytes(direct.body, via.body)]
    if case.kind == LENGTH:
        return [] if len(direct.body) == len(via.body) else [
            f"body length: direct {len(direct.body)}, veer {len(via.body)}"]
    if case.kind == UUID:
        return [f"{side} body is not a uuid4 document: {_short(r.body)}"
                for side, r in (("direct", direct), ("veer", via)) if not _is_uuid4_doc(r.body)]
    assert case.kind in ECHO_KINDS, case.kind
    return _compare_echo(case, direct, via)


def compare(case: Case, identity: Identity, direct: Reply, via: Reply) -> list[str]:
    """Every way ``via`` (through veer) differs from ``direct`` beyond what veer owns."""
    problems: list[str] = []
    if direct.status != via.status:
        problems.append(f"status: direct {direct.status}, veer {via.status}")
    problems += _veer_own(case, identity, via)
    dh, vh = _end_to_end(direct, case, False), _end_to_end(via, case, True)
    for name in sorted(dh.keys() | vh.keys()):
        if dh.get(name) != vh.get(name):
            problems.append(f"header {name}: direct {dh.get(name)}, veer {vh.get(name)}")
    d_len, v_len = direct.get_all("content-length"), via.get_all("content-length")
    if case.length_comparable and d_len and v_len and d_len != v_len:
        problems.append(f"content-length: direct {d_len}, veer {v_len}")
    problems += _compare_body(case, direct, via)
    return problems


# -- the test -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_same_answer_direct_and_through_veer(
    case: Case, httpbin_port: int, start_veer: StartVeer
) -> None:
    server = await start_veer(_veer_config(httpbin_port))
    problems: list[str] = []
    for identity in IDENTITIES:
        try:
            direct = await fetch(httpbin_port, case, identity)
        except FetchError as exc:
            problems.append(f"[{identity.name}] direct: {exc}")
            break  # the backend itself failed: the rest would say the same
        try:
            via = await fetch(server.port, case, identity)
        except FetchError as exc:
            problems.append(f"[{identity.name}] veer: {exc} (direct: {direct.status}, "
                            f"{len(direct.body)} body bytes)")
            break  # one hang per case is enough to name the endpoint
        problems += [f"[{identity.name}] {p}" for p in compare(case, identity, direct, via)]
    for variant in ("original", "new"):
        errors = {k: n for k, n in server.rt.recorder.snapshot(variant).errors.items() if n}
        if errors:
            problems.append(f"veer counted upstream errors on {variant}: {errors}")
    assert not problems, f"{case.id}: direct and through veer differ:\n  " + "\n  ".join(
        problems)
