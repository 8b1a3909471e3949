"""HTTP/1.1 wire helpers shared by both sides: status lines, hop-by-hop rules, framing.

Everything here is computed once at import so that per-request work is
dictionary look-ups and byte joins.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

# RFC 9110 7.6.1 and the proxies' practice: never forwarded; each connection has its own.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Framing is recomputed by veer for each side, never copied.
FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
# Headers veer sets itself on the request to the upstream (x-veer-shadow marks a mirrored
# copy: a client must never make its own request look like one).
FORWARDED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                              b"x-veer-shadow"})
# Request headers never copied upstream, as they are: the parser keeps them out of the
# forwarded list (reading what it needs from them), so names are lower-cased only once.
REQUEST_NOT_FORWARDED: Final = HOP_BY_HOP | FRAMING | FORWARDED | {b"expect"}

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def status_line(code: int) -> bytes:
    """``HTTP/1.1 <code> <standard reason>\\r\\n``: a backend's reason phrase is never copied."""
    return f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n".encode("ascii")


STATUS_LINES: Final = {code: status_line(code) for code in range(100, 600)}

# Statuses whose responses never carry a body (RFC 9110 6.4.1).
NO_BODY_STATUSES: Final = frozenset({204, 304}) | frozenset(range(100, 200))

CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; nothing for empty data (an empty chunk is the last)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


# RFC 9110 9.2.2. Only these may be sent again automatically (RFC 9112 9.3.1), and only
# when no byte of a body went out.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# uri-host [":" port] (RFC 3986 3.2.2) as a proxy accepts it: a reg-name of unreserved
# characters and percent-escapes, or an IPv6 literal, and digits for the port. Stricter
# than the RFC's sub-delims on purpose: "a, b" or "a/b@c" would let the backend and veer
# disagree on the host.
_HOST_CHARS: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%")
_IPV6_CHARS: Final = frozenset(b"0123456789abcdefABCDEF:.")


def valid_host(value: bytes) -> bool:
    """True for ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if value.startswith(b"["):
        literal, sep, rest = value[1:].partition(b"]")
        if not sep or not literal or not _IPV6_CHARS.issuperset(literal):
            return False
        return rest == b"" or (rest[:1] == b":" and rest[1:].isdigit() and len(rest) <= 6)
    host, sep, port = value.partition(b":")
    if sep and not (port.isdigit() and len(port) <= 5):
        return False
    return bool(host) and _HOST_CHARS.issuperset(host)


def connection_tokens(values: list[bytes]) -> set[bytes]:
    """Lower-case header names listed in Connection headers (each also hop-by-hop)."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def error_body(cause: str) -> bytes:
    """The body of veer's own error answer."""
    return f"veer: {cause}\n".encode()


def error_response(code: int, cause: str, close: bool = True,
                   extra: bytes = b"", head: bool = False) -> bytes:
    """A complete short plain-text response naming the cause, e.g. for 502/503/504; for a
    HEAD request (``head``) the same head without the body (RFC 9110 9.3.2)."""
    body = error_body(cause)
    return b"".join((
        STATUS_LINES[code],
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n" if close else b"",
        extra,
        CRLF,
        b"" if head else body,
    ))
