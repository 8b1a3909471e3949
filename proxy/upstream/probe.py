"""Active health: one probe of one endpoint, and the rise/fall rule over a run of probes.

A probe is ``GET path HTTP/1.1`` on a fresh connection (``Connection: close``),
passed when the status line arrives within the timeout and its status is in
the expected range. Only the status line is read: a health endpoint's body
says nothing the status does not, and a large one must not cost a read.

``judge`` is pure: it counts like results in a row on the endpoint and says
when the endpoint goes down (``unhealthy`` failures in a row while up) or comes
back (``healthy`` passes in a row while down), as HAProxy's ``rise``/``fall``.
A down endpoint's ``ejected_until`` is infinite, so every balancer skips it
with the check it already makes; coming back clears it.
"""

from __future__ import annotations

import asyncio
import math
import ssl

from proxy.config.model import ActiveHealth
from proxy.upstream.endpoint import Endpoint

MAX_STATUS_LINE = 1024


async def probe(ep: Endpoint, cfg: ActiveHealth,
                tls: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """(passed, what was seen: the status, or why there was none); over TLS with ``tls``,
    verified as the data plane's connections are."""
    host = cfg.host.encode() if cfg.host else ep.authority
    request = (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: veer-health-check\r\n"
               b"Connection: close\r\n\r\n" % (cfg.path.encode(), host))
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(cfg.timeout):
            reader, writer = await asyncio.open_connection(
                ep.address.host, ep.address.port, ssl=tls,
                server_hostname=ep.address.host if tls is not None else None,
                limit=MAX_STATUS_LINE)
            writer.write(request)
            line = await reader.readuntil(b"\n")
    except TimeoutError:
        return False, f"no answer within {cfg.timeout:g}s"
    except asyncio.IncompleteReadError:
        return False, "closed before a status line"
    except asyncio.LimitOverrunError:
        return False, "no status line"
    except ssl.SSLError as exc:
        return False, f"TLS: {exc.reason or exc}"
    except OSError as exc:
        return False, f"connect: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.transport.abort()  # nothing more to say or hear; no TLS close dance
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, "not an HTTP/1.x status line"
    status = int(parts[1])
    lo, hi = cfg.expect
    return lo <= status <= hi, str(status)


def judge(ep: Endpoint, passed: bool, seen: str, cfg: ActiveHealth) -> bool | None:
    """Count one probe; True when the endpoint just came back, False when it just went
    down, None when its state stays."""
    ep.probe = seen
    if passed:
        ep.probe_streak = ep.probe_streak + 1 if ep.probe_streak > 0 else 1
        if ep.probe_down and ep.probe_streak >= cfg.healthy:
            ep.probe_down = False
            ep.ejected_until = 0.0
            return True
        return None
    ep.probe_streak = ep.probe_streak - 1 if ep.probe_streak < 0 else -1
    if not ep.probe_down and -ep.probe_streak >= cfg.unhealthy:
        ep.probe_down = True
        ep.ejected_until = math.inf
        return False
    return None


def mark(ep: Endpoint, up: bool) -> None:
    """Take a transition another process judged (a worker, from its supervisor)."""
    if up:
        forget(ep)
    else:
        ep.probe_down, ep.ejected_until = True, math.inf


def forget(ep: Endpoint) -> bool:
    """Active checks were turned off: a down endpoint goes back to passive health alone.
    True if it was down."""
    was = ep.probe_down
    ep.probe_down, ep.probe_streak, ep.probe = False, 0, ""
    if was:
        ep.ejected_until = 0.0
    return was
