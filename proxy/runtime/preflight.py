"""What ``veer run`` would refuse at start, found without starting: ``veer check`` and
``veer run`` both ask here first, so the two give the same answer and the same message.

The config file itself is checked by ``proxy.config.load``; these are the files it
names: the listener's certificate and key, each pool's CA and client certificate,
and the access log (appendable).
"""

from __future__ import annotations

import os

from proxy.config.model import Config
from proxy.runtime.access_writer import AccessLogError, open_log
from proxy.wire.tls import TlsError, client_context, server_context


def preflight(cfg: Config) -> list[str]:
    """Every problem found, each naming its config key; empty when ``run`` can start."""
    problems: list[str] = []
    if cfg.tls is not None:
        try:
            server_context(cfg.tls)
        except TlsError as exc:
            problems.append(str(exc))
    for variant, pool in (("original", cfg.original), ("new", cfg.new)):
        if pool.secure:
            try:
                client_context(pool.tls, f"upstreams.{variant}.tls")
            except TlsError as exc:
                problems.append(str(exc))
    if cfg.access_log is not None:
        try:
            os.close(open_log(cfg.access_log.path))
        except AccessLogError as exc:
            problems.append(str(exc))
    return problems
