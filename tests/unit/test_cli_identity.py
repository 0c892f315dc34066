"""``kes identity new`` / ``of`` / bare ``kes identity`` through click's CliRunner, in a temp directory."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from kesd import identity
from kesd.cli.kes import main, parse_duration
from tests import vectors

HEX64 = "[0-9a-f]{64}"
NEW_LAYOUT = re.compile(
    rf"\A\n  Private key:  (?P<key>\S+)\n  Certificate:  (?P<cert>\S+)\n  Identity:     (?P<id>{HEX64})\n\Z"
)
OF_LAYOUT = re.compile(rf"\A\n  Identity:  (?P<id>{HEX64})\n\Z")
API_KEY_LAYOUT = re.compile(rf"\A\n  API key:   (?P<key>kes:v1:\S+)\n  Identity:  (?P<id>{HEX64})\n\Z")

VECTORS = vectors.load("identities.json")["vectors"]
API_KEY_VECTORS = [v for v in VECTORS if v["kind"] == "api_key"]
CERT_VECTORS = [v for v in VECTORS if v["kind"] == "certificate"]
KEY_VECTORS = [v for v in CERT_VECTORS if v.get("private_key_pem")]


def _runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout on click 8.1 (mix_stderr) and 8.2+ (always)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run(*args: str, input: str | None = None):
    return _runner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cert(path) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _not_after(cert: x509.Certificate) -> datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=UTC)


def _not_before(cert: x509.Certificate) -> datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=UTC)


# --- identity new ---------------------------------------------------------------------------------


def test_walkthrough_server_identity_defaults_to_private_key_and_public_crt(in_tmp):
    result = run("identity", "new", "--ip", "127.0.0.1", "localhost")
    assert result.exit_code == 0, result.stderr
    match = NEW_LAYOUT.match(result.stdout)
    assert match, repr(result.stdout)
    assert match["key"] == "private.key"
    assert match["cert"] == "public.crt"
    assert sorted(os.listdir(in_tmp)) == ["private.key", "public.crt"]
    assert _mode("private.key") == 0o600
    assert _mode("public.crt") == 0o644

    cert = _cert("public.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert match["id"] == identity.identity_of_certificate(cert)

    with open("private.key", "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    assert identity.identity_of_public_key(key.public_key()) == match["id"]


def test_walkthrough_client_identity_with_named_files(in_tmp):
    result = run("identity", "new", "--key=client.key", "--cert=client.crt", "MyApp")
    assert result.exit_code == 0, result.stderr
    match = NEW_LAYOUT.match(result.stdout)
    assert match, repr(result.stdout)
    assert (match["key"], match["cert"]) == ("client.key", "client.crt")
    assert sorted(os.listdir(in_tmp)) == ["client.crt", "client.key"]
    assert _mode("client.key") == 0o600
    assert _mode("client.crt") == 0o644
    cert = _cert("client.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "MyApp"
    assert match["id"] == identity.identity_of_certificate(cert)

    # ...and `kes identity of client.crt` recomputes the same fingerprint, in the walkthrough layout.
    again = run("identity", "of", "client.crt")
    assert again.exit_code == 0, again.stderr
    assert again.stdout == f"\n  Identity:  {match['id']}\n"


def test_modes_do_not_depend_on_umask(in_tmp):
    old = os.umask(0o077)
    try:
        result = run("identity", "new", "x")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert _mode("private.key") == 0o600
    assert _mode("public.crt") == 0o644


def test_subject_defaults_to_the_identity(in_tmp):
    result = run("identity", "new", "--key", "a.key", "--cert", "a.crt")
    assert result.exit_code == 0, result.stderr
    ident = NEW_LAYOUT.match(result.stdout)["id"]
    cert = _cert("a.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ident


def test_sans_from_repeated_and_comma_separated_flags(in_tmp):
    result = run(
        "identity",
        "new",
        "--ip",
        "10.0.0.1,::1",
        "--ip",
        "127.0.0.1",
        "--dns",
        "a.example",
        "--dns",
        "b",
        "s",
    )
    assert result.exit_code == 0, result.stderr
    sans = _cert("public.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)) == [
        "10.0.0.1",
        "127.0.0.1",
        "::1",
    ]
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["a.example", "b"]


def test_default_expiry_is_720h(in_tmp):
    assert run("identity", "new", "x").exit_code == 0
    cert = _cert("public.crt")
    assert _not_after(cert) - _not_before(cert) == timedelta(hours=720)


def test_custom_expiry(in_tmp):
    assert run("identity", "new", "--expiry", "1h30m", "x").exit_code == 0
    cert = _cert("public.crt")
    assert _not_after(cert) - _not_before(cert) == timedelta(hours=1, minutes=30)


@pytest.mark.parametrize("expiry", ["soon", "0", "-1h", "10"])
def test_invalid_expiry_is_a_usage_error(in_tmp, expiry):
    result = run("identity", "new", "--expiry", expiry, "x")
    assert result.exit_code == 2
    assert "expiry" in result.stderr
    assert os.listdir(in_tmp) == []


def test_invalid_ip_is_a_usage_error(in_tmp):
    result = run("identity", "new", "--ip", "localhost", "x")
    assert result.exit_code == 2
    assert "'localhost' is not an IP address" in result.stderr
    assert os.listdir(in_tmp) == []


@pytest.mark.parametrize("existing", ["private.key", "public.crt"])
def test_refuses_to_overwrite_without_force(in_tmp, existing):
    (in_tmp / existing).write_text("keep me")
    result = run("identity", "new", "--ip", "127.0.0.1", "localhost")
    assert result.exit_code == 1
    assert existing in result.stderr
    assert "--force" in result.stderr
    assert result.stdout == ""
    assert (in_tmp / existing).read_text() == "keep me"
    assert os.listdir(in_tmp) == [existing]


def test_force_overwrites_with_a_new_identity(in_tmp):
    first = run("identity", "new", "--key=c.key", "--cert=c.crt", "MyApp")
    second = run("identity", "new", "--key=c.key", "--cert=c.crt", "-f", "MyApp")
    assert first.exit_code == 0
    assert second.exit_code == 0, second.stderr
    first_id = NEW_LAYOUT.match(first.stdout)["id"]
    second_id = NEW_LAYOUT.match(second.stdout)["id"]
    assert first_id != second_id
    assert identity.identity_of_certificate(_cert("c.crt")) == second_id
    assert _mode("c.key") == 0o600


def test_force_restores_the_key_file_mode(in_tmp):
    (in_tmp / "private.key").write_text("old")
    os.chmod("private.key", 0o644)
    assert run("identity", "new", "--force", "x").exit_code == 0
    assert _mode("private.key") == 0o600


@pytest.mark.parametrize("flags", [["--key", "a.key"], ["--cert", "a.crt"]])
def test_key_and_cert_go_together(in_tmp, flags):
    result = run("identity", "new", *flags, "x")
    assert result.exit_code == 2
    assert os.listdir(in_tmp) == []


def test_key_and_cert_must_differ(in_tmp):
    result = run("identity", "new", "--key", "same.pem", "--cert", "same.pem", "x")
    assert result.exit_code == 2
    assert os.listdir(in_tmp) == []


def test_encrypt_prompts_twice_and_encrypts_the_key(in_tmp):
    result = run("identity", "new", "--encrypt", "x", input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.stderr
    # click 8.1's runner echoes the newlines of hidden input to stdout; a terminal shows them on the tty.
    report = result.stdout[result.stdout.index("\n  Private key:") :]
    assert NEW_LAYOUT.match(report)
    assert "Confirm password" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    data = (in_tmp / "private.key").read_bytes()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, password=None)
    key = serialization.load_pem_private_key(data, password=b"s3cret")
    assert identity.identity_of_public_key(key.public_key()) == identity.identity_of_certificate(
        _cert("public.crt")
    )


def test_encrypt_retries_when_the_passwords_differ(in_tmp):
    result = run("identity", "new", "--encrypt", "x", input="one\ntwo\nfinal\nfinal\n")
    assert result.exit_code == 0, result.stderr
    key = serialization.load_pem_private_key((in_tmp / "private.key").read_bytes(), password=b"final")
    assert isinstance(key, Ed25519PrivateKey)


# --- identity of ----------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", API_KEY_VECTORS, ids=[v["id"] for v in API_KEY_VECTORS])
def test_identity_of_api_key(vector):
    result = run("identity", "of", vector["api_key"])
    if vector["should_fail"]:
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: ")
        assert result.stdout == ""
    else:
        assert result.exit_code == 0, result.stderr
        assert result.stdout == f"\n  Identity:  {vector['expected_identity']}\n"


@pytest.mark.parametrize("vector", CERT_VECTORS, ids=[v["id"] for v in CERT_VECTORS])
def test_identity_of_certificate_file(in_tmp, vector):
    (in_tmp / "c.crt").write_text(vector["certificate_pem"])
    result = run("identity", "of", "c.crt")
    assert result.exit_code == 0, result.stderr
    assert OF_LAYOUT.match(result.stdout)["id"] == vector["expected_identity"]


@pytest.mark.parametrize("vector", KEY_VECTORS, ids=[v["id"] for v in KEY_VECTORS])
def test_identity_of_ed25519_key_file_prints_its_api_key(in_tmp, vector):
    (in_tmp / "c.key").write_text(vector["private_key_pem"])
    result = run("identity", "of", "c.key")
    assert result.exit_code == 0, result.stderr
    match = API_KEY_LAYOUT.match(result.stdout)
    assert match, repr(result.stdout)
    assert match["key"] == vector["equivalent_api_key"]
    assert match["id"] == vector["expected_identity"]


def test_identity_of_file_with_key_before_certificate(in_tmp):
    vector = KEY_VECTORS[0]
    (in_tmp / "both.pem").write_text(vector["private_key_pem"] + vector["certificate_pem"])
    result = run("identity", "of", "both.pem")
    assert result.exit_code == 0, result.stderr
    assert OF_LAYOUT.match(result.stdout)["id"] == vector["expected_identity"]


def test_identity_of_missing_file(in_tmp):
    result = run("identity", "of", "nope.crt")
    assert result.exit_code == 1
    assert "nope.crt" in result.stderr


def test_identity_of_file_without_pem(in_tmp):
    (in_tmp / "junk.txt").write_text("hello")
    result = run("identity", "of", "junk.txt")
    assert result.exit_code == 1
    assert "junk.txt" in result.stderr


def test_bare_identity_shortcut_means_of(in_tmp):
    vector = CERT_VECTORS[0]
    (in_tmp / "c.crt").write_text(vector["certificate_pem"])
    result = run("identity", "c.crt")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"\n  Identity:  {vector['expected_identity']}\n"


# --- identity (no arguments) ----------------------------------------------------------------------


def test_identity_without_arguments_prints_a_new_api_key(in_tmp):
    result = run("identity")
    assert result.exit_code == 0, result.stderr
    match = API_KEY_LAYOUT.match(result.stdout)
    assert match, repr(result.stdout)
    key = identity.parse_api_key(match["key"])
    assert identity.identity_of_public_key(key.public_key()) == match["id"]
    assert os.listdir(in_tmp) == []
    assert run("identity").stdout != result.stdout


# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("720h", timedelta(hours=720)),
        ("8760h", timedelta(hours=8760)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "10", "1d", "1h 30m", "-1h", "1.h.5"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
