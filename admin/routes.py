"""The admin API's routes: status, weights, rollout actions, events, analysis, metrics, UI.

GET never changes anything. Every mutation is a POST or PUT with
``Authorization: Bearer <token>`` (compared in constant time), a JSON body
of bounded size checked against its schema, and becomes an event naming its
actor. Errors are JSON ``{"error", "detail"}`` with 400/401/404/409/422/413,
turned into responses in one place (``admin.requests.errors``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from admin import views
from admin.metrics import render
from admin.openapi import SPEC
from admin.requests import (
    EVENTS_MAX_BODY,
    ApiError,
    authorise,
    field,
    only,
    read_body,
)
from proxy.config.reader import ConfigError
from proxy.config.units import parse_duration, parse_percent_bp
from proxy.control.experiments import ExperimentRunner
from proxy.control.metric_events import MAX_EVENTS
from proxy.control.state import Event
from proxy.routing.variant import ORIGINAL
from proxy.runtime.reload import ReloadError, reload_recorded
from proxy.runtime.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STARTED = web.AppKey("started", float)
CACHE = web.AppKey("cache", dict)  # name -> (monotonic time, rendered JSON)
CACHE_TTL = 0.25  # one controller tick
UI = Path(__file__).with_name("ui") / "index.html"
ACTIONS = ("advance", "approve", "promote", "pause", "resume", "abort", "retry")
WITH_REASON = ("pause", "abort", "retry")  # actions whose reason is recorded as given


def _runner(request: web.Request, action: str) -> Any:
    rt = request.app[RUNTIME]
    if rt.rollout is None:
        held = (f"; experiment {rt.experiment.exp.name!r} holds the split"
                if rt.experiment is not None else "")
        raise ApiError(409, "conflict", f"{action} needs a rollout, and none is configured "
                       f"(the config has no rollout: section{held})")
    return rt.rollout


def _events_out(events: list[Event], request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    request.app[CACHE].clear()  # the next read shows the change
    return web.json_response({"events": [e.to_dict() for e in events],
                              "weights": views.weights(rt),
                              "status": views.rollout(rt)})


# -- read ---------------------------------------------------------------------
def _cached(request: web.Request, name: str, build: Callable[[], Any]) -> web.Response:
    """Merging histograms for /status or /analysis costs milliseconds; a crowd of pollers
    (dashboards, scripts, a flood) shares one rendering per CACHE_TTL instead of taking
    the data plane's CPU. A mutation clears the cache."""
    cache = request.app[CACHE]
    now = time.monotonic()
    hit = cache.get(name)
    if hit is None or now - hit[0] > CACHE_TTL:
        hit = cache[name] = (now, json.dumps(build()).encode())
    return web.Response(body=hit[1], content_type="application/json")


async def get_status(request: web.Request) -> web.Response:
    rt, started = request.app[RUNTIME], request.app[STARTED]
    return _cached(request, "status", lambda: views.status(rt, started))


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
    source = rt.journal.events
    return web.json_response(views.events(source, q.get("kind"), q.get("actor"), since,
                                          limit, offset))


async def get_analysis(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return _cached(request, "analysis", lambda: views.analysis_view(rt))


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
    """Ready when the config is loaded, not draining, original has a usable endpoint, and
    (with workers) at least one worker serves."""
    rt = request.app[RUNTIME]
    usable = rt.snapshot.pools.balancers[ORIGINAL].usable_count(rt.loop.time())
    problems = []
    if rt.draining:
        problems.append("draining")
    if usable == 0:
        problems.append("no usable endpoint in original")
    if rt.workers is not None and rt.workers.alive == 0:
        problems.append("no worker serving yet")
    body = {"ready": not problems, "problems": problems, "original_usable_endpoints": usable,
            "config": rt.config.source}
    return web.json_response(body, status=503 if problems else 200)


# -- mutate ---------------------------------------------------------------------
async def put_weights(request: web.Request) -> web.Response:
    """``{"new": 12.5}`` or ``{"original": 90, "new": 10}``; pauses a running plan."""
    actor = authorise(request)
    body = await read_body(request)
    only(body, ("new", "original"))
    if "new" not in body and "original" not in body:
        raise ApiError(422, "invalid body", "give new (percent) and/or original")
    try:
        new_bp = parse_percent_bp(field(body, "new", (int, float))) if "new" in body else None
        orig_bp = (parse_percent_bp(field(body, "original", (int, float)))
                   if "original" in body else None)
    except ValueError:
        raise ApiError(422, "invalid body", "weights are percents 0..100, two decimals") from None
    if new_bp is None:
        assert orig_bp is not None
        new_bp = 10000 - orig_bp
    elif orig_bp is not None and orig_bp + new_bp != 10000:
        raise ApiError(422, "invalid body", "original + new must be 100")
    rt = request.app[RUNTIME]
    if rt.experiment is not None:
        raise ApiError(409, "conflict", f"experiment {rt.experiment.exp.name!r} holds the split "
                       "at experiment.split; end the experiment (a config without it) first")
    if rt.rollout is not None:
        return _events_out(await rt.rollout.act("set_weight", actor, weight_bp=new_bp),
                           request)
    event = Event(rt.clock.wall(), "weight", f"{rt.live.new_weight_bp / 100:g}%",
                  f"{new_bp / 100:g}%", "manual weight", actor)
    if rt.shared_weights is not None:  # a cluster: written for every replica, or not at all
        try:
            await rt.shared_weights.set(event, new_bp)
        except Exception as exc:
            raise ApiError(503, "unavailable",
                           f"the cluster's weight was not written ({exc}); unchanged") from None
    else:
        rt.live.set_weight(new_bp)
    rt.journal.record(event)
    return _events_out([event], request)


async def post_action(request: web.Request) -> web.Response:
    """advance, approve, promote, pause, resume, abort, retry (after a rollback or abort:
    the plan again from phase 0)."""
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, "not found", f"unknown action {action!r}")
    actor = authorise(request)
    body = await read_body(request)
    only(body, ("reason",))
    reason = field(body, "reason", (str,))
    runner = _runner(request, action)
    kwargs = {"reason": reason[:500]} if reason and action in WITH_REASON else {}
    return _events_out(await runner.act(action, actor, **kwargs), request)


async def post_rollback(request: web.Request) -> web.Response:
    """``{"reason", "mode": "immediate"|"gradual"|"targeted", "stages", "interval", "users"}``"""
    actor = authorise(request)
    body = await read_body(request)
    only(body, ("reason", "mode", "stages", "interval", "users"))
    reason = field(body, "reason", (str,), "rolled back by hand")[:500]
    mode = field(body, "mode", (str,), "immediate")
    if mode not in ("immediate", "gradual", "targeted"):
        raise ApiError(422, "invalid body", "mode must be immediate, gradual or targeted")
    kwargs: dict[str, Any] = {"reason": reason, "mode": mode}
    if mode == "gradual":
        stages = field(body, "stages", (list,))
        if stages is not None:
            if not stages or not all(isinstance(s, int | float) and not isinstance(s, bool)
                                     and 0 <= s <= 1 for s in stages) or stages[-1] != 0:
                raise ApiError(422, "invalid body",
                               "stages are fractions of the weight, 0..1, ending in 0")
            kwargs["stages"] = tuple(float(s) for s in stages)
        interval = field(body, "interval", (int, float, str))
        if interval is not None:
            try:
                kwargs["interval"] = parse_duration(interval)
            except ValueError:
                raise ApiError(422, "invalid body", "interval is a duration, e.g. 10s") from None
    if mode == "targeted":
        users = field(body, "users", (list,), required=True)
        if not users or len(users) > 10_000 or not all(isinstance(u, str) and u
                                                       for u in users):
            raise ApiError(422, "invalid body", "users is a non-empty list of user ids")
        kwargs["users"] = users
    return _events_out(await _runner(request, "rollback").act("rollback", actor, **kwargs), request)


async def post_reload(request: web.Request) -> web.Response:
    """Re-read the config file: 200 with what changed, 422 invalid (old config kept), 409
    a change that needs a restart."""
    actor = authorise(request)
    await read_body(request)
    rt = request.app[RUNTIME]
    try:
        changed = reload_recorded(rt, actor)
    except ConfigError as exc:
        raise ApiError(422, "invalid config",
                       f"{exc}; still running the previous config") from None
    except ReloadError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    request.app[CACHE].clear()
    if rt.rollout is not None:
        await rt.rollout.flush()  # the reload's event is saved, or a JSON 503 says it is not
    return web.json_response({"reloaded": True, "changed": changed, "config": rt.config.source})


# -- experiments ------------------------------------------------------------------
def _experiment(request: web.Request) -> ExperimentRunner:
    rt = request.app[RUNTIME]
    name = request.match_info["name"]
    if rt.experiment is None or rt.experiment.exp.name != name:
        known = [rt.experiment.exp.name] if rt.experiment is not None else []
        raise ApiError(404, "not found", f"no experiment {name!r} (configured: {known})")
    return rt.experiment


async def get_experiments(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return web.json_response({"experiments": views.experiments(rt)})


async def get_experiment_results(request: web.Request) -> web.Response:
    runner = _experiment(request)
    rt = request.app[RUNTIME]
    history = request.query.get("history", "false")
    if history not in ("true", "false", "1", "0"):
        raise ApiError(400, "bad query", "history must be true or false")
    body = _cached(request, "experiment", lambda: views.experiment_results(rt, runner))
    if history in ("true", "1"):
        data = json.loads(body.body)  # type: ignore[arg-type]
        data["history"] = [p.to_dict() for p in runner.history]
        return web.json_response(data)
    return body


async def post_experiment_events(request: web.Request) -> web.Response:
    """``{"events": [{"user", "metric", "value"}, ...]}``: outcomes attributed per user."""
    authorise(request)
    _experiment(request)
    body = await read_body(request, EVENTS_MAX_BODY)
    only(body, ("events",))
    events = field(body, "events", (list,), required=True)
    if len(events) > MAX_EVENTS:
        raise ApiError(413, "too many events", f"at most {MAX_EVENTS} per request")
    done = request.app[RUNTIME].record_events(events)
    request.app[CACHE].clear()
    return web.json_response(done.to_dict(), status=200 if done.rejected == 0 else 202)


def add_routes(app: web.Application) -> None:
    """Every route of the admin API on ``app``."""
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
    r.add_get("/experiments", get_experiments)
    r.add_get("/experiments/{name}/results", get_experiment_results)
    r.add_post("/experiments/{name}/events", post_experiment_events)
