"""Plain-text tables from the admin API's JSON (see ``admin.views``), for the operator commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.config.plan import Rollout


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
        where = f"{ph.get('name')} ({int(ph.get('index', 0)) + 1}/{len(phases)})"
        stopped = ro.get("stopped")
        rows = [["rollout", f"{ro.get('name')}  {ro.get('status')}"]]
        if isinstance(stopped, dict):
            verb = "aborted" if stopped.get("kind") == "abort" else "rolled back"
            rows += [[verb, f"from phase {stopped.get('phase_name')} "
                            f"({int(stopped.get('phase', 0)) + 1}/{len(phases)}) at weight "
                            f"{percent(stopped.get('weight'))} on new, {when(stopped.get('time'))}"
                            f" by {stopped.get('actor')}"],
                     ["why", str(stopped.get("reason", ""))],
                     ["phase", f"{where} stopped after "
                               f"{duration(float(ph.get('elapsed_s') or 0))}; new now at "
                               f"{percent(ro.get('weight'))}"]]
            if ro.get("status") in ("rolled-back", "aborted"):
                rows.append(["next", "veer retry starts the plan again at phase 1"])
        else:
            rows.append(["phase", f"{where}, weight {percent(ph.get('weight'))}, {elapsed}"])
        rows += [["weights", render_weights(weights)],
                ["verdict", str(ro.get("verdict", "inconclusive"))]]
        if ph.get("approval_required"):
            rows.append(["approval", "given" if ph.get("approved") else
                         "required before leaving this phase (veer approve)"])
        if ro.get("deny_users"):
            rows.append(["denied", ", ".join(map(str, ro["deny_users"]))])
        rows.extend(_experiment_rows(status))
        out.append(table(rows))
        gates = [[str(g.get("gate")), str(g.get("verdict")), str(g.get("detail", ""))]
                 for g in ro.get("gates") or []]
        out.append("gates" + ("" if gates else "    none judged yet (no tick in this phase)"))
        if gates:
            out.append(table([["GATE", "VERDICT", "DETAIL"], *gates], indent="  "))
    else:
        held = isinstance(status.get("experiment"), dict)
        out.append(table([["rollout", "none (the experiment's split)" if held else
                           "none (weights set by hand)"],
                          ["weights", render_weights(weights)], *_experiment_rows(status)]))
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


def _experiment_rows(status: Mapping[str, Any]) -> list[list[str]]:
    """The ``experiment`` row of ``veer status``: its name, decision and SRM flag."""
    exp = status.get("experiment")
    if not isinstance(exp, dict):
        return []
    decision = exp.get("decision")
    text = f"{exp.get('name')}  {percent(exp.get('split'))} on new, "
    text += (f"{decision.get('action')} ({decision.get('reason')})" if isinstance(decision, dict)
             else "no look yet")
    if exp.get("srm_mismatch"):
        text += "; SAMPLE RATIO MISMATCH"
    return [["experiment", text + f"  (veer experiment results {exp.get('name')})"]]


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


def render_gate_needs(rollout: Rollout, rate: float | None) -> str:
    """``veer check``'s account of each phase's gates: the requests on new each needs before
    it can pass, and with ``rate`` the earliest each phase can advance."""
    from proxy.control.requirements import phase_needs, plan_timing

    phases = rollout.phases
    lines = ["gates: the fewest requests each needs before it can pass (exact 95% bounds; "
             "every failure raises the number)"]
    for i, p in enumerate(phases):
        at_least = f", at least {duration(p.duration)}" if p.duration else ""
        approval = ", then approval" if p.approval else ""
        lines.append(f"  {p.name} ({i + 1}/{len(phases)}), weight {p.weight_bp / 100:g}%"
                     f"{at_least}{approval}:")
        lines += [f"    {need.text}" for need in phase_needs(p)]
    if rate is None:
        return "\n".join(lines)
    rows = [["PHASE", "NEEDS", f"AT {rate:g}/s", "MIN DURATION", "EARLIEST", "FROM START"]]
    for t in plan_timing(rollout, rate):
        rows.append([t.phase.name, "-" if t.requests is None else f"{t.requests:,}",
                     "-" if t.requests is None else duration(t.requests / rate),
                     duration(t.phase.duration),
                     "never" if t.earliest is None else duration(t.earliest),
                     "never" if t.total is None else duration(t.total)])
    lines += ["", f"at {rate:g} requests/s on new (no failures, no waiting on approvals or "
                  "hooks), each phase can advance at the earliest:",
              table(rows, right=range(1, 6), indent="  ")]
    return "\n".join(lines)


def render_reload(result: Mapping[str, Any]) -> str:
    """``reloaded veer.yaml: routing.salt, upstreams.new`` or ``... nothing changed``."""
    changed = [str(c) for c in result.get("changed") or []]
    return (f"reloaded {result.get('config')}: "
            + (", ".join(changed) if changed else "nothing changed"))


# -- experiments ----------------------------------------------------------------------
def number(value: object, signed: bool = False) -> str:
    """Four significant digits (``0.8515``, ``+0.04659``), whole numbers from 10,000 on;
    ``-`` for no value."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    sign = "+" if signed else ""
    if abs(value) >= 1e4:
        return f"{value:{sign},.0f}"
    return f"{value:{sign}.4g}"


def lift(value: object) -> str:
    """A relative lift as a signed percent: ``+5.47%``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value * 100:+.2f}%"


def p_value(value: object) -> str:
    """``0.0312``, or ``<0.0001`` for the tiny ones."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def signed(value: object) -> str:
    """``number`` with its sign: ``+0.04659``, ``-0.0012``; plain ``0`` for zero."""
    return "0" if value == 0 and not isinstance(value, bool) else number(value, signed=True)


def interval(pair: object, fmt: Callable[[object], str] = signed) -> str:
    """``lo .. hi``; ``-`` when there is none yet, an unbounded end as ``-inf``/``+inf``."""
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return "-"
    lo, hi = (fmt(v) if v is not None else end for v, end in zip(pair, ("-inf", "+inf"),
                                                                  strict=True))
    return f"{lo} .. {hi}"


def _level(alpha: object) -> str:
    a = float(alpha) if isinstance(alpha, int | float) else 0.05
    return f"{(1 - a) * 100:g}%"


def render_experiments(listing: Mapping[str, Any]) -> str:
    """One row per configured experiment: split, users per variant, decision, metrics."""
    exps = listing.get("experiments") or []
    if not exps:
        return "no experiment is configured (add an experiment: section to veer's config)"
    rows = [["NAME", "SPLIT", "USERS ORIGINAL", "USERS NEW", "DECISION", "STARTED", "METRICS"]]
    for e in exps:
        units = e.get("units") or {}
        metrics = ", ".join(f"{m.get('name')}" + (" (guardrail)" if m.get("role") == "guardrail"
                                                  else "") for m in e.get("metrics") or [])
        rows.append([str(e.get("name")), f"{percent(e.get('split'))} new",
                     str(units.get("original", 0)), str(units.get("new", 0)),
                     str(e.get("decision", "-")), when(e.get("started")), metrics])
    return table(rows, right=(2, 3))


def render_experiment_results(res: Mapping[str, Any]) -> str:
    """The decision and why, the sample-ratio check, users per variant, then each metric:
    both variants' users and means, the difference and lift with the always-valid interval,
    the fixed-horizon p-value, the verdict and the users needed."""
    decision = res.get("decision") or {}
    srm = res.get("srm") or {}
    units = {v: (res.get("variants") or {}).get(v, {}).get("units", 0)
             for v in ("original", "new")}
    observed = srm.get("observed_new")
    share = (f"new has {observed * 100:.1f}% of users, {percent(res.get('split'))} expected"
             if isinstance(observed, int | float) else "no users yet")
    p, chi2 = srm.get("p_value"), srm.get("chi2_p_value")
    srm_p = f"p={p:.3g}" if isinstance(p, int | float) else "p=-"
    if isinstance(chi2, int | float):  # the sequential p decides; the chi-square is beside it
        srm_p += f" always valid, chi-square p={chi2:.3g}"
    rows = [["experiment", f"{res.get('name')}: {percent(res.get('split'))} of users on new, "
                           f"running {duration(float(res.get('elapsed_s') or 0))}"],
            ["decision", f"{decision.get('action', '-')}: {decision.get('reason', '')}"],
            ["srm", (f"MISMATCH: {srm_p} ({share}); the assignment or the logging is broken"
                     if srm.get("mismatch") else f"ok: {srm_p} ({share})")],
            ["users", f"original {units['original']}  new {units['new']}"]]
    if res.get("malformed"):
        rows.append(["ignored", f"{res['malformed']} malformed metric values"])
    dropped = res.get("dropped") or {}
    if dropped.get("units") or dropped.get("values"):
        rows.append(["dropped", f"{dropped.get('units', 0)} users and "
                                f"{dropped.get('values', 0)} values beyond max_users "
                                "(counted, not kept)"])
    out = [table(rows)]
    level = _level(res.get("alpha"))
    for name, m in (res.get("metrics") or {}).items():
        out.append("")
        out.append(_render_metric(str(name), m, level))
    return "\n".join(out)


def _why_no_difference(m: Mapping[str, Any]) -> str:
    """Why a metric has no comparison yet: too few users, or values that do not vary."""
    if m.get("difference") is not None:
        return ""
    if min(int((m.get(v) or {}).get("n") or 0) for v in ("original", "new")) < 2:
        return "  (needs 2 users per variant)"
    return "  (no comparison yet: the values do not vary)"


def _render_metric(name: str, m: Mapping[str, Any], level: str) -> str:
    role = str(m.get("role", "primary"))
    if role == "guardrail" and m.get("margin"):
        role += f" (margin {float(m['margin']) * 100:g}%)"
    head = (f"{name}: {m.get('type')} from {m.get('source')}, {m.get('goal')} is better, "
            f"{role}")
    sides = [["VARIANT", "USERS", "MEAN", "SD"]]
    for v in ("original", "new"):
        s = m.get(v) or {}
        seen = bool(s.get("n"))  # no mean of no users
        sides.append([v, str(s.get("n", 0)), number(s.get("mean")) if seen else "-",
                      number(s.get("sd")) if seen else "-"])
    lift_text = lift(m.get("lift"))
    if m.get("lift_ci") is not None:
        lift_text += f"  ({level} always valid: {interval(m.get('lift_ci'), lift)})"
    elif m.get("difference") is not None and m.get("lift") is None:
        lift_text += "  (original's mean is 0)"
    ci = interval(m.get("ci"))
    if ci != "-":
        ci += f"  ({level} always valid; the decision reads this one)"
    p = p_value(m.get("p_value"))
    if m.get("fixed_ci") is not None:
        p += f"  (fixed horizon; its interval {interval(m.get('fixed_ci'))})"
    rows = [["difference", signed(m.get("difference")) + _why_no_difference(m)],
            ["lift", lift_text], ["interval", ci], ["p-value", p],
            ["verdict", str(m.get("verdict", "inconclusive"))]]
    size = m.get("sample_size")
    if isinstance(size, dict):
        needed = size.get("users_needed")
        now = size.get("users_now", 0)
        mde = size.get("mde")
        effect = f"a {float(mde) * 100:g}% effect" if isinstance(mde, int | float) else "the MDE"
        power = size.get("power")
        at = f" at {float(power) * 100:g}% power" if isinstance(power, int | float) else ""
        if needed is None:
            text = f"unknown yet for {effect}{at} (no spread on original yet); {now} now"
        else:
            eta = size.get("eta_s")
            left = ("reached" if eta == 0 else
                    f"about {duration(float(eta))} to go at the current rate"
                    if isinstance(eta, int | float) else "no estimate of when")
            text = f"{needed} for {effect}{at}; {now} now, {left}"
        rows.append(["users needed", text])
    return "\n".join([head, table(sides, right=(1, 2, 3), indent="  "), table(rows, indent="  ")])
