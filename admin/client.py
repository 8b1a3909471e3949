"""A client of the admin API for the ``veer`` operator commands, standard library only.

``AdminClient`` speaks HTTP with ``urllib.request`` and ``json`` (no event loop,
so it works from any script or thread) and turns every way a call can fail into
a ``ClientError`` carrying the exit code the command should end with:

====  ==============================================================
0     success
1     the API refused the request (404, 409 conflict, 422 invalid, ...)
2     usage error (bad options)
3     the admin API cannot be reached (refused, timeout, DNS, not HTTP)
4     unauthorized (401/403: missing or wrong token)
5     the admin API failed (5xx, or an answer that is not JSON)
====  ==============================================================

The ``render_*`` functions turn the API's JSON (see ``admin.views``) into the
plain-text tables the commands print.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any

from proxy.net import is_loopback

OK = 0
REFUSED = 1
USAGE = 2
UNREACHABLE = 3
UNAUTHORIZED = 4
SERVER_ERROR = 5

DEFAULT_URL = "http://127.0.0.1:9901"
TOKEN_ENV = "VEER_ADMIN_TOKEN"
URL_ENV = "VEER_ADMIN"

JSON = dict[str, Any]


class ClientError(Exception):
    """A failed call; ``exit_code`` is what the command exits with, ``str()`` what it says."""

    exit_code = SERVER_ERROR


class UsageError(ClientError):
    """Options that cannot work (a bad URL, an unreadable token file, ...)."""

    exit_code = USAGE


class Refused(ClientError):
    """The API understood and said no (4xx other than auth)."""

    exit_code = REFUSED

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.status, self.error, self.detail = status, error, detail


class Unreachable(ClientError):
    """No HTTP answer from the admin API at all."""

    exit_code = UNREACHABLE


class Unauthorized(ClientError):
    """401 or 403: the token is missing or wrong."""

    exit_code = UNAUTHORIZED


class ServerFailed(ClientError):
    """5xx, or an answer the client cannot read."""

    exit_code = SERVER_ERROR


def normalise_url(url: str) -> str:
    """``http(s)://host:port[/prefix]`` without a trailing slash; ``host:port`` means http."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--admin {url!r} is not an http(s)://host:port URL")
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise UsageError(f"--admin {url!r} has a bad port") from None
    if parts.query or parts.fragment:
        raise UsageError(f"--admin {url!r}: no query or fragment, just the base URL")
    return url.rstrip("/")


def _header_safe(value: str, what: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise UsageError(f"{what} must be printable ASCII")
    return value


class AdminClient:
    """Calls one admin API: JSON in, JSON out, failures as ``ClientError``."""

    def __init__(self, url: str, token: str | None = None, actor: str = "cli",
                 timeout: float = 5.0) -> None:
        self.url = normalise_url(url)
        self.token = _header_safe(token, "the admin token") if token else None
        self.actor = _header_safe(actor, "--actor")
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # A proxy cannot reach this machine's loopback, so never send loopback through one.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- reading -----------------------------------------------------------
    def status(self) -> JSON:
        """GET /status: rollout, weights and per-variant numbers."""
        return self.request("GET", "/status")

    def weights(self) -> JSON:
        """GET /weights: percent on original and on new."""
        return self.request("GET", "/weights")

    def events(self, kind: str | None = None, actor: str | None = None,
               limit: int = 50) -> JSON:
        """GET /events: newest first, filtered."""
        query: dict[str, str] = {"limit": str(limit)}
        if kind:
            query["kind"] = kind
        if actor:
            query["actor"] = actor
        return self.request("GET", "/events", query=query)

    # -- changing ----------------------------------------------------------
    def set_weights(self, new: float | None = None, original: float | None = None) -> JSON:
        """PUT /weights (pauses a running plan)."""
        body: JSON = {}
        if new is not None:
            body["new"] = new
        if original is not None:
            body["original"] = original
        return self.request("PUT", "/weights", body)

    def action(self, action: str, reason: str | None = None) -> JSON:
        """POST /rollout/<action>: advance, approve, promote, pause, resume or abort."""
        return self.request("POST", f"/rollout/{action}", {"reason": reason} if reason else {})

    def rollback(self, reason: str | None = None, mode: str = "immediate",
                 stages: Sequence[float] | None = None, interval: float | None = None,
                 users: Sequence[str] | None = None) -> JSON:
        """POST /rollout/rollback; ``stages`` are fractions of the weight, ending in 0."""
        body: JSON = {"mode": mode}
        if reason:
            body["reason"] = reason
        if stages is not None:
            body["stages"] = list(stages)
        if interval is not None:
            body["interval"] = interval
        if users is not None:
            body["users"] = list(users)
        return self.request("POST", "/rollout/rollback", body)

    # -- the wire ----------------------------------------------------------
    def request(self, method: str, path: str, body: JSON | None = None,
                query: Mapping[str, str] | None = None) -> JSON:
        """One call; the decoded JSON object, or a ``ClientError``."""
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": "veer-cli",
                   "X-Veer-Actor": self.actor}
        data = None
        if body is not None or method != "GET":
            data = json.dumps(body or {}).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, raw = exc.code, exc.read()
            raise self._http_error(status, exc.reason, raw) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, HTTPException) as exc:  # timeout or reset while reading, not HTTP
            raise self._unreachable(exc) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ServerFailed(f"the admin API at {self.url} answered {method} {path} with "
                               f"HTTP {status} but not a JSON object (is --admin the admin "
                               "listener?)")
        return answer

    def _unreachable(self, reason: object) -> Unreachable:
        if isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        elif isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror
        else:
            why = str(reason) or type(reason).__name__
        return Unreachable(f"cannot reach the admin API at {self.url}: {why} (is veer running? "
                           f"point --admin or ${URL_ENV} at its admin listener)")

    def _http_error(self, status: int, reason: object, raw: bytes) -> ClientError:
        error, detail = str(reason or f"HTTP {status}"), ""
        try:
            answer = json.loads(raw)
        except ValueError:
            detail = raw.decode("utf-8", "replace").strip()[:200]
        else:
            if isinstance(answer, dict):
                error = str(answer.get("error") or error)
                detail = str(answer.get("detail") or "")
        if status in (401, 403):
            hint = (f"set {TOKEN_ENV} to the admin token (or pass --token-file)" if not self.token
                    else f"check {TOKEN_ENV} (or --token-file): the admin API did not accept it")
            return Unauthorized(f"{error}: {detail}; {hint}" if detail else f"{error}; {hint}")
        if 400 <= status < 500:
            return Refused(status, error, detail)
        what = f"server error {status}" if status >= 500 else f"unexpected HTTP {status}"
        return ServerFailed(f"{what} from {self.url}: {error}" + (f": {detail}" if detail else ""))


# -- rendering -----------------------------------------------------------------
def table(rows: Sequence[Sequence[str]], right: Sequence[int] = (), indent: str = "") -> str:
    """Columns padded to their widest cell; ``right`` lists right-aligned columns."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def percent(value: object) -> str:
    """``12.5%`` from 12.5."""
    return f"{float(value):g}%" if isinstance(value, int | float) else "-"


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h10m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def latency(seconds: object, requests: object) -> str:
    """A latency in seconds as ``850us``, ``12.3ms`` or ``1.20s``; ``-`` without traffic."""
    if not requests or not isinstance(seconds, int | float):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def when(unix: object) -> str:
    """ISO 8601 in UTC, to the second."""
    if not isinstance(unix, int | float):
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_weights(weights: Mapping[str, Any]) -> str:
    """``original 90%  new 10%``."""
    return f"original {percent(weights.get('original'))}  new {percent(weights.get('new'))}"


def render_status(status: Mapping[str, Any]) -> str:
    """The rollout, its phase and gates, then each variant's numbers in two spans."""
    out: list[str] = []
    weights = status.get("weights") or {}
    ro = status.get("rollout")
    if isinstance(ro, dict):
        ph = ro.get("phase") or {}
        phases = ro.get("phases") or []
        minimum = float(ph.get("duration_s") or 0)
        elapsed = f"elapsed {duration(float(ph.get('elapsed_s') or 0))}"
        if minimum:
            elapsed += f" of at least {duration(minimum)}"
        rows = [["rollout", f"{ro.get('name')}  {ro.get('status')}"],
                ["phase", f"{ph.get('name')} ({int(ph.get('index', 0)) + 1}/{len(phases)}), "
                          f"weight {percent(ph.get('weight'))}, {elapsed}"],
                ["weights", render_weights(weights)],
                ["verdict", str(ro.get("verdict", "inconclusive"))]]
        if ph.get("approval_required"):
            rows.append(["approval", "given" if ph.get("approved") else
                         "required before leaving this phase (veer approve)"])
        if ro.get("deny_users"):
            rows.append(["denied", ", ".join(map(str, ro["deny_users"]))])
        out.append(table(rows))
        gates = [[str(g.get("gate")), str(g.get("verdict")), str(g.get("detail", ""))]
                 for g in ro.get("gates") or []]
        out.append("gates" + ("" if gates else "    none judged yet (no tick in this phase)"))
        if gates:
            out.append(table([["GATE", "VERDICT", "DETAIL"], *gates], indent="  "))
    else:
        out.append(table([["rollout", "none (weights set by hand)"],
                          ["weights", render_weights(weights)]]))
    window = status.get("window_s", 10)
    rows = [["VARIANT", "WEIGHT", "SPAN", "REQ/S", "IN-FLIGHT", "REQUESTS", "ERRORS", "ERR%",
             "P50", "P99", "P999"]]
    for name, v in (status.get("variants") or {}).items():
        for span, key in ((f"last {window}s", "window"), ("since phase", "since_phase")):
            s = v.get(key) or {}
            n = s.get("requests", 0)
            first = key == "window"
            rows.append([name if first else "", percent(weights.get(name)) if first else "",
                         span, f"{float(v.get('rate', 0)):.1f}" if first else "-",
                         str(v.get("in_flight", 0)) if first else "-", str(n),
                         str(s.get("errors", 0)),
                         f"{float(s.get('error_rate', 0)) * 100:.2f}%" if n else "-",
                         latency(s.get("p50"), n), latency(s.get("p99"), n),
                         latency(s.get("p999"), n)])
    out.append("")
    out.append(table(rows, right=range(3, 11)))
    return "\n".join(out)


def render_events(page: Mapping[str, Any], reason_width: int = 72) -> str:
    """Events newest first: time, kind, from -> to, reason, actor."""
    events = page.get("events") or []
    if not events:
        return "no events"
    rows = [["TIME", "KIND", "FROM -> TO", "REASON", "ACTOR"]]
    for e in events:
        reason = str(e.get("reason", ""))
        if len(reason) > reason_width:
            reason = reason[: reason_width - 3] + "..."
        rows.append([when(e.get("time")), str(e.get("kind")),
                     f"{e.get('from')} -> {e.get('to')}", reason, str(e.get("actor"))])
    text = table(rows)
    total = page.get("total")
    if isinstance(total, int) and total > len(events):
        text += f"\n({len(events)} of {total} events; --limit for more)"
    return text


def render_mutation(result: Mapping[str, Any]) -> str:
    """What a change did: its events, then where the rollout and weights stand now."""
    lines = [f"{e.get('kind')}: {e.get('from')} -> {e.get('to')} ({e.get('reason')}; "
             f"by {e.get('actor')})" for e in result.get("events") or []]
    ro = result.get("status")
    now = f"now: weights {render_weights(result.get('weights') or {})}"
    if isinstance(ro, dict):
        now += f"; rollout {ro.get('name')} {ro.get('status')} in phase " \
               f"{(ro.get('phase') or {}).get('name')}"
    lines.append(now)
    return "\n".join(lines)
