"""The request-head rules as pure functions: fixed vectors (the raw-socket tests in
tests/functional/test_trust.py and the conformance corpus drive them through veer)."""

from __future__ import annotations

import pytest

from proxy.http.head_rules import Reject, check_head, is_token, read_header, tunnels
from proxy.http.request import Request


def _req(url: bytes = b"/", method: bytes = b"GET", version: str = "1.1",
         **headers: bytes) -> Request:
    req = Request(0.0)
    req.url, req.method, req.version = url, method, version
    for name, value in headers.items():
        read_header(req, name.replace("_", "-").encode(), value)
    return req


def test_absolute_form_becomes_origin_form_with_its_host() -> None:
    req = _req(b"http://h.example:8080?q=1#frag", host=b"other")
    check_head(req, 1000)
    assert (req.url, req.host) == (b"/?q=1", b"h.example:8080")
    assert req.headers == [(b"Host", b"h.example:8080")]


@pytest.mark.parametrize(("req", "status"), [
    (_req(method=b"CONNECT", host=b"h"), 405),
    (_req(version="2.0", host=b"h"), 505),
    (_req(url=b"*", host=b"h"), 400),
    (_req(), 400),  # HTTP/1.1 without Host
    (_req(version="1.0", transfer_encoding=b"chunked"), 400),
    (_req(url=b"ftp://h/x", host=b"h"), 400),
    (_req(host=b"h", content_length=b"1001"), 413),
])
def test_a_broken_rule_is_its_status(req: Request, status: int) -> None:
    with pytest.raises(Reject) as info:
        check_head(req, 1000)
    assert info.value.status == status


def test_header_rules() -> None:
    with pytest.raises(Reject, match="more than one Host"):
        req = _req(host=b"a")
        read_header(req, b"host", b"b")
    with pytest.raises(Reject, match="Expect"):
        _req(expect=b"something-else")
    req = _req(host=b"h", connection=b"close, Host, x-a", transfer_encoding=b"gzip, chunked")
    check_head(req, 1000)
    assert sorted(req.connection_tokens) == [b"close", b"x-a"]  # Host cannot be nominated
    assert req.chunked and req.codings == b"gzip"


def test_only_configured_upgrades_tunnel_and_methods_are_tokens() -> None:
    assert tunnels(b"WebSocket", frozenset({"websocket"}))
    assert not tunnels(b"h2c", frozenset({"websocket"}))
    assert is_token(b"PURGE") and not is_token(b"GE(T") and not is_token(b"")
