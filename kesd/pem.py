"""PEM files as KES reads them for ``tls.key``/``tls.password`` and ``tls.cert`` (pure: bytes in/out).

Private keys: the first PEM block of type ``PRIVATE KEY`` or ``… PRIVATE KEY`` (PKCS#8, PKCS#1,
SEC1), other blocks skipped; RFC 1423 legacy encryption (``Proc-Type: 4,ENCRYPTED``) as Go and
KES write it, and PKCS#8 ``ENCRYPTED PRIVATE KEY`` as an addition. Certificate files may hold only
CERTIFICATE blocks and whitespace. Errors are ValueErrors naming the file (``source``), never key bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

if TYPE_CHECKING:  # the type alias has this name only from cryptography 40 on
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

_BLOCK = re.compile(rb"-----BEGIN ([^\r\n]*?)-----(.*?)-----END \1-----", re.DOTALL)
_AES_KEY_SIZES = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}
_TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


@dataclass(frozen=True)
class _Block:
    """One decoded PEM block: type, headers (e.g. ``Proc-Type``) and DER contents."""

    kind: str
    headers: dict[str, str]
    der: bytes


def load_private_key(pem: bytes, password: str | None, *, source: str) -> PrivateKeyTypes:
    """The private key of a PEM key file; ``password`` decrypts an encrypted key, else it is ignored."""
    blocks, _ = _parse(pem, source)
    block = next((b for b in blocks if b.kind == "PRIVATE KEY" or b.kind.endswith(" PRIVATE KEY")), None)
    if block is None:
        raise ValueError(f"{source}: no private key found (expected a PEM block '… PRIVATE KEY')")
    secret = password.encode() if password else None
    der, der_password, encrypted = block.der, None, True
    if block.kind == "ENCRYPTED PRIVATE KEY":
        der_password = _require(secret, source)
    elif block.headers.get("Proc-Type", "").replace(" ", "") == "4,ENCRYPTED":
        der = _decrypt_legacy(block, _require(secret, source), source)
    else:
        encrypted = False
    try:
        key = serialization.load_der_private_key(der, der_password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        reason = "wrong password or malformed key" if encrypted else "malformed or unsupported key"
        raise ValueError(f"{source}: cannot parse the private key: {reason}") from None
    if not isinstance(key, _TLS_KEY_TYPES):
        raise ValueError(f"{source}: unsupported private key type (use RSA, ECDSA or Ed25519)")
    return key


def load_certificates(pem: bytes, *, source: str) -> list[x509.Certificate]:
    """All certificates of a PEM certificate file; only CERTIFICATE blocks and whitespace are allowed."""
    blocks, stray = _parse(pem, source)
    if stray:
        raise ValueError(f"{source}: unexpected text outside PEM blocks")
    if not blocks:
        raise ValueError(f"{source}: no certificate found")
    certificates = []
    for number, block in enumerate(blocks, 1):
        if block.kind != "CERTIFICATE":
            raise ValueError(f"{source}: PEM block {number} is '{block.kind}', expected 'CERTIFICATE'")
        try:
            certificates.append(x509.load_der_x509_certificate(block.der))
        except ValueError:
            raise ValueError(f"{source}: PEM block {number} is not a valid X.509 certificate") from None
    return certificates


def has_ip_or_dns_san(cert: x509.Certificate) -> bool:
    """True if the certificate names at least one DNS name or IP address (KES requires it of a server)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return bool(sans.get_values_for_type(x509.DNSName) or sans.get_values_for_type(x509.IPAddress))


def _parse(pem: bytes, source: str) -> tuple[list[_Block], bool]:
    """Decode every PEM block; also report whether non-whitespace text lies outside the blocks."""
    blocks: list[_Block] = []
    stray = False
    last = 0
    for found in _BLOCK.finditer(pem):
        stray = stray or bool(pem[last : found.start()].strip())
        last = found.end()
        kind = found.group(1).decode("ascii", "replace")
        headers, body = _split_headers(found.group(2))
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except binascii.Error:
            raise ValueError(f"{source}: PEM block '{kind}' is not valid base64") from None
        blocks.append(_Block(kind, headers, der))
    stray = stray or bool(pem[last:].strip())
    return blocks, stray


def _split_headers(text: bytes) -> tuple[dict[str, str], bytes]:
    """Split a block's text into its ``Name: value`` header lines and the base64 body."""
    lines = text.splitlines()
    headers: dict[str, str] = {}
    index = 0
    while index < len(lines) and not lines[index].strip():
        index += 1
    while index < len(lines) and b":" in lines[index]:
        name, _, value = lines[index].decode("ascii", "replace").partition(":")
        headers[name.strip()] = value.strip()
        index += 1
    return headers, b"\n".join(lines[index:])


def _require(secret: bytes | None, source: str) -> bytes:
    """The password for an encrypted key, or a ValueError saying it is missing."""
    if secret is None:
        raise ValueError(f"{source}: the private key is encrypted but no password is set")
    return secret


def _decrypt_legacy(block: _Block, secret: bytes, source: str) -> bytes:
    """Decrypt an RFC 1423 block (``DEK-Info: AES-…-CBC,<hex IV>``): EVP_BytesToKey(MD5), CBC, PKCS#7."""
    cipher_name, _, iv_hex = block.headers.get("DEK-Info", "").partition(",")
    cipher_name = cipher_name.strip().upper()
    key_size = _AES_KEY_SIZES.get(cipher_name)
    if key_size is None:
        raise ValueError(f"{source}: unsupported PEM encryption '{cipher_name or 'none'}'")
    try:
        iv = bytes.fromhex(iv_hex.strip())
    except ValueError:
        iv = b""
    if len(iv) != 16 or not block.der or len(block.der) % 16:
        raise ValueError(f"{source}: malformed encrypted PEM block")
    key = _bytes_to_key(secret, iv[:8], key_size)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(block.der) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:
        raise ValueError(f"{source}: cannot decrypt the private key: wrong password")
    return padded[:-pad]


def _bytes_to_key(secret: bytes, salt: bytes, size: int) -> bytes:
    """OpenSSL's EVP_BytesToKey with MD5 and one iteration (the RFC 1423 key derivation)."""
    derived = b""
    previous = b""
    while len(derived) < size:
        digest = hashes.Hash(hashes.MD5())  # noqa: S303 -- the RFC 1423 format prescribes MD5
        digest.update(previous + secret + salt)
        previous = digest.finalize()
        derived += previous
    return derived[:size]


def encrypt_legacy(der: bytes, password: bytes, *, kind: str = "PRIVATE KEY") -> bytes:
    """An RFC 1423 encrypted PEM block (AES-256-CBC), as KES's ``kes identity new --encrypt`` writes.

    Go (and so KES) cannot read PKCS#8 ``ENCRYPTED PRIVATE KEY`` files, only this legacy form.
    """
    if not password:
        raise ValueError("the key password must not be empty")
    iv = os.urandom(16)
    key = _bytes_to_key(password, iv[:8], 32)
    pad = 16 - len(der) % 16
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(der + bytes([pad]) * pad) + encryptor.finalize()
    body = base64.encodebytes(sealed).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return (
        f"-----BEGIN {kind}-----\nProc-Type: 4,ENCRYPTED\n".encode()
        + f"DEK-Info: AES-256-CBC,{iv.hex().upper()}\n\n".encode()
        + lines
        + f"\n-----END {kind}-----\n".encode()
    )
