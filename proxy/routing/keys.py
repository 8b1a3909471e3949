"""Where a user key or group is read from: the first present of headers, cookies, query."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.config.model import KeySource


def parse_cookies(header: bytes | None) -> dict[str, str]:
    """Name -> value from a Cookie header; malformed pairs are skipped, first wins."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def lookup(sources: tuple[KeySource, ...], headers: Mapping[bytes, bytes],
           cookies: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The first non-empty value among ``sources`` (header names lower-case in ``headers``)."""
    for src in sources:
        if src.kind == "header":
            raw = headers.get(src.name.lower().encode())
            value = raw.decode("latin-1").strip() if raw is not None else ""
        elif src.kind == "cookie":
            value = cookies.get(src.name, "")
        else:
            value = query.get(src.name, "")
        if value:
            return value
    return None
