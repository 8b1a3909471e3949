"""TLS for both sides: the listener's certificates (swapped whole on reload) and the
contexts veer connects to ``https://`` upstreams with.

The listener's context never changes once a server holds it; a reload builds a
new context from the files, and the listener's ``sni_callback`` hands every new
handshake the newest one (OpenSSL calls it for every ClientHello, SNI or not).
So a certificate renewed on disk applies from the next handshake after SIGHUP,
connections already open keep theirs, and a bad file changes nothing: the
context is built whole before it is used.

Upstream: verification is on by default, against ``ca`` or the system's CAs,
with the URL's host as SNI and as the name checked; ``verify: false`` must be
written out, and is logged as a warning at every start and reload.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from proxy.config.tls import ListenerTls, UpstreamTls

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ["http/1.1"]  # veer speaks HTTP/1.1: a client that offers h2 falls back to it


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used, named by its config key."""


def _load(ctx: ssl.SSLContext, key: str, cert: str, private: str | None) -> None:
    try:
        ctx.load_cert_chain(cert, private)
    except FileNotFoundError:
        raise TlsError(f"{key}.cert {cert} or {key}.key {private}: no such file") from None
    except PermissionError as exc:
        raise TlsError(f"{key}: {exc.filename}: not readable (permission denied)") from None
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "mismatch" in str(exc) else (
            f"not a PEM certificate and key ({exc.reason or exc})")
        raise TlsError(f"{key}.cert {cert}, {key}.key {private}: {reason}") from None
    except OSError as exc:
        raise TlsError(f"{key}: {exc.filename}: {exc.strerror}") from None


def server_context(cfg: ListenerTls) -> ssl.SSLContext:
    """A listener context from ``cfg``'s files (raises ``TlsError``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[cfg.min_version]
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _load(ctx, "tls", cfg.cert, cfg.key)
    return ctx


class ListenerCertificates:
    """The listener's context and the newest certificates handed to each handshake."""

    def __init__(self, cfg: ListenerTls) -> None:
        self.cfg = cfg
        self.context = self.current = server_context(cfg)  # the server holds .context
        self.context.sni_callback = self._pick
        self.reloads = 0

    def _pick(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self.current

    def use(self, cfg: ListenerTls, fresh: ssl.SSLContext) -> None:
        """Hand ``fresh`` (``server_context(cfg)``, built whole) to every new handshake."""
        self.cfg, self.current = cfg, fresh
        self.reloads += 1


def client_context(cfg: UpstreamTls, key: str,
                   warn: Callable[[str], None] | None = None) -> ssl.SSLContext:
    """The context for one pool's ``https://`` endpoints (raises ``TlsError``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify and check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    if cfg.verify:
        try:
            if cfg.ca is not None:
                ctx.load_verify_locations(cafile=cfg.ca)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except FileNotFoundError:
            raise TlsError(f"{key}.ca {cfg.ca}: no such file") from None
        except ssl.SSLError as exc:
            raise TlsError(f"{key}.ca {cfg.ca}: not a PEM CA file ({exc.reason or exc})") \
                from None
        except OSError as exc:
            raise TlsError(f"{key}.ca {cfg.ca}: {exc.strerror}") from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if warn is not None:
            warn(f"{key}.verify is false: veer does not check who answers on this pool's "
                 "https endpoints (anyone on the path can read and change the traffic)")
    if cfg.cert is not None:
        _load(ctx, key, cfg.cert, cfg.key)
    return ctx
