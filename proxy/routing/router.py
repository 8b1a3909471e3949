"""The routing decision for one request: force (opt-in), allow-list, deny-list, then the bucket.

The ``Router`` is built from the config alone and never changes (a reload builds
a new one); what changes at run time (the weight, a phase's testers, a targeted
rollback) comes in as ``LiveState`` on each call. Pure apart from new uids.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

from proxy.config.model import Routing
from proxy.routing.hashing import bucket, choose
from proxy.routing.keys import lookup, parse_cookies
from proxy.routing.live import LiveState
from proxy.routing.variant import NEW, ORIGINAL, VARIANTS, Variant


class Decision:
    """Where one request goes and why; made once, at arrival, and never changed.

    A plain class, not a dataclass: the __init__ a dataclass generates is Python that mypyc
    does not compile, one interpreted call per request."""

    __slots__ = ("reason", "set_cookie", "user", "variant")

    def __init__(self, variant: Variant, reason: str, user: str,
                 set_cookie: str | None = None) -> None:
        self.variant = variant
        self.reason = reason  # "force", "allow", "deny", "weight"
        self.user = user
        # A veer_uid value to set on the response (anonymous cookie mode, first visit).
        self.set_cookie = set_cookie

    def _fields(self) -> tuple[Variant, str, str, str | None]:
        return self.variant, self.reason, self.user, self.set_cookie

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return (f"Decision(variant={self.variant!r}, reason={self.reason!r}, "
                f"user={self.user!r}, set_cookie={self.set_cookie!r})")


class Router:
    """Applies the routing config to one request's headers."""

    def __init__(self, cfg: Routing, new_uid: Callable[[], str] = lambda: os.urandom(12).hex()):
        self.cfg = cfg
        self._new_uid = new_uid
        self._force_header = cfg.force_header.lower().encode() if cfg.force_enabled else None
        #: Whether ``route`` reads the query string (callers may skip splitting it out).
        self.needs_query = any(s.kind == "query" for s in cfg.user_key + cfg.group_key)
        self._allow_users, self._allow_groups = cfg.allow.users, cfg.allow.groups
        self._deny_users, self._deny_groups = cfg.deny.users, cfg.deny.groups
        first = cfg.user_key[0] if cfg.user_key else None
        fast = (first is not None and first.kind == "header" and self._force_header is None
                and not (self._allow_groups or self._deny_groups))
        # The first key source when it is a header and nothing else needs parsing.
        self._fast_header = first.name.lower().encode() if fast and first else None
        names = {s.name.lower().encode() for s in cfg.user_key + cfg.group_key
                 if s.kind == "header"}
        names.add(b"cookie")
        if self._force_header:
            names.add(self._force_header)
        #: Lower-case header names the inbound side must capture for routing.
        self.header_names: frozenset[bytes] = frozenset(names)

    def allowed_users(self, live: LiveState) -> frozenset[str]:
        """Users put on new by the config and at run time."""
        return self._allow_users | live.allow_users

    def denied_users(self, live: LiveState) -> frozenset[str]:
        """Users kept on original by the config and at run time."""
        return self._deny_users | live.deny_users

    def variant_of(self, user: str, live: LiveState) -> Variant:
        """Where a request from ``user`` with no groups and no force would go now."""
        if user in self._allow_users or user in live.allow_users:
            return NEW
        if user in self._deny_users or user in live.deny_users:
            return ORIGINAL
        return choose(bucket(self.cfg.salt, user), live.new_weight_bp)

    def route(self, headers: Mapping[bytes, bytes], query: bytes, client_ip: str,
              live: LiveState) -> Decision:
        """Decide the variant: force (opt-in), allow-list, deny-list, then the weighted bucket.

        ``headers`` maps lower-case names (those in ``header_names``) to values.
        """
        cfg = self.cfg
        if self._fast_header is not None and not live.allow_groups:
            # The common case, kept cheap: the first key source is a header that is present,
            # and neither force nor groups are in play; no cookie or query parsing.
            raw = headers.get(self._fast_header)
            key = raw.decode("latin-1").strip() if raw else ""
            if key:
                if key in self._allow_users or key in live.allow_users:
                    return Decision(NEW, "allow", key)
                if key in self._deny_users or key in live.deny_users:
                    return Decision(ORIGINAL, "deny", key)
                return Decision(choose(bucket(cfg.salt, key), live.new_weight_bp), "weight", key)
        cookies = parse_cookies(headers.get(b"cookie"))
        qs = dict(parse_qsl(query.decode("latin-1"))) if self.needs_query and query else {}
        user = lookup(cfg.user_key, headers, cookies, qs)
        set_cookie = None
        if user is None:
            if cfg.anonymous == "cookie":
                user = cookies.get(cfg.cookie_name) or None
                if user is None:
                    user = set_cookie = self._new_uid()
            else:
                user = client_ip
        if self._force_header is not None:
            forced = headers.get(self._force_header)
            forced_text = forced.decode("latin-1").strip().lower() if forced else ""
            forced_text = forced_text or cookies.get(cfg.force_cookie, "").lower()
            if forced_text in VARIANTS:
                return Decision(NEW if forced_text == NEW else ORIGINAL, "force", user, set_cookie)
        groups: frozenset[str] = frozenset()
        allow_groups = live.allow_groups
        if self._allow_groups or self._deny_groups or allow_groups:
            # A group source may list several groups: "staff, beta".
            raw_groups = lookup(cfg.group_key, headers, cookies, qs) or ""
            groups = frozenset(g.strip() for g in raw_groups.split(",") if g.strip())
        if (user in self._allow_users or user in live.allow_users
                or not groups.isdisjoint(self._allow_groups)
                or not groups.isdisjoint(allow_groups)):
            return Decision(NEW, "allow", user, set_cookie)
        if (user in self._deny_users or user in live.deny_users
                or not groups.isdisjoint(self._deny_groups)):
            return Decision(ORIGINAL, "deny", user, set_cookie)
        return Decision(choose(bucket(cfg.salt, user), live.new_weight_bp), "weight", user,
                        set_cookie)
