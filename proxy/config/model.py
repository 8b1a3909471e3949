"""The config as frozen, typed objects: every option and its one default, stated here.

Reading YAML into these is ``proxy.config.load``; every option other than the
upstream endpoints has a safe default, and the readers take it from the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from proxy.config.experiment import Experiment
from proxy.config.plan import Rollout, StateConfig
from proxy.config.tls import ListenerTls, UpstreamTls

KEY_SOURCES = ("header", "cookie", "query")
BALANCE_POLICIES = ("round_robin", "least_outstanding")
ANONYMOUS_MODES = ("cookie", "ip")


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on or connect to."""

    host: str
    port: int
    scheme: str = "http"  # an upstream endpoint's: http or https

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Pool:
    """One variant's backend pool."""

    endpoints: tuple[Address, ...]
    balance: str = "round_robin"
    # Where to send a request when this pool cannot: "original" or None.
    failover: str | None = None
    tls: UpstreamTls = UpstreamTls()  # noqa: RUF009 (frozen) for its https:// endpoints

    @property
    def secure(self) -> bool:
        """Some endpoint is https://."""
        return any(a.scheme == "https" for a in self.endpoints)


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a user key (or group) is read from: a header, cookie or query parameter."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Cohort:
    """Users and groups named explicitly (allow- or deny-list)."""

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Routing:
    """How a request is mapped to a user and the user to a variant."""

    salt: str = "veer"
    user_key: tuple[KeySource, ...] = (KeySource("header", "X-User-Id"),)
    group_key: tuple[KeySource, ...] = ()
    anonymous: str = "cookie"
    cookie_name: str = "veer_uid"
    cookie_max_age: int = 365 * 24 * 3600
    force_enabled: bool = False
    force_header: str = "X-Veer-Variant"
    force_cookie: str = "veer_variant"
    allow: Cohort = Cohort()
    deny: Cohort = Cohort()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """All timeouts, in seconds; 0 disables one."""

    connect: float = 2.0
    first_byte: float = 30.0
    idle: float = 60.0
    total: float = 0.0
    client_header: float = 10.0
    client_idle: float = 75.0
    upstream_keepalive: float = 30.0
    drain: float = 30.0
    # A request body must average limits.min_body_rate once this much time has passed.
    body_grace: float = 5.0
    # A client that reads none of its response for this long is cut (nginx's send_timeout).
    client_write: float = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request and per-process bounds; beyond them the client gets 4xx/503."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024**3
    max_concurrent_upstream: int = 1024
    max_idle_per_endpoint: int = 64
    max_pipelined: int = 16
    # In-flight upstream requests from one client address: one client cannot take the
    # whole of max_concurrent_upstream (0 = no per-client limit, e.g. behind another LB).
    max_concurrent_per_client: int = 256
    # Bytes per second a request body must average after timeouts.body_grace (0 = off);
    # Kestrel's MinRequestBodyDataRate. Time spent paused by veer's backpressure is not held
    # against the client.
    min_body_rate: int = 240


@dataclass(frozen=True, slots=True)
class ActiveHealth:
    """Active health checks (``health.active``): HAProxy's defaults, every 2 s, 2 good
    probes to rise and 3 failed ones to fall."""

    path: str = "/healthz"
    interval: float = 2.0
    timeout: float = 1.0
    healthy: int = 2  # good probes in a row that bring a down endpoint back
    unhealthy: int = 3  # failed probes in a row that take an endpoint out
    expect: tuple[int, int] = (200, 399)  # statuses that pass, inclusive
    host: str | None = None  # the Host header; default the endpoint's host:port


@dataclass(frozen=True, slots=True)
class Health:
    """Passive health (eject after consecutive failures, for a time, never all) and,
    when configured, active health checks."""

    consecutive_failures: int = 5
    ejection_time: float = 30.0
    max_ejected_percent: int = 50
    active: ActiveHealth | None = None


@dataclass(frozen=True, slots=True)
class Recording:
    """Latency recording: HDR histograms in a ring of 1-second slots."""

    enabled: bool = True
    window: int = 60  # seconds of 1 s slots kept: the longest window a query can ask for


ACCESS_LOG_FORMATS = ("json", "combined")


@dataclass(frozen=True, slots=True)
class Mirror:
    """Copies of original's requests sent to new as well (``mirror:``); their answers are
    judged and discarded, never sent to the client."""

    percent_bp: int = 0  # of original's requests (basis points)
    # Idempotent methods only by default: a copy must not do what the request does twice.
    methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
    max_body: int = 64 * 1024  # bytes of request body a copy may carry (else not copied)
    queue: int = 256  # copies in flight at once; beyond it one is dropped and counted
    timeout: float = 5.0  # a copy's answer must be complete within this


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One line per request (``access_log:``), off by default."""

    path: str  # a file appended to, or "-" for standard output
    format: str = "json"  # or "combined" (nginx's and Apache's)


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin listener."""

    listen: Address = Address("127.0.0.1", 9901)
    token_file: str | None = None


@dataclass(frozen=True, slots=True)
class Cluster:
    """Replicas sharing one rollout through Redis (``cluster:``)."""

    redis: str  # redis://host:port/db
    name: str  # replicas with the same name share one rollout
    id: str | None = None  # this member's id; default host:pid
    lease: float = 2.0  # seconds the controller's lease lasts unless renewed
    on_unreachable: str = "safe"  # Redis away at start: start on all-original, or refuse


@dataclass(frozen=True, slots=True)
class Config:
    """The whole effective config."""

    source: str
    original: Pool
    new: Pool
    listen: Address = Address("127.0.0.1", 8080)
    admin: Admin = Admin()
    routing: Routing = Routing()
    new_weight_bp: int = 0
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    health: Health = Health()
    connect_retries: int = 1
    recording: Recording = Recording()
    rollout: Rollout | None = None
    state: StateConfig = StateConfig()  # noqa: RUF009 (frozen, so sharing it is safe)
    # Upgrade protocols tunnelled after the backend's 101. Any other Upgrade (h2c above
    # all) has its Upgrade header removed and is served as plain HTTP/1.1, as Envoy does.
    upgrades: frozenset[str] = frozenset({"websocket"})
    workers: int = 1  # processes on this host sharing the listener
    cluster: Cluster | None = None
    experiment: Experiment | None = None
    access_log: AccessLog | None = None
    tls: ListenerTls | None = None  # the listener serves HTTPS
    mirror: Mirror = Mirror()
    # The YAML it was read from: where the config came from, not a setting (not compared,
    # not printed by veer check); a supervisor hands it to its workers.
    text: str = dataclasses.field(default="", compare=False, repr=False)
