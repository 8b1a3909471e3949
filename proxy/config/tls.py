"""TLS settings: the listener's (``tls:``) and each pool's towards https upstreams
(``upstreams.<variant>.tls:``), with their readers."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config.reader import Reader, choice, flag, text

TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """The data-plane listener serves HTTPS with these PEM files."""

    cert: str  # the certificate chain, leaf first
    key: str
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How veer connects to a pool's https:// endpoints."""

    ca: str | None = None  # PEM CA file to verify against; None: the system's CAs
    verify: bool = True  # false must be written out, and is logged as a warning
    cert: str | None = None  # a client certificate (mTLS), with key
    key: str | None = None


def read_listener_tls(r: Reader) -> ListenerTls:
    """The top-level ``tls:`` section."""
    cfg = ListenerTls(
        cert=r.require("cert", text, "a PEM certificate file path"),
        key=r.require("key", text, "a PEM private key file path"),
        min_version=r.field(ListenerTls, "min_version", choice(TLS_VERSIONS),
                            " or ".join(repr(v) for v in TLS_VERSIONS)),
    )
    r.done()
    return cfg


def read_upstream_tls(r: Reader) -> UpstreamTls:
    """A pool's ``tls:`` section."""
    cfg = UpstreamTls(
        ca=r.field(UpstreamTls, "ca", text, "a PEM CA file path"),
        verify=r.field(UpstreamTls, "verify", flag, "true or false"),
        cert=r.field(UpstreamTls, "cert", text, "a PEM client certificate file path"),
        key=r.field(UpstreamTls, "key", text, "a PEM private key file path"),
    )
    if (cfg.cert is None) != (cfg.key is None):
        missing = "key" if cfg.key is None else "cert"
        raise r.fail(missing, None, "cert and key together (a client certificate needs both)")
    if not cfg.verify and cfg.ca is not None:
        raise r.fail("ca", cfg.ca, "no ca with verify: false (nothing is verified)")
    r.done()
    return cfg
