"""Who is asking, and what they may do.

Three kinds of credential, any of which may grant permissions:

* a TLS client certificate verified against ``tls_ca`` (and ``tls_crl``): a node
  may upload its own reports only, its certificate's CN being its certname as in
  Puppet's ``auth.conf`` (DNS SANs too with ``node_names_from_san``); a
  certificate whose CN is named in ``trusted_forwarders`` may upload for any node;
* an API token (``Authorization: Bearer``, ``X-Authentication``,
  ``X-Data-Collector-Token`` or the password of HTTP Basic), stored hashed,
  carrying named permissions;
* the client's address inside ``anonymous_networks``, which grants
  ``anonymous_permissions``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reportd.permissions import PERMISSIONS, UPLOAD, VIEW_REPORTS  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from aiohttp import web

    from reportd.config import Config

TOKEN_PREFIX = "rpd_"


@dataclass(frozen=True)
class TokenRecord:
    name: str
    permissions: frozenset[str]
    expires_at: float | None = None  # UNIX time; None: never

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class Identity:
    """The caller as far as reportd can tell.

    ``node_names`` is set when a node certificate (not a trusted forwarder) was
    presented: such a caller may only upload reports for one of those names.
    """

    subject: str
    permissions: frozenset[str]
    node_names: frozenset[str] | None = None

    def allows(self, permission: str) -> bool:
        return permission in self.permissions or "admin" in self.permissions

    def may_upload_for(self, certname: str) -> bool:
        if not self.allows(UPLOAD):
            return False
        return self.node_names is None or certname in self.node_names


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is as good as a slow one here.
    return hashlib.sha256(token.encode()).hexdigest()


def certificate_certname(peercert: dict | None) -> str | None:
    """The certname of a verified peer certificate: its CN, as Puppet takes it.

    None without a certificate, and for a subject with no CN or several (no
    certname Puppet's CA issues looks like that, so none is guessed).
    """
    if not peercert:
        return None
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if len(names) == 1 else None


def certificate_san_names(peercert: dict | None) -> frozenset[str]:
    """The DNS names in a verified peer certificate's subjectAltName."""
    if not peercert:
        return frozenset()
    return frozenset(value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")


def request_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    # the orchestrator's header, and the Chef data collector's
    return request.headers.get("X-Authentication") or request.headers.get("X-Data-Collector-Token") or None


class Authenticator:
    """Turns a request into an :class:`Identity`; one per application."""

    def __init__(
        self,
        config: Config,
        find_token: Callable[[str], Awaitable[TokenRecord | None]],
        *,
        cache_seconds: float = 5.0,
    ) -> None:
        self._networks = config.anonymous_networks
        self._anonymous = config.anonymous_permissions
        self._forwarders = config.trusted_forwarders
        self._names_from_san = config.node_names_from_san
        self._find_token = find_token
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}
        # Revocation takes effect within this many seconds; expiry on time.
        self._cache_seconds = cache_seconds

    async def identify(self, request: web.Request) -> Identity:
        permissions: set[str] = set()
        subjects: list[str] = []
        node_names: frozenset[str] | None = None

        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        certname = certificate_certname(peercert)
        if certname is not None:
            subjects.append("cert:" + certname)
            permissions.add(UPLOAD)
            # Puppet's auth.conf matches the CN alone; a DNS SAN names a service the node
            # may offer (dns_alt_names), not who it is, so it never makes a forwarder.
            if certname not in self._forwarders:
                node_names = frozenset({certname})
                if self._names_from_san:
                    node_names |= certificate_san_names(peercert)

        token = request_token(request)
        if token:
            record = await self._lookup(token)
            if record is not None:
                subjects.append("token:" + record.name)
                permissions.update(record.permissions)

        if self._networks and in_networks(request.remote, self._networks):
            subjects.append("anonymous")
            permissions.update(self._anonymous)

        return Identity(" ".join(subjects) or "nobody", frozenset(permissions), node_names)

    async def _lookup(self, token: str) -> TokenRecord | None:
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            record = cached[1]
        else:
            record = await self._find_token(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, record)
        # Checked at every use, cached or not: an expired token is refused like a revoked one.
        if record is not None and record.expired(time.time()):
            return None
        return record


def in_networks(remote: str | None, networks) -> bool:
    """Whether the address ``remote`` (IPv4-mapped IPv6 as IPv4) is inside one of ``networks``."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
