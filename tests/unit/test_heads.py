"""Head rebuilding: hop-by-hop hygiene and veer's own framing, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.heads import request_head, response_head
from proxy.http.request import Request
from proxy.wire import h1


def make_request(headers: list[tuple[bytes, bytes]], method: bytes = b"GET",
                 version: str = "1.1") -> Request:
    req = Request(0.0)
    req.method, req.url, req.version = method, b"/x?y=1", version
    # As the parser does: what veer reads itself is not kept for forwarding.
    req.headers = [(n, v) for n, v in headers if n.lower() not in h1.REQUEST_NOT_FORWARDED]
    for name, value in headers:
        lname = name.lower()
        if lname == b"host":
            req.host = value
        elif lname == b"content-length":
            req.content_length = int(value)
        elif lname == b"transfer-encoding":
            req.chunked = True
        elif lname == b"connection":
            req.connection_tokens = [t.strip().lower() for t in value.split(b",")]
        elif lname == b"x-forwarded-for":
            req.xff = value
    return req


def header_names(head: bytes) -> list[bytes]:
    return [line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:] if b":" in line]


def test_request_head_drops_hop_by_hop_and_sets_forwarded() -> None:
    req = make_request([(b"Host", b"a.example"), (b"Connection", b"close, X-Hop"),
                        (b"X-Hop", b"1"), (b"TE", b"trailers"), (b"Keep-Alive", b"5"),
                        (b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"https"),
                        (b"Content-Length", b"3"), (b"Expect", b"100-continue"),
                        (b"X-End", b"kept")], method=b"POST")
    head = request_head(req, b"10.0.0.9", b"backend:80")
    assert head.startswith(b"POST /x?y=1 HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    names = header_names(head)
    for gone in (b"connection", b"x-hop", b"te", b"keep-alive", b"expect"):
        assert gone not in names
    assert b"x-forwarded-for: 1.2.3.4, 10.0.0.9\r\n" in head
    assert b"x-forwarded-proto: http\r\n" in head and names.count(b"x-forwarded-proto") == 1
    assert b"x-forwarded-host: a.example\r\n" in head
    assert b"content-length: 3\r\n" in head and b"X-End: kept\r\n" in head


def test_request_head_fallback_host_and_chunked() -> None:
    req = make_request([(b"Transfer-Encoding", b"chunked")], method=b"POST", version="1.0")
    head = request_head(req, b"127.0.0.1", b"127.0.0.1:9001")
    assert b"host: 127.0.0.1:9001\r\n" in head
    assert b"transfer-encoding: chunked\r\n" in head and b"content-length" not in head


@pytest.mark.parametrize(("status", "method", "version", "upstream", "framing", "close"), [
    (200, b"GET", "1.1", [(b"Content-Length", b"5")], b"content-length: 5", False),
    (200, b"GET", "1.1", [(b"Transfer-Encoding", b"chunked")], b"transfer-encoding: chunked",
     False),
    (200, b"GET", "1.1", [], b"transfer-encoding: chunked", False),
    (200, b"GET", "1.0", [], None, True),
    (200, b"HEAD", "1.1", [(b"Content-Length", b"99")], b"content-length: 99", False),
    (204, b"GET", "1.1", [(b"Content-Length", b"0")], None, False),
    (304, b"GET", "1.1", [], None, False),
])
def test_response_framing(status: int, method: bytes, version: str,
                          upstream: list[tuple[bytes, bytes]], framing: bytes | None,
                          close: bool) -> None:
    req = make_request([(b"Host", b"h")], method=method, version=version)
    resp = response_head(status, upstream, req, b"x-veer-variant: new\r\n", close_client=False)
    lower = resp.head.lower()
    if framing is None:
        assert b"content-length" not in lower and b"transfer-encoding" not in lower
    else:
        assert framing + b"\r\n" in lower
    assert resp.close_client == close
    assert (b"connection: close\r\n" in lower) == close
    assert b"x-veer-variant: new\r\n" in resp.head


def test_response_drops_hop_by_hop_and_backend_reason() -> None:
    req = make_request([(b"Host", b"h")])
    upstream = [(b"Connection", b"X-Secret"), (b"X-Secret", b"s"), (b"Keep-Alive", b"t=5"),
                (b"Content-Length", b"2"), (b"Set-Cookie", b"a=1")]
    resp = response_head(418, upstream, req, b"", close_client=False)
    assert resp.head.startswith(b"HTTP/1.1 418 I'm a Teapot\r\n")
    names = header_names(resp.head)
    assert b"x-secret" not in names and b"keep-alive" not in names
    assert b"set-cookie" in names


def test_upgrade_response_keeps_upgrade() -> None:
    req = make_request([(b"Host", b"h")])
    req.upgrade = b"websocket"
    resp = response_head(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
                         req, b"", close_client=False)
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in resp.head
    assert header_names(resp.head).count(b"upgrade") == 1


token = st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A",
                         b"content-length", b"transfer-encoding"])


@given(st.lists(st.tuples(token, st.sampled_from([b"5", b"chunked", b"close", b"x"]))),
       st.sampled_from([200, 204, 304, 404, 500]), st.sampled_from([b"GET", b"HEAD"]),
       st.sampled_from(["1.1", "1.0"]))
def test_never_two_framings(headers: list[tuple[bytes, bytes]], status: int, method: bytes,
                            version: str) -> None:
    req = make_request([(b"Host", b"h")], method=method, version=version)
    head = response_head(status, headers, req, b"", close_client=False).head.lower()
    assert head.count(b"content-length:") + head.count(b"transfer-encoding:") <= 1
