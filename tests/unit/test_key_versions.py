"""Stored key values (kesd.crypto): JSON key files, base64 protobuf KeyVersions, RFC 3339 times (§6.2)."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kesd.crypto import (
    Cipher,
    KeyFormatError,
    KeyVersion,
    SecretKey,
    encode_key_version,
    format_time,
    import_key_version,
    new_key_version,
    parse_cipher,
    parse_key_version,
    parse_time,
)
from kesd.errors import HMACNotSupported
from tests.vectors import load

_KV = load("key_versions.json")
PARSE_VECTORS = _KV["parse"] + _KV["synthetic"]
ENCODE_VECTORS = _KV["encode"]

UPSTREAM_PROTOBUF = next(v for v in PARSE_VECTORS if v["id"] == "upstream-keyversion-parse-5")


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def check_fields(kv: KeyVersion, expected: dict) -> None:
    assert kv.secret == SecretKey(parse_cipher(expected["cipher"]), b64(expected["key_b64"]))
    assert kv.secret.cipher is parse_cipher(expected["cipher"])
    if expected["hmac_key_b64"] is None:
        assert kv.hmac_key is None
    else:
        assert kv.hmac_key == b64(expected["hmac_key_b64"])
    if expected["created_at"] is None:
        assert kv.created_at is None
    else:
        assert kv.created_at == parse_time(expected["created_at"])
        assert format_time(kv.created_at) == expected["created_at"]
        assert kv.created_at.tzinfo is not None
    assert kv.created_by == expected["created_by"]


@pytest.mark.parametrize("vector", PARSE_VECTORS, ids=[v["id"] for v in PARSE_VECTORS])
def test_parse_vector(vector: dict) -> None:
    stored = vector["stored_value"].encode()
    if vector["should_fail"]:
        with pytest.raises(KeyFormatError):
            parse_key_version(stored)
        return
    kv = parse_key_version(stored)
    check_fields(kv, vector["expected"])
    is_json = stored.lstrip().startswith(b"{")
    if is_json:
        assert kv.generic == ("algorithm" not in json.loads(stored))
    else:
        # Re-encoding a protobuf value reproduces Go's bytes (modulo whitespace Go ignores).
        assert encode_key_version(kv) == stored.replace(b"\n", b"").replace(b"\r", b"")
        assert not kv.generic


@pytest.mark.parametrize("vector", ENCODE_VECTORS, ids=[v["id"] for v in ENCODE_VECTORS])
def test_encode_vector(vector: dict) -> None:
    given = vector["input"]
    hmac_key = None if given["hmac_key_b64"] is None else b64(given["hmac_key_b64"])
    kv = KeyVersion(
        SecretKey(parse_cipher(given["cipher"]), b64(given["key_b64"])),
        hmac_key,
        parse_time(given["created_at"]),
        given["created_by"],
    )
    if vector["should_fail"]:
        with pytest.raises(KeyFormatError):
            encode_key_version(kv)
        return
    assert given["hmac_hash"] == "SHA256"
    encoded = encode_key_version(kv)
    assert encoded == vector["expected_stored_value"].encode()
    check_fields(parse_key_version(encoded), given)


# --- JSON key files -----------------------------------------------------------------------------

KEY_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("algorithm", "cipher", "generic"),
    [
        (None, Cipher.AES256, True),
        ("", Cipher.AES256, True),
        ("AES256", Cipher.AES256, False),
        ("AES256-GCM_SHA256", Cipher.AES256, False),
        ("ChaCha20", Cipher.CHACHA20, False),
        ("XCHACHA20-POLY1305", Cipher.CHACHA20, False),
    ],
)
def test_json_algorithms(algorithm: str | None, cipher: Cipher, generic: bool) -> None:
    doc: dict = {"version": "v1", "bytes": KEY_B64}
    if algorithm is not None:
        doc["algorithm"] = algorithm
    kv = parse_key_version(json.dumps(doc).encode())
    assert kv.secret.cipher is cipher
    assert kv.generic is generic
    assert kv.hmac_key is None
    with pytest.raises(HMACNotSupported):
        kv.hmac(b"message")
    with pytest.raises(KeyFormatError):
        encode_key_version(kv)


@pytest.mark.parametrize(
    "doc",
    [
        {"bytes": KEY_B64, "algorithm": "undefined"},
        {"bytes": KEY_B64, "algorithm": 1},
        {"bytes": KEY_B64, "created_at": "yesterday"},
        {"bytes": KEY_B64, "created_at": 5},
        {"bytes": KEY_B64, "created_by": 7},
        {"bytes": KEY_B64[:-1]},
        {"bytes": 5},
        {"algorithm": "AES256"},
        [KEY_B64],
        "text",
        12,
    ],
    ids=lambda d: json.dumps(d)[:40],
)
def test_json_key_rejects(doc: object) -> None:
    with pytest.raises(KeyFormatError) as info:
        parse_key_version(json.dumps(doc).encode())
    assert KEY_B64 not in str(info.value)
    assert bytes(range(32)).hex() not in str(info.value)


def test_json_key_nulls_and_case() -> None:
    doc = {"BYTES": KEY_B64, "algorithm": None, "created_at": None, "created_by": None}
    kv = parse_key_version(json.dumps(doc).encode())
    assert kv.secret == SecretKey(Cipher.AES256, bytes(range(32)))
    assert (kv.created_at, kv.created_by, kv.generic) == (None, "", True)


def test_json_key_time_offset_is_normalised_to_utc() -> None:
    doc = {"bytes": KEY_B64, "created_at": "2023-11-01T09:15:30.123456789+01:00"}
    kv = parse_key_version(json.dumps(doc).encode())
    assert kv.created_at == datetime(2023, 11, 1, 8, 15, 30, 123456, tzinfo=UTC)


# --- time formatting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-12T10:39:20.886816Z", datetime(2024, 1, 12, 10, 39, 20, 886816, tzinfo=UTC)),
        ("2024-01-12T10:39:20.886816999Z", datetime(2024, 1, 12, 10, 39, 20, 886816, tzinfo=UTC)),
        ("2023-11-01T08:15:30.5Z", datetime(2023, 11, 1, 8, 15, 30, 500000, tzinfo=UTC)),
        ("2009-11-10T23:00:00Z", datetime(2009, 11, 10, 23, tzinfo=UTC)),
        ("2009-11-10T23:00:00-02:30", datetime(2009, 11, 11, 1, 30, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("1969-12-31T23:59:59.000001Z", datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-01-12",
        "2024-01-12 10:39:20Z",
        "2024-01-12T10:39:20",
        "2024-13-12T10:39:20Z",
        "2024-01-12T24:00:00Z",
        "2024-01-12T10:39:60Z",
        "2024-01-12T10:39:20.Z",
        "2024-01-12T10:39:20.1234567890Z",
        "2024-01-12T10:39:20+0100",
        "2024-01-12T10:39:20+24:00",
        "0001-01-01T00:00:00+01:00",
        "２０２４-01-12T10:39:20Z",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "0001-01-01T00:00:00Z"),
        (datetime(2024, 1, 12, 10, 39, 20, 886816, tzinfo=UTC), "2024-01-12T10:39:20.886816Z"),
        (datetime(2023, 11, 1, 8, 15, 30, 500000, tzinfo=UTC), "2023-11-01T08:15:30.5Z"),
        (datetime(2025, 5, 26, 12, tzinfo=UTC), "2025-05-26T12:00:00Z"),
        (datetime(2025, 5, 26, 14, tzinfo=timezone(timedelta(hours=2))), "2025-05-26T12:00:00Z"),
        (datetime(5, 1, 2, 3, 4, 5, 10, tzinfo=UTC), "0005-01-02T03:04:05.00001Z"),
    ],
)
def test_format_time(value: datetime | None, text: str) -> None:
    assert format_time(value) == text


# --- protobuf codec -----------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    tag = varint(number << 3 | wire)
    if wire == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload


SECRET = field(1, 2, bytes(range(1, 33))) + field(2, 0, varint(2))
HMAC_KEY = field(1, 2, bytes(range(32, 64))) + field(2, 0, varint(1))


def parse_raw(raw: bytes) -> KeyVersion:
    return parse_key_version(base64.b64encode(raw))


def test_protobuf_any_field_order_and_unknown_fields() -> None:
    unknown = (
        field(9, 0, varint(300))
        + field(10, 1, b"\x01" * 8)
        + field(11, 2, b"junk")
        + field(12, 5, b"\x02" * 4)
        + field(13, 3, field(1, 0, varint(5)) + field(14, 3, b"") + varint(14 << 3 | 4))
        + varint(13 << 3 | 4)
    )
    timestamp = field(2, 0, varint(5000)) + field(1, 0, varint(1_700_000_000)) + field(7, 2, b"x")
    raw = (
        unknown
        + field(4, 2, b"creator")
        + field(3, 2, timestamp)
        + field(2, 2, HMAC_KEY + field(3, 0, varint(1)))
        + field(1, 2, field(9, 2, b"?") + SECRET)
    )
    kv = parse_raw(raw)
    assert kv.secret == SecretKey(Cipher.CHACHA20, bytes(range(1, 33)))
    assert kv.hmac_key == bytes(range(32, 64))
    assert kv.created_at == datetime(2023, 11, 14, 22, 13, 20, 5, tzinfo=UTC)
    assert kv.created_by == "creator"


def test_protobuf_wrong_wire_type_is_unknown_and_last_scalar_wins() -> None:
    secret = field(1, 2, bytes(32)) + field(1, 0, varint(7)) + field(2, 0, varint(2)) + field(2, 0, varint(1))
    kv = parse_raw(field(1, 2, secret) + field(2, 2, HMAC_KEY))
    assert kv.secret == SecretKey(Cipher.AES256, bytes(32))


def test_protobuf_uint32_fields_truncate_like_go() -> None:
    secret = field(1, 2, bytes(32)) + field(2, 0, varint(1 << 32 | 2))
    hmac_key = field(1, 2, bytes(32)) + field(2, 0, varint(1 << 40 | 1))
    kv = parse_raw(field(1, 2, secret) + field(2, 2, hmac_key))
    assert kv.secret.cipher is Cipher.CHACHA20


def test_protobuf_repeated_submessages_merge() -> None:
    raw = field(1, 2, field(1, 2, bytes(32))) + field(1, 2, field(2, 0, varint(2))) + field(2, 2, HMAC_KEY)
    assert parse_raw(raw).secret == SecretKey(Cipher.CHACHA20, bytes(32))


def test_protobuf_absent_timestamp_is_unix_epoch() -> None:
    # Go's AsTime() of a nil Timestamp is 1970-01-01, not the zero time.
    kv = parse_raw(field(1, 2, SECRET) + field(2, 2, HMAC_KEY))
    assert kv.created_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert (kv.created_by, kv.generic) == ("", False)
    assert (
        base64.b64decode(encode_key_version(kv)) == field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x1a\x00"
    )


@pytest.mark.parametrize(
    "created_at",
    [
        None,
        datetime(1960, 6, 1, 12, 0, 0, 250000, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
    ids=str,
)
def test_protobuf_time_roundtrip(created_at: datetime | None) -> None:
    kv = KeyVersion(SecretKey(Cipher.AES256, bytes(32)), bytes(32), created_at, "")
    encoded = encode_key_version(kv)
    assert parse_key_version(encoded).created_at == created_at


def test_protobuf_negative_seconds_are_ten_byte_varints() -> None:
    kv = KeyVersion(SecretKey(Cipher.AES256, bytes(32)), bytes(32), None, "")
    raw = base64.b64decode(encode_key_version(kv))
    zero_seconds = -62135596800
    assert raw.endswith(b"\x1a\x0b\x08" + varint(zero_seconds))
    assert len(varint(zero_seconds)) == 10


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        field(1, 2, SECRET),
        field(2, 2, HMAC_KEY),
        field(1, 2, field(1, 2, bytes(32)) + field(2, 0, varint(3))) + field(2, 2, HMAC_KEY),
        field(1, 2, field(1, 2, bytes(32))) + field(2, 2, HMAC_KEY),
        field(1, 2, SECRET) + field(2, 2, field(1, 2, bytes(32)) + field(2, 0, varint(0))),
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + field(4, 2, b"\xff\xfe"),
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY)[:-1],
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x08" + b"\xff" * 10 + b"\x01",
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x08\xff",
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x00\x00",
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x2b\x08\x01",
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x2c",
        field(1, 2, SECRET) + field(2, 2, HMAC_KEY) + b"\x2e",
    ],
    ids=lambda raw: raw.hex()[-16:] or "empty",
)
def test_protobuf_rejects(raw: bytes) -> None:
    with pytest.raises(KeyFormatError) as info:
        parse_raw(raw)
    assert bytes(range(1, 33)).hex() not in str(info.value)


@pytest.mark.parametrize("text", [b"not base64!", b"QUFB", b"QUFBQQ", b"QUFBQQ==QUFBQQ==", "é".encode()])
def test_neither_json_nor_base64(text: bytes) -> None:
    with pytest.raises(KeyFormatError):
        parse_key_version(text)


def test_base64_ignores_carriage_returns_and_newlines() -> None:
    stored = UPSTREAM_PROTOBUF["stored_value"].encode()
    wrapped = b"\r\n".join(stored[i : i + 76] for i in range(0, len(stored), 76)) + b"\r\n"
    check_fields(parse_key_version(wrapped), UPSTREAM_PROTOBUF["expected"])


# --- new / import -------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", list(Cipher))
def test_new_key_version(cipher: Cipher) -> None:
    now = datetime(2025, 5, 26, 12, 0, 0, 123456, tzinfo=UTC)
    kv = new_key_version(cipher, "3ecf", now)
    other = new_key_version(cipher, "3ecf", now)
    assert kv.secret.cipher is cipher
    assert kv.secret != other.secret
    assert kv.hmac_key is not None
    assert len(kv.hmac_key) == 32
    assert kv.hmac_key != other.hmac_key
    assert (kv.created_at, kv.created_by, kv.generic) == (now, "3ecf", False)
    assert len(kv.hmac(b"m")) == 32
    back = parse_key_version(encode_key_version(kv))
    assert back.secret == kv.secret
    assert (back.hmac_key, back.created_at, back.created_by) == (kv.hmac_key, now, "3ecf")
    assert back.hmac(b"m") == kv.hmac(b"m")
    _, ciphertext = kv.secret.generate(b"ctx")
    assert len(back.secret.decrypt(ciphertext, b"ctx")) == 32


def test_new_key_version_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    kv = new_key_version(Cipher.AES256, "")
    assert kv.created_at is not None
    assert kv.created_at.tzinfo is not None
    assert before <= kv.created_at <= datetime.now(UTC)
    naive = new_key_version(Cipher.AES256, "", datetime(2024, 1, 1, 12))
    assert naive.created_at == datetime(2024, 1, 1, 12, tzinfo=UTC)


def test_import_key_version() -> None:
    key = os.urandom(32)
    kv = import_key_version(Cipher.CHACHA20, key, "importer")
    assert kv.secret == SecretKey(Cipher.CHACHA20, key)
    assert kv.hmac_key is not None
    assert kv.hmac_key != key
    assert kv.created_by == "importer"
    assert parse_key_version(encode_key_version(kv)).secret == kv.secret
    with pytest.raises(ValueError) as info:
        import_key_version(Cipher.AES256, key[:16], "importer")
    assert key[:16].hex() not in str(info.value)


def test_key_version_rejects_bad_hmac_key_length() -> None:
    with pytest.raises(ValueError):
        KeyVersion(SecretKey(Cipher.AES256, bytes(32)), bytes(16))


def test_key_version_is_immutable() -> None:
    kv = new_key_version(Cipher.AES256, "x")
    with pytest.raises(AttributeError):
        kv.created_by = "y"  # type: ignore[misc]
