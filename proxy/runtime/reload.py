"""Config reload (SIGHUP or the admin API) without dropping a connection.

The new file is read and validated whole first; if anything is wrong the old
config keeps running and the error says why. A new snapshot (routing, upstream
pools, timeouts, limits, health) is built and swapped in whole: the next
request of every connection reads it, and endpoints that stay keep their
connections and health. Weights are live state: the config's weight applies
only when no rollout drives it. What cannot change in a running process
(listeners, the rollout plan, the state file, the recording window) is
refused, naming the key. The listener's certificate and key files are read again
on every reload (renewed in place, or new paths): new handshakes get them, open
connections keep theirs.
"""

from __future__ import annotations

import dataclasses

from proxy.config.load import load, parse
from proxy.config.model import Config
from proxy.control.state import Event
from proxy.http.plane import Snapshot
from proxy.runtime.access_writer import AccessLogError
from proxy.runtime.runtime import Runtime
from proxy.wire.tls import TlsError, server_context

FIXED = ("listen", "admin", "rollout", "state", "workers", "cluster", "experiment")
# The model's names for what the config file calls otherwise (what is reported is the file's).
CONFIG_KEYS = {"new_weight_bp": "weights", "original": "upstreams.original",
               "new": "upstreams.new"}


class ReloadError(Exception):
    """The new config is valid but cannot be applied to a running process."""


def _changed(old: Config, new: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(Config)
            if f.name not in ("source", "text") and getattr(old, f.name) != getattr(new, f.name)]


def reload(rt: Runtime, path: str | None = None, text: str | None = None) -> list[str]:
    """Re-read the config file (or take ``text``, a supervisor's) and apply it; returns the
    config file's keys that changed (``weights``, ``upstreams.new``, ``routing``, ...).

    Raises ``ConfigError`` (invalid file) or ``ReloadError`` (a key that needs a
    restart); in both cases nothing has changed.
    """
    source = path or rt.config.source
    new = load(source) if text is None else parse(text, source)
    old = rt.config
    changed = _changed(old, new)
    fixed = [k for k in changed if k in FIXED]
    if old.recording.window != new.recording.window:
        fixed.append("recording.window")
    if (old.tls is None) != (new.tls is None) or (
            old.tls is not None and new.tls is not None
            and old.tls.min_version != new.tls.min_version):
        fixed.append("tls (on or off, min_version; certificate files do reload)")
    if old.experiment is not None and "routing" in changed:
        # A new salt or cohort list would move users between variants mid-experiment, and
        # the split would still look right to the sample-ratio check.
        fixed.append("routing (during an experiment)")
    if fixed:
        raise ReloadError(f"{', '.join(fixed)} changed; these need a restart "
                          "(the running config is unchanged)")
    apply(rt, new, changed)
    return [CONFIG_KEYS.get(k, k) for k in changed]


def reload_recorded(rt: Runtime, actor: str, path: str | None = None,
                    text: str | None = None) -> list[str]:
    """``reload``, leaving an event (saved and sent to webhooks with a rollout): the one
    path for SIGHUP and the admin API."""
    changed = reload(rt, path, text)
    rt.journal.record(Event(rt.clock.wall(), "reload", "", rt.config.source,
                            ", ".join(changed) or "no changes", actor))
    for hook in rt.reload_hooks:  # a supervisor's workers reload too
        hook()
    return changed


def apply(rt: Runtime, new: Config, changed: list[str]) -> None:
    """Swap in ``new``; every request that arrives after this sees it. What can fail
    (certificate, key and CA files, the access log's file) is read first, and a failure
    changes nothing (``ReloadError``)."""
    try:
        # Read again even when the paths are the same: renewed in place is the usual case.
        listener = server_context(new.tls) if new.tls is not None else None
        snapshot = Snapshot.build(new, rt.snapshot)  # upstream TLS contexts
        if "access_log" in changed:
            rt.set_access_log(new.access_log)
    except (TlsError, AccessLogError) as exc:
        raise ReloadError(f"{exc} (the running config is unchanged)") from None
    if listener is not None and new.tls is not None and rt.certificates is not None:
        rt.certificates.use(new.tls, listener)
    rt.swap(snapshot)
    if "new_weight_bp" in changed and rt.rollout is None and rt.weights_from_config:
        rt.live.set_weight(new.new_weight_bp)
    if "mirror" in changed and rt.rollout is None and rt.decides:
        rt.live.set_mirror(new.mirror.percent_bp)
