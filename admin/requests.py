"""Requests and answers of the admin API: bearer-token auth, JSON bodies, JSON errors.

Typed errors become HTTP statuses in one place, the ``errors`` middleware.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.control.controller import ActionError
from proxy.control.rollout import StateSaveError

TOKEN = web.AppKey("token", str)
MAX_BODY = 16 * 1024
EVENTS_MAX_BODY = 2 * 1024 * 1024  # a batch of outcome events (POST /experiments/*/events)


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


@web.middleware
async def errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.error, "detail": exc.detail}, status=exc.status,
                                 headers={"WWW-Authenticate": "Bearer"}
                                 if exc.status == 401 else None)
    except ActionError as exc:
        return web.json_response({"error": "conflict", "detail": str(exc)}, status=409)
    except StateSaveError as exc:
        return web.json_response({"error": "state not saved", "detail": str(exc)}, status=503)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "body too large",
                                  "detail": f"at most {EVENTS_MAX_BODY} bytes"},
                                 status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "detail": request.path},
                                 status=exc.status)


def authorise(request: web.Request) -> str:
    """Checks the bearer token; returns the actor for the event."""
    token = request.app.get(TOKEN)
    if token is None:
        raise ApiError(401, "unauthorized", "no admin token is configured (set "
                       "VEER_ADMIN_TOKEN or admin.token_file); mutations are disabled")
    values = request.headers.getall("Authorization", [])
    if len(values) > 1:  # which one counts would depend on who reads it: neither
        raise ApiError(400, "bad request", "more than one Authorization header")
    header = values[0] if values else ""
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    # surrogateescape: a header with non-UTF-8 bytes (decoded that way) is a wrong token, not a 500
    if not hmac.compare_digest(given.encode(errors="surrogateescape"), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")
    actor = request.headers.get("X-Veer-Actor", "admin").strip()[:64]
    return actor if actor.isprintable() and actor else "admin"


async def read_body(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The JSON object in the body, of at most ``limit`` bytes."""
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported media type", "send application/json")
    if (request.content_length or 0) > limit:
        raise ApiError(413, "body too large", f"at most {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        raise ApiError(413, "body too large", f"at most {limit} bytes")
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys) if raw.strip() else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ApiError(400, "bad json", str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid body", "expected a JSON object")
    return body


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys repeat is refused: the last would win silently."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def field(body: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = None,
           required: bool = False) -> Any:
    if key not in body:
        if required:
            raise ApiError(422, "invalid body", f"{key} is required")
        return default
    value = body[key]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ApiError(422, "invalid body", f"{key} must be {names}")
    return value


def only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ApiError(422, "invalid body", f"unknown field(s) {extra}; allowed {list(allowed)}")
