"""What ``veer run`` would refuse at start, found without starting: ``veer check`` and
``veer run`` both ask here first, so the two give the same answer and the same message.

The config file itself is checked by ``proxy.config.load``; these are the files it
names and what the process needs around it: the listener's certificate and key, each
pool's CA and client certificate, the access log (appendable), the admin token (its
file readable; required off loopback) and the state file's directory (writable).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from proxy.config.model import Config
from proxy.runtime.access_writer import AccessLogError, open_log
from proxy.runtime.admin_token import load_token, unguarded
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
    try:
        problem = unguarded(cfg.admin, load_token(cfg.admin))
    except RuntimeError as exc:
        problem = str(exc)
    if problem is not None:
        problems.append(problem)
    if cfg.rollout is not None and cfg.state.path is not None and cfg.cluster is None:
        problem = state_directory_problem(cfg.state.path)
        if problem is not None:
            problems.append(problem)
    return problems


def state_directory_problem(path: str) -> str | None:
    """Whether the state file can be written where it is configured: a real file made and
    removed in its directory (or the nearest one that exists, which run would create the
    rest under), so a read-only mount or a directory owned by another user is caught."""
    if Path(path).is_dir():
        return f"state.path {path} is a directory; expected a file path in one"
    where = Path(path).absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return f"state.path {path}: {where} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".veer-check-", dir=where)
    except OSError as exc:
        return f"state.path {path}: cannot write in {where} ({exc.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None
