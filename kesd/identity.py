"""Identities (pure): the SHA-256 of a certificate's SubjectPublicKeyInfo, API keys, new identities.

A KES identity is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of the client's leaf
certificate (reference §3.1). API keys (``kes:v1:…``) wrap an Ed25519 seed; SDK clients present a
self-signed certificate made from it. ``kes identity new`` makes Ed25519 identities (§8.2).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kesd.pem import encrypt_legacy

if TYPE_CHECKING:  # the type alias has this name only from cryptography 40 on
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

_OwnPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_OwnPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

API_KEY_PREFIX = "kes:v1:"
_API_KEY_ED25519 = 0
_API_KEY_LENGTH = 33
# Standard base64 with padding, as Go's base64.StdEncoding accepts it (CR/LF removed beforehand).
_STD_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
CLIENT_CERT_VALIDITY = timedelta(days=90)
SERVER_CERT_VALIDITY = timedelta(days=90)
DEFAULT_IDENTITY_EXPIRY = timedelta(hours=720)

_SEQUENCE = 0x30
_EXPLICIT_0 = 0xA0
_INTEGER = 0x02


def identity_of_spki(spki_der: bytes) -> str:
    """The identity of a DER SubjectPublicKeyInfo: lowercase hex SHA-256 (64 characters)."""
    return hashlib.sha256(spki_der).hexdigest()


def identity_of_der(cert_der: bytes) -> str:
    """The identity of a DER certificate, without a full X.509 parse (one call per connection)."""
    return identity_of_spki(subject_public_key_info(cert_der))


def identity_of_certificate(cert: x509.Certificate) -> str:
    """The identity of a parsed certificate (hashes its SPKI exactly as encoded in the certificate)."""
    return identity_of_der(cert.public_bytes(serialization.Encoding.DER))


def identity_of_public_key(public_key: PublicKeyTypes) -> str:
    """The identity of a public key: SHA-256 over its DER SubjectPublicKeyInfo encoding."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return identity_of_spki(spki)


def subject_public_key_info(cert_der: bytes) -> bytes:
    """The raw DER SubjectPublicKeyInfo of a DER certificate, byte-exact (Go's RawSubjectPublicKeyInfo).

    Raises ValueError if the bytes are not a DER certificate structure.
    """
    tag, start, end = _tlv(cert_der, 0)
    if tag != _SEQUENCE or end != len(cert_der):
        raise ValueError("malformed certificate: not a DER SEQUENCE")
    tag, pos, tbs_end = _tlv(cert_der, start)
    if tag != _SEQUENCE:
        raise ValueError("malformed certificate: no TBSCertificate")
    tag, _, after = _tlv(cert_der, pos)
    if tag == _EXPLICIT_0:
        pos = after
        tag, _, after = _tlv(cert_der, pos)
    if tag != _INTEGER:
        raise ValueError("malformed certificate: no serial number")
    pos = after
    for _field in ("signature algorithm", "issuer", "validity", "subject"):
        tag, _, pos = _tlv(cert_der, pos)
        if tag != _SEQUENCE:
            raise ValueError(f"malformed certificate: bad {_field}")
    tag, _, spki_end = _tlv(cert_der, pos)
    if tag != _SEQUENCE or spki_end > tbs_end:
        raise ValueError("malformed certificate: no SubjectPublicKeyInfo")
    return bytes(cert_der[pos:spki_end])


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """Decode the DER header at ``pos``: (tag, start of contents, end of element)."""
    if pos + 2 > len(der):
        raise ValueError("malformed certificate: truncated")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("malformed certificate: bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(der):
        raise ValueError("malformed certificate: truncated")
    return tag, pos, end


def is_ca_certificate(cert: bytes | x509.Certificate) -> bool:
    """True if the certificate (DER or parsed) has BasicConstraints CA:TRUE; KES skips such peers."""
    if not isinstance(cert, x509.Certificate):
        cert = x509.load_der_x509_certificate(bytes(cert))
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.value.ca)


def parse_api_key(text: str) -> ed25519.Ed25519PrivateKey:
    """Parse ``kes:v1:`` + base64(0x00 ‖ 32-byte Ed25519 seed); ValueError (without key bytes) otherwise."""
    encoded = text.removeprefix(API_KEY_PREFIX).replace("\r", "").replace("\n", "")
    if _STD_BASE64.fullmatch(encoded) is None:
        raise ValueError("invalid API key: not 'kes:v1:' followed by base64")
    raw = base64.b64decode(encoded)
    if len(raw) != _API_KEY_LENGTH:
        raise ValueError("invalid API key: wrong length")
    if raw[0] != _API_KEY_ED25519:
        raise ValueError("invalid API key: unsupported key type")
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:])


def format_api_key(key: ed25519.Ed25519PrivateKey) -> str:
    """The ``kes:v1:…`` text of an Ed25519 private key."""
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return API_KEY_PREFIX + base64.b64encode(bytes([_API_KEY_ED25519]) + seed).decode("ascii")


@dataclass(frozen=True)
class NewIdentity:
    """A new identity as ``kes identity new`` makes it; key material is kept out of the repr."""

    private_key_pem: bytes = field(repr=False)
    certificate_pem: bytes = field(repr=False)
    identity: str
    api_key: str = field(repr=False)


def new_identity(
    subject: str | None,
    *,
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    expiry: timedelta = DEFAULT_IDENTITY_EXPIRY,
    now: datetime | None = None,
    password: bytes | None = None,
) -> NewIdentity:
    """A fresh Ed25519 key, its API key and a self-signed client+server certificate (§8.2).

    The key PEM is PKCS#8 ``PRIVATE KEY``, or PKCS#8 ``ENCRYPTED PRIVATE KEY`` with ``password``.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    identity = identity_of_public_key(key.public_key())
    start = _utc_seconds(now)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = _builder(subject or identity, key.public_key(), start, start + expiry)
    builder = _add_common_extensions(
        builder, [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH], sans
    )
    cert = builder.sign(key, None)
    return NewIdentity(
        private_key_pem=_private_pem(key, password),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        identity=identity,
        api_key=format_api_key(key),
    )


def self_signed_client_cert(key: ed25519.Ed25519PrivateKey, now: datetime | None = None) -> x509.Certificate:
    """The certificate an SDK client with an API key presents: CN = identity, 90 days, ClientAuth."""
    start = _utc_seconds(now)
    identity = identity_of_public_key(key.public_key())
    builder = _builder(identity, key.public_key(), start, start + CLIENT_CERT_VALIDITY)
    builder = _add_common_extensions(builder, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return builder.sign(key, None)


def new_server_identity(
    hosts: Sequence[str], *, now: datetime | None = None, expiry: timedelta = SERVER_CERT_VALIDITY
) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 server certificate for dev mode: (PKCS#8 key PEM, certificate PEM).

    CN is ``localhost``; each host becomes an IP SAN if it parses as an IP address, else a DNS SAN.
    """
    if not hosts:
        raise ValueError("a server certificate needs at least one IP address or DNS name")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _utc_seconds(now)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = _builder("localhost", key.public_key(), start, start + expiry)
    builder = _add_common_extensions(builder, [ExtendedKeyUsageOID.SERVER_AUTH], sans)
    cert = builder.sign(key, hashes.SHA256())
    return _private_pem(key, None), cert.public_bytes(serialization.Encoding.PEM)


def random_serial() -> int:
    """A random positive serial number below 2**128 (Go's ``rand.Int(rand.Reader, 1<<128)``, minus 0)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def _utc_seconds(now: datetime | None) -> datetime:
    """``now`` (default: the current time) in UTC, truncated to whole seconds as certificates store it."""
    moment = now or datetime.now(UTC)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=0)


def _builder(
    common_name: str, public_key: _OwnPublicKey, not_before: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    """A self-signed certificate builder: subject = issuer = CN, random serial, validity window."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _add_common_extensions(
    builder: x509.CertificateBuilder,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
) -> x509.CertificateBuilder:
    """Add KeyUsage DigitalSignature, BasicConstraints CA:FALSE (critical, as Go writes both), EKU, SANs."""
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder


def _private_pem(key: _OwnPrivateKey, password: bytes | None) -> bytes:
    """PKCS#8 PEM of a private key; with a password, legacy RFC 1423 encryption as KES writes it."""
    if password is None:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return encrypt_legacy(der, password)
