"""The listener's TLS: its certificate, the CA client certificates are verified against, the CRL.

Client certificates are optional at the TLS layer (API clients use tokens) but
verified when presented; what a certificate may do is decided per request
(:mod:`reportd.auth`). With ``tls_crl`` a revoked client certificate is refused
at the handshake.

The Puppet CA rewrites its CRL at every revocation, so :class:`ServerTLS` builds
a new :class:`ssl.SSLContext` whenever the file changes and each new connection
is set up by the newest one. A fresh context per CRL also means a fresh session
cache: a revoked client cannot resume a session it had before (measured: with
only the verify store swapped, TLS 1.2 and 1.3 resumption skipped the CRL).
Connections opened before the change are closed after their next answer.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import hdrs

from reportd.settings import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    from reportd.config import Config

log = structlog.get_logger("reportd.tls")


def _explained(error: Exception) -> str:
    if "KEY_VALUES_MISMATCH" in str(error):
        return "tls_key is not the private key of tls_cert"
    return str(error)


class ServerTLS:
    """The listener's contexts; :meth:`current` is the one new connections get."""

    def __init__(self, config: Config) -> None:
        assert config.tls_cert is not None and config.tls_key is not None
        self._cert, self._key = config.tls_cert, config.tls_key
        self._ca, self._crl = config.tls_ca, config.tls_crl
        self._crl_state = _file_state(self._crl) if self._crl is not None else None
        try:
            self._context = self._build()
        except (OSError, ValueError) as error:
            raise ConfigError(f"{config.source}: [reportd] TLS: {_explained(error)}") from None

    def listener_context(self) -> ssl.SSLContext:
        """What the listening socket gets: without a CRL the one context, else one that
        hands every new connection to :meth:`current`."""
        if self._crl is None:
            return self._context
        context = _PerConnectionContext(ssl.PROTOCOL_TLS_SERVER)
        context.server_tls = self
        return context

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, built again first if the CRL file changed."""
        if self._crl is None:
            return self._context
        state = _file_state(self._crl)
        if state != self._crl_state:
            # Remembered before the attempt: an unreadable file is reported once, not per connection.
            self._crl_state = state
            try:
                self._context = self._build()
            except (OSError, ValueError) as error:
                log.error("tls_crl_unreadable", path=str(self._crl), error=str(error), kept="previous CRL")
            else:
                log.info("tls_crl_loaded", path=str(self._crl))
        return self._context

    async def close_stale_connections(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: a connection set up before the CRL changed is closed after
        this answer, so its client's next request goes through a handshake with the new CRL."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None and ssl_object.context is not self.current():
            response.force_close()
            # The headers were prepared already; the client should know the connection ends.
            response.headers[hdrs.CONNECTION] = "close"

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._key)
        if self._ca is not None:
            context.load_verify_locations(cafile=self._ca)
            context.verify_mode = ssl.CERT_OPTIONAL
        if self._crl is not None:
            try:
                context.load_verify_locations(cafile=self._crl)
            except ssl.SSLError as error:
                raise ValueError(f"tls_crl {self._crl}: not a PEM CRL ({error.reason or error})") from None
            if not context.cert_store_stats()["crl"]:
                raise ValueError(f"tls_crl {self._crl}: no CRL in it")
            # The leaf only: the Puppet CA's crl.pem need not hold its root's CRL as well.
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context


class _PerConnectionContext(ssl.SSLContext):
    """Given to the listener: each connection is set up by ``server_tls.current()``.

    asyncio calls ``wrap_bio`` once per accepted connection; this context's own
    settings are never used.
    """

    server_tls: ServerTLS

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return self.server_tls.current().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def wrap_socket(self, sock, *args, **kwargs):
        return self.server_tls.current().wrap_socket(sock, *args, **kwargs)


def _file_state(path: Path) -> tuple[int, ...] | None:
    """What changes when the file is rewritten in place or replaced (None: it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
