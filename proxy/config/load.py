"""YAML -> ``Config``: each section read with key paths, each default taken from the model.

Every error names the file, the key path, the bad value and what was expected
(``ConfigError``); the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config.data_plane import read_access_log, read_active_health, read_mirror
from proxy.config.experiment import read_experiment
from proxy.config.model import (
    ANONYMOUS_MODES,
    BALANCE_POLICIES,
    KEY_SOURCES,
    Address,
    Admin,
    Cluster,
    Cohort,
    Config,
    Health,
    KeySource,
    Limits,
    Pool,
    Recording,
    Routing,
    Timeouts,
)
from proxy.config.plan import read_rollout, read_state
from proxy.config.reader import (
    DUR,
    SIZE,
    ConfigError,
    Reader,
    choice,
    default,
    flag,
    int_range,
    list_of,
    names,
    positive,
    read_flat,
    reject,
    text,
)
from proxy.config.tls import UpstreamTls, read_listener_tls, read_upstream_tls
from proxy.config.units import parse_duration, parse_percent_bp


def parse_listen(value: Any) -> Address:
    """``host:port`` (``[::1]:port`` for IPv6) with a port 1..65535 (0 = any free port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError
    host, _, port_text = value.rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError  # an IPv6 host needs brackets: "::1" is not host ":" port 1
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError
    return Address(host, int(port_text))


def parse_endpoint(value: Any) -> Address:
    """``http://host:port`` or ``https://host:port`` (ports 80 and 443 by default)."""
    if not isinstance(value, str):
        raise ValueError
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or \
            parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError
    try:
        port = parts.port
    except ValueError:
        raise ValueError from None
    if port == 0:
        raise ValueError  # not a port one can connect to (was silently turned into 80)
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Address(parts.hostname, port, parts.scheme)


def _key_source(value: Any) -> KeySource:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError
    kind, _, name = value.partition(":")
    if kind not in KEY_SOURCES or not name.strip():
        raise ValueError
    return KeySource(kind, name.strip())


def _read_pool(r: Reader, name: str, others: tuple[str, ...]) -> Pool:
    p = r.section(name)
    form = "a non-empty list of endpoint URLs like http://127.0.0.1:9001"
    raw = p.require("endpoints", lambda v: v if isinstance(v, list) and v else reject(), form)
    endpoints = []
    for i, url in enumerate(raw):  # name the one bad entry, not the whole list
        try:
            endpoints.append(parse_endpoint(url))
        except (ValueError, TypeError):
            raise p.fail(f"endpoints[{i}]", url, "an endpoint URL like http://127.0.0.1:9001 "
                         "(http or https, host, optional port 1..65535, no path)") from None
    balance = p.field(Pool, "balance", choice(BALANCE_POLICIES),
                    " or ".join(BALANCE_POLICIES))
    pick_other = choice(others)
    failover = p.field(Pool, "failover", lambda v: None if v in (None, "none") else pick_other(v),
                     "none or " + " or ".join(others))
    tls = read_upstream_tls(p.section("tls")) if p.has("tls") else UpstreamTls()
    p.done()
    return Pool(tuple(endpoints), balance, failover, tls)


def _read_cohort(r: Reader) -> Cohort:
    users = r.field(Cohort, "users", names, "a list of user ids")
    groups = r.field(Cohort, "groups", names, "a list of group names")
    r.done()
    return Cohort(users, groups)


def _read_routing(r: Reader) -> Routing:
    d = Routing()
    sources = list_of(_key_source)
    src_form = "a list of sources like ['header:X-User-Id', 'cookie:uid', 'query:uid']"
    force = r.section("force")
    routing = Routing(
        salt=r.get("salt", d.salt, text, "a non-empty string"),
        user_key=r.get("user_key", d.user_key, sources, src_form),
        group_key=r.get("group_key", d.group_key, sources, src_form),
        anonymous=r.get("anonymous", d.anonymous, choice(ANONYMOUS_MODES),
                        " or ".join(ANONYMOUS_MODES)),
        cookie_name=r.get("cookie_name", d.cookie_name, text, "a cookie name"),
        cookie_max_age=int(r.get("cookie_max_age", float(d.cookie_max_age), parse_duration,
                                 "a duration")),
        force_enabled=force.get("enabled", d.force_enabled, flag, "true or false"),
        force_header=force.get("header", d.force_header, text, "a header name"),
        force_cookie=force.get("cookie", d.force_cookie, text, "a cookie name"),
        allow=_read_cohort(r.section("allow")),
        deny=_read_cohort(r.section("deny")),
    )
    force.done()
    r.done()
    return routing


def _weight(value: Any) -> int:
    return parse_percent_bp(value)


def from_dict(data: object, source: str = "<config>") -> Config:
    """Build a ``Config`` from parsed YAML, raising ``ConfigError`` on the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, "", data, "a YAML mapping at the top level")
    r = Reader(source, data)
    listen = r.field(Config, "listen", parse_listen,
                   "host:port, e.g. 127.0.0.1:8080")
    a = r.section("admin")
    admin = Admin(
        listen=a.field(Admin, "listen", parse_listen, "host:port, e.g. 127.0.0.1:9901"),
        token_file=a.field(Admin, "token_file", text, "a file path"),
    )
    a.done()
    u = r.section("upstreams")
    if not u.has("original"):
        raise u.fail("original", None, "a pool with endpoints (required)")
    if not u.has("new"):
        raise u.fail("new", None, "a pool with endpoints (required)")
    original = _read_pool(u, "original", ())
    new = _read_pool(u, "new", ("original",))
    u.done()
    routing = _read_routing(r.section("routing"))
    w = r.section("weights")
    new_bp = w.get("new", default(Config, "new_weight_bp"), _weight,
                   "a percent 0..100 with at most two decimals, e.g. 10 or 12.5")
    if w.has("original") and not w.has("new"):  # {original: 90} means new = 10
        new_bp = 10000 - w.get("original", 10000, _weight, "a percent 0..100")
    elif w.has("original"):
        orig_bp = w.get("original", 10000 - new_bp, _weight, "a percent 0..100")
        if orig_bp + new_bp != 10000:
            raise w.fail("original", w.data["original"], f"100 - new = {(10000 - new_bp) / 100:g}")
    w.done()
    timeouts = read_flat(r.section("timeouts"), Timeouts(),
                               {f.name: DUR for f in dataclasses.fields(Timeouts)})
    limits = read_flat(r.section("limits"), Limits(), {
        "max_header_bytes": SIZE, "max_headers": positive(10_000),
        "max_body_bytes": SIZE, "max_concurrent_upstream": positive(1_000_000),
        "max_idle_per_endpoint": (int_range(0, 100_000), "an integer 0..100000"),
        "max_pipelined": positive(1024),
        "max_concurrent_per_client": (int_range(0, 1_000_000), "an integer 0..1000000"),
        "min_body_rate": SIZE,
    })
    h = r.section("health")
    active = read_active_health(h.section("active")) if h.has("active") else None
    health = read_flat(h, Health(active=active), {
        "consecutive_failures": positive(1_000_000), "ejection_time": DUR,
        "max_ejected_percent": (int_range(0, 100), "an integer 0..100"),
    })
    retries = r.field(Config, "connect_retries", int_range(0, 10), "an integer 0..10")
    recording = read_flat(r.section("recording"), Recording(), {
        "enabled": (flag, "true or false"),
        "window": (int_range(10, 3600), "whole seconds 10..3600"),
    })
    rollout = read_rollout(r.section("rollout"))
    state = read_state(r.section("state"))
    upgrades = r.field(Config, "upgrades", _upgrade_tokens,
                     "a list of Upgrade protocol names, e.g. [websocket]")
    workers = r.field(Config, "workers", _workers, "a whole number 1..256, or auto")
    cluster = _read_cluster(r.section("cluster")) if r.has("cluster") else None
    experiment = read_experiment(r.section("experiment")) if r.has("experiment") else None
    access_log = read_access_log(r.section("access_log")) if r.has("access_log") else None
    tls = read_listener_tls(r.section("tls")) if r.has("tls") else None
    mirror = read_mirror(r.section("mirror"))
    if rollout is not None:  # a phase that says nothing mirrors as the config does
        rollout = dataclasses.replace(rollout, phases=tuple(
            p if p.mirror_bp is not None else dataclasses.replace(p, mirror_bp=mirror.percent_bp)
            for p in rollout.phases))
        for i, p in enumerate(rollout.phases):
            if p.gates.max_status_mismatch is not None and not p.shadow:
                raise ConfigError(source, f"rollout.plan[{i}].gates.max_status_mismatch",
                                  p.gates.max_status_mismatch, "a shadow phase (weight 0 with "
                                  "mirror above 0, here or in mirror.percent): only mirrored "
                                  "requests have two answers to compare")
    # Top-level x-* keys are the user's (YAML anchors to share, as in compose files).
    r.done(tuple(k for k in data if isinstance(k, str) and k.startswith("x-")))
    if experiment is not None:
        if rollout is not None:
            raise ConfigError(source, "rollout", "(present)", "no rollout with experiment: "
                              "(an experiment holds its split fixed; run the rollout after it)")
        if w.data:
            raise ConfigError(source, "weights", w.data, "no weights with experiment: "
                              f"(experiment.split sets them: new = {experiment.split_bp / 100:g})")
        new_bp = experiment.split_bp
    if rollout is not None and not recording.enabled:
        raise ConfigError(source, "recording.enabled", False, "true with a rollout: (its "
                          "gates are judged on what the recorder counts; without it a plan "
                          "never advances and a failing release is never rolled back)")
    if cluster is not None and state.path is not None:
        raise ConfigError(source, "state.path", state.path,
                          "no state file with cluster: (the rollout state lives in Redis)")
    if limits.max_header_bytes < 1024:
        raise ConfigError(source, "limits.max_header_bytes", limits.max_header_bytes,
                          "at least 1024 bytes")
    return Config(source=source, original=original, new=new, listen=listen, admin=admin,
                  routing=routing, new_weight_bp=new_bp, timeouts=timeouts, limits=limits,
                  health=health, connect_retries=retries, recording=recording, rollout=rollout,
                  state=state, upgrades=upgrades, workers=workers, cluster=cluster,
                  experiment=experiment, access_log=access_log, tls=tls, mirror=mirror)


def _workers(value: Any) -> int:
    if value == "auto":
        # The CPUs this process may run on, within what a written number may ask for.
        return min(256, len(os.sched_getaffinity(0)) or 1)
    return int_range(1, 256)(value)


def _redis_url(value: Any) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError
    if not urlsplit(value).hostname and urlsplit(value).scheme != "unix":
        raise ValueError
    return value


def _cluster_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 100 or not all(
            c.isalnum() or c in "-_." for c in value):
        raise ValueError
    return value


def _read_cluster(r: Reader) -> Cluster:
    """The ``cluster:`` section."""
    cluster = Cluster(
        redis=r.require("redis", _redis_url, "a Redis URL, e.g. redis://127.0.0.1:6379/0"),
        name=r.require("name", _cluster_name, "a name of letters, digits, - _ ."),
        id=r.field(Cluster, "id", _cluster_name, "a member id of letters, digits, - _ ."),
        lease=r.field(Cluster, "lease", lambda v: _lease(parse_duration(v)),
                      "a duration 0.5s..60s, e.g. 2s"),
        on_unreachable=r.field(Cluster, "on_unreachable", choice(("safe", "refuse")),
                               "safe or refuse"),
    )
    r.done()
    return cluster


def _lease(seconds: float) -> float:
    if not 0.5 <= seconds <= 60:
        raise ValueError
    return seconds


def _upgrade_tokens(value: Any) -> frozenset[str]:
    tokens = names(value)
    if any(not t.isascii() or not t.replace("-", "").replace(".", "").replace("/", "").isalnum()
           for t in tokens):
        raise ValueError
    return frozenset(t.lower() for t in tokens)


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file (the ``Config`` keeps the text it came from)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, "", None, f"a readable file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(name, "", None, "UTF-8 text") from None
    return parse(text, name)


def parse(text: str, name: str) -> Config:
    """Validate YAML ``text`` read from ``name`` (a supervisor's workers run exactly the text
    it validated, whatever the file says by then)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(name, "", where, f"valid YAML ({getattr(exc, 'problem', exc)})") from None
    except Exception as exc:  # PyYAML's constructors leak these: 2001-02-30, !!int x, ...
        raise ConfigError(name, "", None, f"valid YAML ({type(exc).__name__}: {exc})") from None
    return dataclasses.replace(from_dict(data, name), text=text)
