"""The admin listener: status, weights, rollout actions, events, analysis, metrics, dashboard.

Its own port, apart from the data plane, on the same loop and ``Runtime``.
GET never changes anything. Every mutation is a POST or PUT with
``Authorization: Bearer <token>`` (compared in constant time), a JSON body
of bounded size checked against its schema, and becomes an event naming its
actor. Errors are JSON ``{"error", "detail"}`` with 400/401/404/409/422/413,
turned into responses in one place (``_errors``).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from admin import views
from admin.metrics import build_registry, render
from admin.openapi import SPEC
from proxy.config import Admin, ConfigError, is_loopback
from proxy.controller import ActionError
from proxy.reload import ReloadError, reload
from proxy.routing import ORIGINAL
from proxy.runtime import Runtime
from proxy.state import Event
from proxy.units import parse_duration, parse_percent_bp

RUNTIME = web.AppKey("runtime", Runtime)
REGISTRY = web.AppKey("registry", CollectorRegistry)
TOKEN = web.AppKey("token", str)
EVENTS = web.AppKey("events", list)  # manual-weight events when there is no rollout
STARTED = web.AppKey("started", float)
MAX_BODY = 16 * 1024
UI = Path(__file__).with_name("ui") / "index.html"
ACTIONS = ("advance", "approve", "promote", "pause", "resume", "abort")


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def load_token(cfg: Admin) -> str | None:
    """The admin token: ``VEER_ADMIN_TOKEN``, else ``admin.token_file``; None if neither."""
    token = os.environ.get("VEER_ADMIN_TOKEN", "").strip()
    if token:
        return token
    if cfg.token_file:
        try:
            token = Path(cfg.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RuntimeError(f"admin.token_file {cfg.token_file}: {exc.strerror}") from None
        if not token:
            raise RuntimeError(f"admin.token_file {cfg.token_file} is empty")
        return token
    return None


@web.middleware
async def _errors(request: web.Request,
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
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "body too large",
                                  "detail": f"at most {MAX_BODY} bytes"}, status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "detail": request.path},
                                 status=exc.status)


def _authorise(request: web.Request) -> str:
    """Checks the bearer token; returns the actor for the event."""
    token = request.app.get(TOKEN)
    if token is None:
        raise ApiError(401, "unauthorized", "no admin token is configured (set "
                       "VEER_ADMIN_TOKEN or admin.token_file); mutations are disabled")
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    # surrogateescape: a header with non-UTF-8 bytes (decoded that way) is a wrong token, not a 500
    if not hmac.compare_digest(given.encode(errors="surrogateescape"), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")
    actor = request.headers.get("X-Veer-Actor", "admin").strip()[:64]
    return actor if actor.isprintable() and actor else "admin"


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported media type", "send application/json")
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "body too large", f"at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ApiError(400, "bad json", str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid body", "expected a JSON object")
    return body


def _field(body: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = None,
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


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ApiError(422, "invalid body", f"unknown field(s) {extra}; allowed {list(allowed)}")


def _runner(request: web.Request) -> Any:
    rt = request.app[RUNTIME]
    if rt.rollout is None:
        raise ApiError(409, "conflict", "no rollout is configured")
    return rt.rollout


def _events_out(events: list[Event], request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return web.json_response({"events": [e.to_dict() for e in events],
                              "weights": views.weights(rt),
                              "status": views.rollout(rt)})


# -- read ---------------------------------------------------------------------
async def get_status(request: web.Request) -> web.Response:
    return web.json_response(views.status(request.app[RUNTIME], request.app[STARTED]))


async def get_weights(request: web.Request) -> web.Response:
    return web.json_response(views.weights(request.app[RUNTIME]))


async def get_events(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    q = request.query
    try:
        limit = int(q.get("limit", "50"))
        offset = int(q.get("offset", "0"))
        since = float(q["since"]) if "since" in q else None
    except ValueError:
        raise ApiError(400, "bad query",
                       "limit and offset are integers, since a number") from None
    if not 1 <= limit <= 500 or offset < 0:
        raise ApiError(400, "bad query", "limit must be 1..500 and offset >= 0")
    source = rt.rollout.controller.state.events if rt.rollout else request.app[EVENTS]
    return web.json_response(views.events(source, q.get("kind"), q.get("actor"), since,
                                          limit, offset))


async def get_analysis(request: web.Request) -> web.Response:
    return web.json_response(views.analysis_view(request.app[RUNTIME]))


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(SPEC)


async def get_ui(request: web.Request) -> web.FileResponse:
    return web.FileResponse(UI, headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (format 0.0.4, which every Prometheus reads), rendered now."""
    body = render(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded, not draining, and original has a usable endpoint."""
    rt = request.app[RUNTIME]
    usable = rt.balancers[ORIGINAL].usable_count(rt.loop.time())
    problems = []
    if rt.draining:
        problems.append("draining")
    if usable == 0:
        problems.append("no usable endpoint in original")
    body = {"ready": not problems, "problems": problems, "original_usable_endpoints": usable,
            "config": rt.config.source}
    return web.json_response(body, status=503 if problems else 200)


# -- mutate ---------------------------------------------------------------------
async def put_weights(request: web.Request) -> web.Response:
    """``{"new": 12.5}`` or ``{"original": 90, "new": 10}``; pauses a running plan."""
    actor = _authorise(request)
    body = await _body(request)
    _only(body, ("new", "original"))
    if "new" not in body and "original" not in body:
        raise ApiError(422, "invalid body", "give new (percent) and/or original")
    try:
        new_bp = parse_percent_bp(_field(body, "new", (int, float))) if "new" in body else None
        orig_bp = (parse_percent_bp(_field(body, "original", (int, float)))
                   if "original" in body else None)
    except ValueError:
        raise ApiError(422, "invalid body", "weights are percents 0..100, two decimals") from None
    if new_bp is None:
        assert orig_bp is not None
        new_bp = 10000 - orig_bp
    elif orig_bp is not None and orig_bp + new_bp != 10000:
        raise ApiError(422, "invalid body", "original + new must be 100")
    rt = request.app[RUNTIME]
    if rt.rollout is not None:
        return _events_out(rt.rollout.act("set_weight", actor, weight_bp=new_bp), request)
    event = Event(time.time(), "weight", f"{rt.new_weight_bp / 100:g}%", f"{new_bp / 100:g}%",
                  "manual weight", actor)
    rt.set_weight(new_bp)
    request.app[EVENTS].append(event)
    del request.app[EVENTS][:-500]
    return _events_out([event], request)


async def post_action(request: web.Request) -> web.Response:
    """advance, approve, promote, pause, resume, abort."""
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, "not found", f"unknown action {action!r}")
    actor = _authorise(request)
    body = await _body(request)
    _only(body, ("reason",))
    reason = _field(body, "reason", (str,))
    runner = _runner(request)
    kwargs = {"reason": reason[:500]} if reason and action in ("pause", "abort") else {}
    return _events_out(runner.act(action, actor, **kwargs), request)


async def post_rollback(request: web.Request) -> web.Response:
    """``{"reason", "mode": "immediate"|"gradual"|"targeted", "stages", "interval", "users"}``"""
    actor = _authorise(request)
    body = await _body(request)
    _only(body, ("reason", "mode", "stages", "interval", "users"))
    reason = _field(body, "reason", (str,), "rolled back by hand")[:500]
    mode = _field(body, "mode", (str,), "immediate")
    if mode not in ("immediate", "gradual", "targeted"):
        raise ApiError(422, "invalid body", "mode must be immediate, gradual or targeted")
    kwargs: dict[str, Any] = {"reason": reason, "mode": mode}
    if mode == "gradual":
        stages = _field(body, "stages", (list,))
        if stages is not None:
            if not stages or not all(isinstance(s, int | float) and not isinstance(s, bool)
                                     and 0 <= s <= 1 for s in stages) or stages[-1] != 0:
                raise ApiError(422, "invalid body",
                               "stages are fractions of the weight, 0..1, ending in 0")
            kwargs["stages"] = tuple(float(s) for s in stages)
        interval = _field(body, "interval", (int, float, str))
        if interval is not None:
            try:
                kwargs["interval"] = parse_duration(interval)
            except ValueError:
                raise ApiError(422, "invalid body", "interval is a duration, e.g. 10s") from None
    if mode == "targeted":
        users = _field(body, "users", (list,), required=True)
        if not users or len(users) > 10_000 or not all(isinstance(u, str) and u
                                                       for u in users):
            raise ApiError(422, "invalid body", "users is a non-empty list of user ids")
        kwargs["users"] = users
    return _events_out(_runner(request).act("rollback", actor, **kwargs), request)


async def post_reload(request: web.Request) -> web.Response:
    """Re-read the config file: 200 with what changed, 422 invalid (old config kept), 409
    a change that needs a restart."""
    actor = _authorise(request)
    await _body(request)
    rt = request.app[RUNTIME]
    try:
        changed = reload(rt)
    except ConfigError as exc:
        raise ApiError(422, "invalid config",
                       f"{exc}; still running the previous config") from None
    except ReloadError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    event = Event(time.time(), "reload", "", rt.config.source, ", ".join(changed) or "no changes",
                  actor)
    if rt.rollout is not None:
        rt.rollout.controller.state.events.append(event)
    else:
        request.app[EVENTS].append(event)
    return web.json_response({"reloaded": True, "changed": changed, "config": rt.config.source})


def build_app(rt: Runtime, token: str | None) -> web.Application:
    """The admin application for one runtime."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[RUNTIME] = rt
    app[REGISTRY] = build_registry(rt)
    app[EVENTS] = []
    app[STARTED] = time.time()
    if token is not None:
        app[TOKEN] = token
    r = app.router
    r.add_get("/metrics", metrics)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/status", get_status)
    r.add_get("/weights", get_weights)
    r.add_put("/weights", put_weights)
    r.add_get("/events", get_events)
    r.add_get("/analysis", get_analysis)
    r.add_get("/openapi.json", get_openapi)
    r.add_get("/ui", get_ui)
    r.add_post("/rollout/rollback", post_rollback)
    r.add_post("/reload", post_reload)
    r.add_post("/rollout/{action}", post_action)
    return app


class AdminServer:
    """The admin listener's lifecycle around an ``AppRunner``."""

    def __init__(self, rt: Runtime, token: str | None = None, *,
                 token_from_config: bool = True) -> None:
        self.rt = rt
        if token is None and token_from_config:
            token = load_token(rt.config.admin)
        self.token = token
        self.runner = web.AppRunner(build_app(rt, self.token), access_log=None,
                                    handle_signals=False)
        self._started = False

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("admin server is not listening; call start() first")
        port: int = self.runner.addresses[0][1]
        return port

    async def start(self) -> None:
        listen = self.rt.config.admin.listen
        if self.token is None and not is_loopback(listen.host):
            raise RuntimeError(f"admin.listen {listen} is not a loopback address and no admin "
                               "token is configured (VEER_ADMIN_TOKEN or admin.token_file)")
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, listen.host, listen.port).start()
        except BaseException:
            await self.runner.cleanup()
            raise
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.runner.cleanup()
