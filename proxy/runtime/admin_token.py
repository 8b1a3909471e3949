"""The admin API's bearer token and the rule that guards it, for ``run`` and ``check`` alike.

The token comes from ``VEER_ADMIN_TOKEN``, else from ``admin.token_file``; an admin
listener reachable from outside loopback must have one.
"""

from __future__ import annotations

import os
from pathlib import Path

from proxy.config.model import Admin
from proxy.config.net import is_loopback

TOKEN_ENV = "VEER_ADMIN_TOKEN"


def load_token(cfg: Admin) -> str | None:
    """The admin token: ``VEER_ADMIN_TOKEN``, else ``admin.token_file``; None if neither.
    ``RuntimeError`` naming the key when the file cannot be read or is empty."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if cfg.token_file:
        try:
            token = Path(cfg.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RuntimeError(f"admin.token_file {cfg.token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise RuntimeError(f"admin.token_file {cfg.token_file}: not UTF-8 text") from None
        if not token:
            raise RuntimeError(f"admin.token_file {cfg.token_file} is empty")
        return token
    return None


def unguarded(cfg: Admin, token: str | None) -> str | None:
    """Why the admin listener must not start without a token, or None."""
    if token is None and not is_loopback(cfg.listen.host):
        return (f"admin.listen {cfg.listen} is not a loopback address and no admin token is "
                f"configured ({TOKEN_ENV} or admin.token_file)")
    return None
