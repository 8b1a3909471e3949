"""Config reload (SIGHUP or the admin API) without dropping a connection.

The new file is read and validated whole first; if anything is wrong the old
config keeps running and the error says why. Routing, upstream pools,
timeouts, limits, health and weights (when no rollout drives them) apply to
the next request; endpoints that stay keep their connections and health.
What cannot change in a running process (listeners, the rollout plan, the
state file, the recording window) is refused, naming the key.
"""

from __future__ import annotations

import dataclasses
import time

from proxy.config.load import load
from proxy.config.model import Address, Config, Pool
from proxy.control.state import Event
from proxy.routing.router import NEW, ORIGINAL, Router, Variant
from proxy.runtime.runtime import Runtime
from proxy.upstream.pool import Balancer, Endpoint

FIXED = ("listen", "admin", "rollout", "state")


class ReloadError(Exception):
    """The new config is valid but cannot be applied to a running process."""


def _changed(old: Config, new: Config) -> list[str]:
    out = []
    for f in dataclasses.fields(Config):
        if f.name != "source" and getattr(old, f.name) != getattr(new, f.name):
            out.append(f.name)
    return out


def reload(rt: Runtime, path: str | None = None) -> list[str]:
    """Re-read the config file and apply it; returns the top-level keys that changed.

    Raises ``config.ConfigError`` (invalid file) or ``ReloadError`` (a key that needs a
    restart); in both cases nothing has changed.
    """
    new = load(path or rt.config.source)
    old = rt.config
    changed = _changed(old, new)
    fixed = [k for k in changed if k in FIXED]
    if old.recording.window != new.recording.window:
        fixed.append("recording.window")
    if fixed:
        raise ReloadError(f"{', '.join(fixed)} changed; these need a restart "
                          "(the running config is unchanged)")
    apply(rt, new, changed)
    return changed


def reload_recorded(rt: Runtime, actor: str, path: str | None = None) -> list[str]:
    """``reload``, leaving an event (saved and sent to webhooks with a rollout): the one
    path for SIGHUP and the admin API."""
    changed = reload(rt, path)
    event = Event(time.time(), "reload", "", rt.config.source,
                  ", ".join(changed) or "no changes", actor)
    if rt.rollout is not None:
        rt.rollout.record(event)
    else:
        rt.record(event)
    return changed


def apply(rt: Runtime, new: Config, changed: list[str]) -> None:
    """Swap in ``new``; every request that arrives after this sees it."""
    rt.config = new
    rt.recording = new.recording.enabled
    if "routing" in changed:
        router = Router(new.routing)
        if rt.rollout is not None:
            rt.router = router
            rt.rollout.apply()  # re-adds the phase's testers and the deny-list
        else:
            router.set_overrides()
            rt.router = router
    pools: tuple[tuple[Variant, Pool], ...] = ((ORIGINAL, new.original), (NEW, new.new))
    for variant, pool in pools:
        old = rt.balancers[variant]
        keep: dict[Address, Endpoint] = {ep.address: ep for ep in old.endpoints}
        endpoints = [keep.pop(a) if a in keep else Endpoint(a) for a in pool.endpoints]
        rt.balancers[variant] = Balancer(endpoints, pool.balance, new.health)
        for gone in keep.values():  # removed endpoints: close their idle connections
            for conn in list(gone.idle):
                conn.close()  # type: ignore[attr-defined]
            gone.idle.clear()
    if "new_weight_bp" in changed and rt.rollout is None:
        rt.set_weight(new.new_weight_bp)
