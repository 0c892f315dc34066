"""TLS proxies (``tls.proxy``): a listed proxy may forward its client's certificate in a header.

Only a connection whose own certificate identity is a configured proxy identity may do so; any
other connection's forwarded header is never even read, so the request is judged on the
connection's own identity (KES parses this configuration but does not enforce it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote_plus

from cryptography import x509

from kesd import errors
from kesd.identity import identity_of_certificate, is_ca_certificate


@dataclass(frozen=True)
class ProxyConfig:
    """Proxy identities and the (lower-case) header that carries the forwarded certificate."""

    identities: frozenset[str]
    header: bytes


_cache: dict[bytes, tuple[str, errors.KesError | None]] = {}
_CACHE_MAX = 1024


def forwarded_identity(
    proxy: ProxyConfig | None, values: list[bytes], forwarded_for: bytes, connection_ip: str
) -> tuple[str, str, errors.KesError | None]:
    """``(identity, client ip, error)`` of a request a proxy forwarded (reference §3.4)."""
    ip = _client_ip(forwarded_for) or connection_ip
    if proxy is None or not values:
        return "", ip, errors.KesError("no client certificate is present", 400)
    if len(values) > 1:
        return "", ip, errors.KesError("too many client certificates are present", 400)
    cached = _cache.get(values[0])
    if cached is None:
        cached = _parse(values[0])
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[values[0]] = cached
    identity, error = cached
    return identity, ip, error


def _parse(value: bytes) -> tuple[str, errors.KesError | None]:
    """The identity of one URL-escaped PEM certificate."""
    invalid = errors.InvalidClientCertificate()
    try:
        text = unquote_plus(value.decode("ascii"))
        blocks = text.count("-----BEGIN ")
        if blocks != 1 or "-----BEGIN CERTIFICATE-----" not in text:
            return "", invalid
        cert = x509.load_pem_x509_certificate(text.encode())
    except (UnicodeError, ValueError):
        return "", invalid
    if is_ca_certificate(cert):
        return "", errors.CertificateRequired()
    return identity_of_certificate(cert), None


def _client_ip(header: bytes) -> str:
    """The first ``X-Forwarded-For`` element, port stripped, if it is an IP address."""
    if not header:
        return ""
    first = header.split(b",", 1)[0].strip().decode("latin-1")
    if first.lower() == "unknown":
        return ""
    for candidate in (first, first.rsplit(":", 1)[0], first.strip("[]"), first.rsplit(":", 1)[0].strip("[]")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return ""
