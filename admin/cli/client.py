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

Rendering the answers lives in ``admin.cli.render``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from typing import Any

from proxy.config.net import is_loopback

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

    def experiments(self) -> JSON:
        """GET /experiments: each configured experiment, its split, metrics and decision."""
        return self.request("GET", "/experiments")

    def experiment_results(self, name: str, history: bool = False) -> JSON:
        """GET /experiments/<name>/results: the numbers, the SRM check and the decision."""
        return self.request("GET", f"/experiments/{urllib.parse.quote(name, safe='')}/results",
                            query={"history": "true"} if history else None)

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
        """POST /rollout/<action>: advance, approve, promote, pause, resume, abort or retry."""
        return self.request("POST", f"/rollout/{action}", {"reason": reason} if reason else {})

    def reload(self) -> JSON:
        """POST /reload: re-read the config file (refused whole if it is invalid)."""
        return self.request("POST", "/reload", {})

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
