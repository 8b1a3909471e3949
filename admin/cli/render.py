"""Plain-text tables from the admin API's JSON (see ``admin.views``), for the operator commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


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
    workers = status.get("workers")
    if isinstance(workers, dict):
        out.append("")
        out.append(f"workers  {workers.get('alive')}/{workers.get('count')} running, "
                   f"{workers.get('restarts')} restarted")
    cluster = status.get("cluster")
    if isinstance(cluster, dict):
        out.append("")
        out.append(render_cluster(cluster))
    return "\n".join(out)


def render_cluster(cluster: Mapping[str, Any]) -> str:
    """The members, which one leads, and when each last reported."""
    me, leader = cluster.get("self"), cluster.get("leader")
    head = (f"cluster  {cluster.get('name')}: leader {leader or 'none (no lease held)'}"
            + ("" if cluster.get("redis_reachable", True) else
               "; Redis unreachable, serving on the last-known weights"))
    rows = [["MEMBER", "ROLE", "LISTEN", "ADMIN", "WORKERS", "LAST REPORT"]]
    for m in cluster.get("members") or []:
        role = "leader" if m.get("id") == leader else "follower"
        rows.append([f"{m.get('id')}{' (this)' if m.get('id') == me else ''}", role,
                     str(m.get("listen", "")), str(m.get("admin", "")),
                     str(m.get("workers", 1)), f"{float(m.get('age_s', 0)):.1f}s ago"])
    return head + "\n" + table(rows, indent="  ")


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
