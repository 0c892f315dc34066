"""TLS key and certificate files (kesd.pem) against tls_files.json and generated files."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from kesd import pem
from tests import vectors

TLS = vectors.load("tls_files.json")
KEYS = TLS["private_keys"]
CERT_FILES = TLS["certificate_files"]
NOW = datetime(2024, 5, 17, tzinfo=UTC)
PASSWORD = "correct horse"
ED25519_KEY_BODY = b"MC4CAQAwBQYDK2VwBCIEIN3IrbfIRiuZivaPVaBHDg6zuQfaPYykHtLDX1Qgo91z"


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- vectors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", KEYS, ids=[v["id"] for v in KEYS])
def test_private_key_vectors(vector):
    data = vector["pem"].encode()
    if vector["should_fail"]:
        with pytest.raises(ValueError):
            pem.load_private_key(data, vector["password"], source=vector["id"])
        return
    key = pem.load_private_key(data, vector["password"], source=vector["id"])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    if b"ENCRYPTED" in data:
        with pytest.raises(ValueError, match="wrong password"):
            pem.load_private_key(data, vector["password"] + "x", source=vector["id"])
        with pytest.raises(ValueError, match="no password"):
            pem.load_private_key(data, None, source=vector["id"])


@pytest.mark.parametrize("vector", CERT_FILES, ids=[v["id"] for v in CERT_FILES])
def test_certificate_file_vectors(vector):
    if vector["should_fail"]:
        with pytest.raises(ValueError):
            pem.load_certificates(vector["pem"].encode(), source=vector["id"])
        return
    certs = pem.load_certificates(vector["pem"].encode(), source=vector["id"])
    assert len(certs) == 1
    assert certs[0].subject.rfc4514_string() == "CN=localhost"
    assert pem.has_ip_or_dns_san(certs[0])


# --- private keys --------------------------------------------------------------------------------


def _pem(key, fmt, encryption=None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption())


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("make", "fmt", "header"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8, b"PRIVATE KEY"),
        (
            lambda: ec.generate_private_key(ec.SECP384R1()),
            serialization.PrivateFormat.TraditionalOpenSSL,
            b"EC PRIVATE KEY",
        ),
        (_rsa, serialization.PrivateFormat.TraditionalOpenSSL, b"RSA PRIVATE KEY"),
        (_rsa, serialization.PrivateFormat.PKCS8, b"PRIVATE KEY"),
        (ed25519.Ed25519PrivateKey.generate, serialization.PrivateFormat.PKCS8, b"PRIVATE KEY"),
    ],
    ids=["pkcs8-ec", "sec1-ec", "pkcs1-rsa", "pkcs8-rsa", "pkcs8-ed25519"],
)
def test_key_formats(make, fmt, header):
    key = make()
    data = _pem(key, fmt)
    assert data.startswith(b"-----BEGIN " + header + b"-----")
    loaded = pem.load_private_key(data, "ignored", source="k")
    assert _spki(loaded.public_key()) == _spki(key.public_key())


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()), _rsa], ids=["ec", "rsa"])
def test_legacy_encrypted_traditional_keys(make):
    key = make()
    data = _pem(
        key, serialization.PrivateFormat.TraditionalOpenSSL, serialization.BestAvailableEncryption(b"pw")
    )
    assert b"Proc-Type: 4,ENCRYPTED" in data
    loaded = pem.load_private_key(data, "pw", source="k")
    assert _spki(loaded.public_key()) == _spki(key.public_key())


def _legacy_encrypt(kind: str, der: bytes, password: bytes, cipher: str = "AES-256-CBC") -> bytes:
    """An RFC 1423 encrypted PEM block, written the way Go's x509.EncryptPEMBlock writes one."""
    size = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}[cipher]
    iv = os.urandom(16)
    material, block = b"", b""
    while len(material) < size:
        digest = hashes.Hash(hashes.MD5())
        digest.update(block + password + iv[:8])
        block = digest.finalize()
        material += block
    pad = 16 - len(der) % 16
    encryptor = Cipher(algorithms.AES(material[:size]), modes.CBC(iv)).encryptor()
    encoded = base64.b64encode(encryptor.update(der + bytes([pad]) * pad) + encryptor.finalize())
    body = b"".join(encoded[i : i + 64] + b"\n" for i in range(0, len(encoded), 64))
    return (
        f"-----BEGIN {kind}-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: {cipher},{iv.hex().upper()}\n\n".encode()
        + body
        + f"-----END {kind}-----\n".encode()
    )


@pytest.mark.parametrize("cipher", ["AES-128-CBC", "AES-192-CBC", "AES-256-CBC"])
def test_legacy_encrypted_pkcs8_key(cipher):
    # What `kes identity new --encrypt` writes: a PKCS#8 "PRIVATE KEY" block with RFC 1423 headers.
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    data = _legacy_encrypt("PRIVATE KEY", der, PASSWORD.encode(), cipher)
    loaded = pem.load_private_key(data, PASSWORD, source="client.key")
    assert _spki(loaded.public_key()) == _spki(key.public_key())
    with pytest.raises(ValueError, match=r"^client\.key: "):
        pem.load_private_key(data, "not the password", source="client.key")


def test_pkcs8_encrypted_key():
    key = ec.generate_private_key(ec.SECP256R1())
    data = _pem(
        key, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = pem.load_private_key(data, PASSWORD, source="k")
    assert _spki(loaded.public_key()) == _spki(key.public_key())
    with pytest.raises(ValueError, match="wrong password"):
        pem.load_private_key(data, "nope", source="k")
    for missing in (None, ""):
        with pytest.raises(ValueError, match="no password"):
            pem.load_private_key(data, missing, source="k")


def test_error_messages_name_the_source_and_hide_secrets():
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    data = _legacy_encrypt("PRIVATE KEY", der, PASSWORD.encode())
    with pytest.raises(ValueError) as caught:
        pem.load_private_key(data, "guess-" + PASSWORD, source="/etc/kesd/private.key")
    message = str(caught.value)
    assert message.startswith("/etc/kesd/private.key: ")
    assert PASSWORD not in message
    assert base64.b64encode(der)[:16].decode() not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_certificate_blocks_in_key_file_are_skipped():
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = _certificate(key, sans=[x509.DNSName("localhost")]).public_bytes(serialization.Encoding.PEM)
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    data = cert_pem + params + _pem(key, serialization.PrivateFormat.TraditionalOpenSSL) + cert_pem
    loaded = pem.load_private_key(data, None, source="k")
    assert _spki(loaded.public_key()) == _spki(key.public_key())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a pem file",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n" + ED25519_KEY_BODY + b"\n-----END EC PRIVATE KEY-----\n",
    ],
    ids=["empty", "text", "certificate-only", "bad-der", "bad-base64", "mismatched-end"],
)
def test_unusable_key_files(data):
    with pytest.raises(ValueError, match=r"^tls\.key: "):
        pem.load_private_key(data, None, source="tls.key")


def test_unsupported_key_type():
    data = _pem(ed448.Ed448PrivateKey.generate(), serialization.PrivateFormat.PKCS8)
    with pytest.raises(ValueError, match="unsupported private key type"):
        pem.load_private_key(data, None, source="k")


@pytest.mark.parametrize(
    "dek_info",
    ["DES-EDE3-CBC,0011223344556677", "AES-256-CBC,00", "AES-256-CBC,zz", ""],
    ids=["des3", "short-iv", "bad-iv", "missing"],
)
def test_unusable_legacy_encryption_headers(dek_info):
    data = (
        b"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: "
        + dek_info.encode()
        + b"\n\nAAAAAAAAAAAAAAAAAAAAAA==\n-----END EC PRIVATE KEY-----\n"
    )
    with pytest.raises(ValueError, match=r"^k: "):
        pem.load_private_key(data, "pw", source="k")


def test_crlf_line_endings():
    key = ec.generate_private_key(ec.SECP256R1())
    data = _pem(
        key, serialization.PrivateFormat.TraditionalOpenSSL, serialization.BestAvailableEncryption(b"pw")
    )
    loaded = pem.load_private_key(data.replace(b"\n", b"\r\n"), "pw", source="k")
    assert _spki(loaded.public_key()) == _spki(key.public_key())


# --- certificates --------------------------------------------------------------------------------


def _certificate(key, *, sans=None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_certificate_chain():
    key = ec.generate_private_key(ec.SECP256R1())
    first = _certificate(key, sans=[x509.DNSName("a")])
    second = _certificate(key, sans=[x509.DNSName("b")])
    data = (
        b"\n"
        + first.public_bytes(serialization.Encoding.PEM)
        + b"\n\t \n"
        + second.public_bytes(serialization.Encoding.PEM)
    )
    assert pem.load_certificates(data, source="c") == [first, second]


@pytest.mark.parametrize(
    "extra",
    [
        b"junk\n",
        b"-----BEGIN PRIVATE KEY-----\n" + ED25519_KEY_BODY + b"\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
    ids=["text", "key-block", "bad-der"],
)
def test_certificate_file_rejects_anything_else(extra):
    cert = _certificate(ec.generate_private_key(ec.SECP256R1()), sans=[x509.DNSName("a")])
    with pytest.raises(ValueError, match=r"^tls\.cert: "):
        pem.load_certificates(cert.public_bytes(serialization.Encoding.PEM) + extra, source="tls.cert")


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"], ids=["empty", "whitespace"])
def test_certificate_file_needs_a_certificate(data):
    with pytest.raises(ValueError, match="no certificate"):
        pem.load_certificates(data, source="c")


@pytest.mark.parametrize(
    ("sans", "expected"),
    [
        (None, False),
        ([x509.RFC822Name("a@example.com")], False),
        ([x509.UniformResourceIdentifier("https://example.com")], False),
        ([x509.DNSName("localhost")], True),
        ([x509.IPAddress(ip_address("10.0.0.1"))], True),
        ([x509.RFC822Name("a@example.com"), x509.DNSName("kes")], True),
    ],
    ids=["none", "email", "uri", "dns", "ip", "mixed"],
)
def test_has_ip_or_dns_san(sans, expected):
    cert = _certificate(ec.generate_private_key(ec.SECP256R1()), sans=sans)
    assert pem.has_ip_or_dns_san(cert) is expected
