"""Identities, API keys and new certificates (kesd.identity) against identities.json."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kesd import errors, identity, pem
from tests import vectors

VECTORS = vectors.load("identities.json")["vectors"]
API_KEYS = [v for v in VECTORS if v["kind"] == "api_key"]
CERTS = [v for v in VECTORS if v["kind"] == "certificate"]
WITH_KEY = [v for v in CERTS if v.get("private_key_pem")]
NOW = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def _validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    """(not before, not after) as aware UTC datetimes on every cryptography version."""
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def _ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- vectors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", API_KEYS, ids=[v["id"] for v in API_KEYS])
def test_api_key_vectors(vector):
    if vector["should_fail"]:
        with pytest.raises(ValueError) as caught:
            identity.parse_api_key(vector["api_key"])
        assert vector["api_key"] not in str(caught.value)
        return
    key = identity.parse_api_key(vector["api_key"])
    assert identity.identity_of_public_key(key.public_key()) == vector["expected_identity"]
    assert identity.format_api_key(key) == vector["api_key"]


@pytest.mark.parametrize("vector", CERTS, ids=[v["id"] for v in CERTS])
def test_certificate_vectors(vector):
    cert = x509.load_pem_x509_certificate(vector["certificate_pem"].encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert identity.subject_public_key_info(der).hex() == vector["spki_der_hex"]
    assert identity.identity_of_der(der) == vector["expected_identity"]
    assert identity.identity_of_certificate(cert) == vector["expected_identity"]
    assert identity.identity_of_public_key(cert.public_key()) == vector["expected_identity"]
    assert cert.subject.rfc4514_string() == vector["subject"]
    if vector["public_key_type"] == "Ed25519":
        assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert identity.is_ca_certificate(der) is vector["basic_constraints_ca"]
    assert identity.is_ca_certificate(cert) is vector["basic_constraints_ca"]
    # A KES server rejects a CA-flagged certificate presented alone as "no certificate" (§3.1).
    if vector["expected_server_error"] is None:
        assert not vector["basic_constraints_ca"]
    else:
        assert vector["basic_constraints_ca"]
        assert errors.CertificateRequired.message in str(vector["expected_server_error"])


@pytest.mark.parametrize("vector", WITH_KEY, ids=[v["id"] for v in WITH_KEY])
def test_certificate_vector_private_key(vector):
    key = pem.load_private_key(vector["private_key_pem"].encode(), None, source=vector["id"])
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert identity.identity_of_public_key(key.public_key()) == vector["expected_identity"]
    assert identity.format_api_key(key) == vector["equivalent_api_key"]
    api_key = identity.parse_api_key(vector["equivalent_api_key"])
    assert identity.identity_of_public_key(api_key.public_key()) == vector["expected_identity"]


# --- identity computation ------------------------------------------------------------------------


def test_identity_of_spki_is_sha256_hex():
    assert (
        identity.identity_of_spki(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_identity_of_der_rejects_garbage():
    for garbage in (b"", b"\x30", b"\x30\x05abc", b"\x02\x01\x00", b"\x30\x03\x02\x01\x00"):
        with pytest.raises(ValueError):
            identity.identity_of_der(garbage)


def test_identity_of_rsa_and_ecdsa_certificates():
    # The SPKI walker must also handle long-form DER lengths (RSA) and the optional version field.
    for key in (ec.generate_private_key(ec.SECP384R1()), _rsa_key()):
        cert = _self_signed(key, ca=False)
        assert identity.identity_of_certificate(cert) == identity.identity_of_spki(_spki(key.public_key()))


def _rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key, *, ca: bool, with_constraints: bool = True) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
    )
    if with_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def test_ca_flagged_leaf_is_detected():
    key = ed25519.Ed25519PrivateKey.generate()
    ca_cert = _self_signed(key, ca=True)
    assert identity.is_ca_certificate(ca_cert)
    assert identity.is_ca_certificate(ca_cert.public_bytes(serialization.Encoding.DER))
    assert not identity.is_ca_certificate(_self_signed(key, ca=False))
    assert not identity.is_ca_certificate(_self_signed(key, ca=False, with_constraints=False))


# --- API keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "kes:v1:",
        "kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEep",  # too short
        "kes:v1:AT9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc",  # type byte 1
        "kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc=",  # bad padding
        "kes:v1:AD9E7FSYWrMD-VjhI6q545cYT9YOyFxZb7UnjEepYDRc",  # URL alphabet
        "KES:V1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc",
    ],
)
def test_invalid_api_keys(text):
    with pytest.raises(ValueError) as caught:
        identity.parse_api_key(text)
    message = str(caught.value)
    assert message.startswith("invalid API key")
    assert "AD9E7FSY" not in message


def test_api_key_without_prefix_is_accepted():
    key = identity.parse_api_key("AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc")
    assert identity.identity_of_public_key(key.public_key()).startswith("3ecfcdf3")


def test_api_key_round_trip():
    key = ed25519.Ed25519PrivateKey.generate()
    text = identity.format_api_key(key)
    assert text.startswith("kes:v1:A")
    assert len(text) == len("kes:v1:") + 44
    again = identity.parse_api_key(text)
    assert _spki(again.public_key()) == _spki(key.public_key())


# --- new_identity (kes identity new) -------------------------------------------------------------


def test_new_identity_certificate_fields():
    new = identity.new_identity("my-client", ips=["127.0.0.1", "::1"], dns=["localhost"], now=NOW)
    cert = x509.load_pem_x509_certificate(new.certificate_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "my-client"
    assert cert.issuer == cert.subject
    sans = _ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1"), ip_address("::1")]
    start = NOW.replace(microsecond=0)
    assert _validity(cert) == (start, start + timedelta(hours=720))
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.key_encipherment
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    assert not identity.is_ca_certificate(cert)
    assert 0 < cert.serial_number < 2**128
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)  # self-signed


def test_new_identity_identity_key_and_api_key_agree():
    new = identity.new_identity(None, now=NOW)
    cert = x509.load_pem_x509_certificate(new.certificate_pem)
    assert new.identity == identity.identity_of_certificate(cert)
    assert len(new.identity) == 64
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == new.identity
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)
    assert new.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(new.private_key_pem, None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert _spki(key.public_key()) == _spki(cert.public_key())
    api_key = identity.parse_api_key(new.api_key)
    assert identity.identity_of_public_key(api_key.public_key()) == new.identity


def test_new_identity_expiry_and_serials():
    first = identity.new_identity("a", expiry=timedelta(days=1), now=NOW)
    second = identity.new_identity("a", expiry=timedelta(days=1), now=NOW)
    cert_1 = x509.load_pem_x509_certificate(first.certificate_pem)
    cert_2 = x509.load_pem_x509_certificate(second.certificate_pem)
    assert _validity(cert_1)[1] - _validity(cert_1)[0] == timedelta(days=1)
    assert cert_1.serial_number != cert_2.serial_number
    assert first.identity != second.identity


def test_new_identity_default_now_is_current_time():
    before = datetime.now(UTC).replace(microsecond=0)
    cert = x509.load_pem_x509_certificate(identity.new_identity(None).certificate_pem)
    after = datetime.now(UTC)
    assert before <= _validity(cert)[0] <= after


def test_new_identity_encrypted_key_round_trips():
    new = identity.new_identity("enc", now=NOW, password=b"s3cret")
    # RFC 1423 legacy encryption, the only encrypted form Go (and so KES) can read.
    assert new.private_key_pem.startswith(
        b"-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,"
    )
    key = pem.load_private_key(new.private_key_pem, "s3cret", source="client.key")
    assert identity.identity_of_public_key(key.public_key()) == new.identity
    with pytest.raises(ValueError, match=r"client\.key"):
        pem.load_private_key(new.private_key_pem, "wrong", source="client.key")
    with pytest.raises(ValueError):
        identity.new_identity("enc", password=b"")


def test_new_identity_repr_hides_key_material():
    new = identity.new_identity("x", now=NOW)
    text = repr(new)
    assert new.identity in text
    assert new.api_key not in text
    assert new.api_key[7:] not in text
    assert "PRIVATE" not in text
    assert "BEGIN" not in text


def test_new_identity_rejects_bad_ip():
    with pytest.raises(ValueError):
        identity.new_identity("x", ips=["not-an-ip"])


# --- self_signed_client_cert (SDK clients with an API key) ---------------------------------------


def test_self_signed_client_cert():
    key = identity.parse_api_key(API_KEYS[0]["api_key"])
    cert = identity.self_signed_client_cert(key, now=NOW)
    expected = API_KEYS[0]["expected_identity"]
    assert identity.identity_of_certificate(cert) == expected
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == expected
    start = NOW.replace(microsecond=0)
    assert _validity(cert) == (start, start + timedelta(days=90))
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    assert 0 < cert.serial_number < 2**128
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)


def test_naive_now_is_taken_as_utc():
    key = ed25519.Ed25519PrivateKey.generate()
    cert = identity.self_signed_client_cert(key, now=datetime(2024, 1, 2, 3, 4, 5))
    assert _validity(cert)[0] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_random_serial_is_positive_128_bit():
    serials = {identity.random_serial() for _ in range(200)}
    assert len(serials) == 200
    assert all(0 < s < 2**128 for s in serials)
    assert max(serials).bit_length() > 120


# --- new_server_identity (dev mode) --------------------------------------------------------------


def test_new_server_identity():
    key_pem, cert_pem = identity.new_server_identity(["127.0.0.1", "::1", "kes.local"], now=NOW)
    cert = pem.load_certificates(cert_pem, source="dev cert")[0]
    key = pem.load_private_key(key_pem, None, source="dev key")
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert _spki(key.public_key()) == _spki(cert.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    sans = _ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1"), ip_address("::1")]
    assert sans.get_values_for_type(x509.DNSName) == ["kes.local"]
    assert pem.has_ip_or_dns_san(cert)
    start = NOW.replace(microsecond=0)
    assert _validity(cert) == (start, start + timedelta(days=90))
    assert ExtendedKeyUsageOID.SERVER_AUTH in _ext(cert, x509.ExtendedKeyUsage).value
    assert not identity.is_ca_certificate(cert)
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def test_new_server_identity_needs_a_host():
    with pytest.raises(ValueError):
        identity.new_server_identity([])


def test_encrypted_key_is_readable_by_openssl(tmp_path):
    """An independent implementation (OpenSSL) decrypts the legacy-encrypted key we write."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    new = identity.new_identity("enc", now=NOW, password=b"s3cret")
    path = tmp_path / "k.pem"
    path.write_bytes(new.private_key_pem)
    ok = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:s3cret", "-pubout"],
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    pub = serialization.load_pem_public_key(ok.stdout)
    assert identity.identity_of_public_key(pub) == new.identity
    bad = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:nope", "-noout"],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0
