"""What a proxy checks in a request head beyond llhttp: pure functions of the parsed head.

llhttp in strict mode rejects the framing attacks (CL+TE, duplicate or bad
Content-Length, bad Transfer-Encoding, obs-fold, bare CR/LF, bad tokens).
On top of it: one valid Host, no Transfer-Encoding on HTTP/1.0, codings under
chunked kept, only 100-continue expected, a Connection header that cannot
nominate Host away, absolute-form turned into origin-form, and only configured
Upgrade protocols tunnelled. A rule broken is a ``Reject``: its status, and
the connection closes with nothing of the request forwarded.
"""

from __future__ import annotations

from proxy.http.request import Request
from proxy.wire import h1

# RFC 9110 5.6.2 token characters.
TCHAR = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
# A Connection header may not nominate these away: the request would lose its target.
NOT_NOMINABLE = frozenset({b"host"})
# Headers whose values veer itself reads (one set lookup per header finds them).
READ_BY_VEER = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                           b"x-forwarded-for", b"expect", b"upgrade"})


class Reject(Exception):
    """A request that must be answered with ``status`` and a closed connection."""

    def __init__(self, status: int, cause: str) -> None:
        super().__init__(cause)
        self.status, self.cause = status, cause


def is_token(method: bytes) -> bool:
    """A well-formed method token (RFC 9110 5.6.2), known to llhttp or not."""
    return bool(method) and TCHAR.issuperset(method)


def read_header(req: Request, lname: bytes, value: bytes) -> None:
    """Take in a header veer reads itself (``lname`` is in ``READ_BY_VEER``)."""
    if lname == b"host":
        if req.host is not None:
            raise Reject(400, "more than one Host header")
        if not h1.valid_host(value):
            raise Reject(400, "bad Host header")
        req.host = value
    elif lname == b"content-length":
        req.content_length = int(value)  # llhttp has validated the digits
    elif lname == b"transfer-encoding":
        # llhttp insists chunked is final. Any other coding would be lost when veer
        # re-frames the body, so it is refused (RFC 9112 6.1), not dropped.
        # llhttp insists chunked is final. veer re-frames only that chunked layer, so
        # the codings under it (gzip, ...) are sent on as they came, never dropped.
        req.chunked = True
        for coding in value.lower().split(b","):
            coding = coding.strip(b" \t")
            if coding not in (b"chunked", b"identity", b""):
                req.codings = coding if req.codings is None else req.codings + b", " + coding
    elif lname == b"connection":
        if req.connection_values is None:
            req.connection_values = [value]
        else:
            req.connection_values.append(value)
    elif lname == b"x-forwarded-for":
        req.xff = value if req.xff is None else req.xff + b", " + value
    elif lname == b"expect":
        if value.strip().lower() != b"100-continue":
            raise Reject(417, "unsupported Expect")
        req.expect_continue = True
    elif lname == b"upgrade":
        req.upgrade_offer = value


def check_head(req: Request, max_body: int) -> None:
    """The checks once the whole head is in (method, version and keep-alive are set)."""
    if req.method == b"CONNECT":
        raise Reject(405, "CONNECT is not supported by a reverse proxy")
    if req.version not in ("1.1", "1.0"):
        raise Reject(505, f"HTTP/{req.version} is not supported")
    if req.url == b"*":
        if req.method != b"OPTIONS":
            raise Reject(400, "asterisk-form is only for OPTIONS")
    elif req.url[:1] != b"/":
        to_origin_form(req)
    if req.version == "1.1" and req.host is None:
        raise Reject(400, "missing Host header")
    if req.chunked and req.version == "1.0":
        raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
    if req.content_length is not None and req.content_length > max_body:
        raise Reject(413, "request body too large")
    if req.connection_values:
        req.connection_tokens = list(
            h1.connection_tokens(req.connection_values) - NOT_NOMINABLE)


def tunnels(upgrade: bytes, allowed: frozenset[str]) -> bool:
    """Whether an Upgrade naming ``upgrade`` may become a tunnel (its first protocol)."""
    first = upgrade.split(b",", 1)[0].split(b"/", 1)[0].strip().lower()
    return first.decode("latin-1") in allowed


def to_origin_form(req: Request) -> None:
    """``GET http://host/path`` -> ``GET /path`` with Host = host (RFC 9112 3.2.2), so the
    backend cannot see a Host that disagrees with the target veer routed."""
    scheme, sep, rest = req.url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise Reject(400, "request target must be origin-form or absolute-form")
    end = len(rest)
    for delim in (b"/", b"?", b"#"):  # the authority ends at the path, query or fragment
        i = rest.find(delim)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    if not h1.valid_host(authority):
        raise Reject(400, "bad authority in request target")
    path = path.partition(b"#")[0]
    req.url = path if path[:1] == b"/" else b"/" + path
    req.host = authority
    req.headers = [(n, v) for n, v in req.headers if n.lower() != b"host"]
    req.headers.append((b"Host", authority))
