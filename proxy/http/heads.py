"""Rebuilding message heads for the other side: pure functions, no I/O.

The request head sent upstream keeps the client's end-to-end headers, drops
hop-by-hop ones (and any the Connection header names), sets X-Forwarded-*,
and carries veer's own framing. The response head sent to the client has
veer's status line and framing, never the backend's reason phrase or
Transfer-Encoding.
"""

from __future__ import annotations

from proxy.http.request import Headers, Request
from proxy.wire import h1

METRIC_HEADER = b"veer-metric"  # a backend's per-user metric values, never for the client
_DROP_RESPONSE = h1.HOP_BY_HOP | h1.FRAMING | {METRIC_HEADER}
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})  # name nothing beyond hop-by-hop


def request_head(req: Request, peer_ip: bytes, fallback_host: bytes,
                 proto: bytes = b"http") -> bytes:
    """The head to send upstream for ``req`` from the client at ``peer_ip``.

    ``req.headers`` holds what the parser kept (none of ``h1.REQUEST_NOT_FORWARDED``);
    headers the client's Connection header names are dropped here. ``fallback_host`` is
    used when an HTTP/1.0 client sent no Host (HTTP/1.1 needs one). ``proto`` is the
    client connection's scheme, for X-Forwarded-Proto.
    """
    parts = [req.method, b" ", req.url, b" HTTP/1.1\r\n"]
    if req.connection_tokens:
        named = set(req.connection_tokens)
        for name, value in req.headers:
            if name.lower() not in named:
                parts += (name, b": ", value, b"\r\n")
    else:
        for name, value in req.headers:
            parts += (name, b": ", value, b"\r\n")
    xff = peer_ip if req.xff is None else req.xff + b", " + peer_ip
    parts += (b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: ", proto, b"\r\n")
    if req.host is not None:
        parts += (b"x-forwarded-host: ", req.host, b"\r\n")
    else:
        parts += (b"host: ", fallback_host, b"\r\n")
    if req.upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", req.upgrade, b"\r\n")
    if req.chunked:
        if req.codings is not None:  # veer re-frames the chunked layer only
            parts += (b"transfer-encoding: ", req.codings, b", chunked\r\n")
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
    elif req.content_length is not None:
        parts.append(b"content-length: %d\r\n" % req.content_length)
    parts.append(b"\r\n")
    return b"".join(parts)


def interim_head(status: int, headers: Headers) -> bytes:
    """A 1xx interim response for the client (e.g. 103 Early Hints): veer's status line and
    the backend's end-to-end headers; it has no body and no framing."""
    out = [h1.STATUS_LINES.get(status) or h1.status_line(status)]
    for name, value in headers:
        if name.lower() not in _DROP_RESPONSE:
            out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


class ResponseHead:
    """The client-side head and how the body that follows must be framed. (A plain class:
    a NamedTuple's __new__ is interpreted Python even where mypyc compiled this module.)"""

    __slots__ = ("chunked", "close_client", "head", "metrics", "upstream_close_delimited")

    def __init__(self, head: bytes, chunked: bool, upstream_close_delimited: bool,
                 close_client: bool, metrics: bytes | None = None) -> None:
        self.head = head
        self.chunked = chunked  # veer chunk-encodes the body for the client
        self.upstream_close_delimited = upstream_close_delimited  # ends when it closes
        self.close_client = close_client  # the client connection closes after this response
        self.metrics = metrics  # the backend's veer-metric values (removed from the head)


def response_head(status: int, headers: Headers, req: Request, extra: bytes,
                  close_client: bool) -> ResponseHead:
    """The head for the client, given the upstream's status and headers.

    ``extra`` is appended as is (veer's own headers); ``close_client`` asks for
    ``connection: close``.
    """
    length: bytes | None = None
    conn_values: list[bytes] | None = None
    upstream_chunked = False
    metrics: bytes | None = None
    out: list[bytes] = [h1.STATUS_LINES.get(status) or h1.status_line(status)]
    # One pass, one lower() per header: framing and hop-by-hop are read, the rest copied.
    for name, value in headers:
        lname = name.lower()
        if lname in _DROP_RESPONSE:
            if lname == b"content-length":
                length = value
            elif lname == b"transfer-encoding":
                upstream_chunked = True
            elif lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                if conn_values is None:
                    conn_values = []
                conn_values.append(value)
            elif lname == METRIC_HEADER:
                metrics = value if metrics is None else metrics + b"," + value
        else:
            out += (name, b": ", value, b"\r\n")
    if conn_values is not None:
        named = h1.connection_tokens(conn_values) - _DROP_RESPONSE
        if named:  # rare: the upstream's Connection header names end-to-end headers
            out = [out[0]]
            for name, value in headers:
                lname = name.lower()
                if lname not in _DROP_RESPONSE and lname not in named:
                    out += (name, b": ", value, b"\r\n")
    head_request = req.method == b"HEAD"
    has_body = not head_request and status not in h1.NO_BODY_STATUSES
    chunked = False
    if status == 101:
        out += (b"connection: upgrade\r\nupgrade: ", req.upgrade or b"", b"\r\n")
    elif length is not None and (has_body or head_request):
        out += (b"content-length: ", length, b"\r\n")
    elif has_body and req.version == "1.1":
        chunked = True
        out.append(b"transfer-encoding: chunked\r\n")
    elif has_body:
        close_client = True  # HTTP/1.0 client: the body ends when veer closes
    out.append(extra)
    if status != 101:
        if close_client:
            out.append(b"connection: close\r\n")
        elif req.version == "1.0":
            out.append(b"connection: keep-alive\r\n")
    out.append(b"\r\n")
    close_delimited = has_body and length is None and not upstream_chunked
    return ResponseHead(b"".join(out), chunked, close_delimited, close_client, metrics)
