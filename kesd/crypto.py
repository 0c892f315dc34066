"""Secret keys, AEAD encryption, ciphertext encodings and stored key-version encodings (pure).

Everything a KES server of any era wrote must stay readable: JSON, msgpack and raw ciphertexts
(reference §5.2) and JSON or base64-protobuf key values (§6.2). New data is always written in the
newest formats (raw ciphertexts, base64 protobuf). All cryptography goes through ``cryptography``.

Era-dependent choices (§5.1): the key ID inside legacy ciphertexts is ignored (as since 2023-10);
a key stored without an algorithm (``generic``) opens a JSON/msgpack ciphertext with the algorithm
that ciphertext names (as 2022-2024 servers did), every other case uses the key's own cipher (as
the newest server does); the pre-2020 ``AES-256-GCM`` JSON name is refused. These choices only pick
which AEAD opens the bytes, so an unauthentic ciphertext is never accepted.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hmac import compare_digest
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher as _StreamCipher
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.hmac import HMAC

from kesd.errors import DecryptError, HMACNotSupported

KEY_SIZE: Final = 32
HMAC_KEY_SIZE: Final = 32
IV_SIZE: Final = 16
NONCE_SIZE: Final = 12
RANDOM_SIZE: Final = IV_SIZE + NONCE_SIZE  # the iv‖nonce suffix of a raw ciphertext
TAG_SIZE: Final = 16
OVERHEAD: Final = TAG_SIZE + RANDOM_SIZE  # raw ciphertext length - plaintext length
_HASH_SHA256: Final = 1  # protobuf HMACKey.Hash


class Cipher(enum.IntEnum):
    """A secret key's AEAD; the values are the protobuf ``SecretKey.Type`` numbers."""

    AES256 = 1
    CHACHA20 = 2


_CIPHER_NAMES: Final = {
    "AES256": Cipher.AES256,
    "AES256-GCM_SHA256": Cipher.AES256,
    "ChaCha20": Cipher.CHACHA20,
    "XCHACHA20-POLY1305": Cipher.CHACHA20,
}


def parse_cipher(name: str) -> Cipher:
    """The cipher for a KES algorithm name of any era (``AES256``, ``XCHACHA20-POLY1305``, …)."""
    try:
        return _CIPHER_NAMES[name]
    except KeyError:
        raise ValueError(f"crypto: secret key type {name!r} is not supported") from None


def cipher_name(c: Cipher) -> str:
    """The newest KES name of a cipher, as ``describe`` reports it: ``AES256`` or ``ChaCha20``."""
    return "AES256" if c == Cipher.AES256 else "ChaCha20"


# --- per-message key derivation -------------------------------------------------------------------

_ZERO_BLOCK: Final = bytes(64)
_WORDS16: Final = struct.Struct("<16I")
_WORDS8: Final = struct.Struct("<8I")
_WORDS4: Final = struct.Struct("<4I")
_SIGMA: Final = _WORDS4.unpack(b"expand 32-byte k")
_MASK32: Final = 0xFFFFFFFF


def hchacha20(key: bytes, data: bytes) -> bytes:
    """HChaCha20(key, 16-byte input): the ChaCha20 rounds of constants‖key‖input, words 0-3 and 12-15.

    cryptography has no HChaCha20, but a ChaCha20 keystream block is rounds(S) + S with S built from
    the same words (its 16-byte nonce is counter‖nonce), so subtracting S recovers rounds(S).
    """
    block = _StreamCipher(algorithms.ChaCha20(key, data), None).encryptor().update(_ZERO_BLOCK)
    w = _WORDS16.unpack(block)
    x0, x1, x2, x3 = _WORDS4.unpack(data)
    s0, s1, s2, s3 = _SIGMA
    return _WORDS8.pack(
        (w[0] - s0) & _MASK32,
        (w[1] - s1) & _MASK32,
        (w[2] - s2) & _MASK32,
        (w[3] - s3) & _MASK32,
        (w[12] - x0) & _MASK32,
        (w[13] - x1) & _MASK32,
        (w[14] - x2) & _MASK32,
        (w[15] - x3) & _MASK32,
    )


def _aes_aead(mac: HMAC, iv: bytes) -> AESGCM:
    """AES-256-GCM keyed with HMAC-SHA256(secret, iv); ``mac`` is a pre-keyed template, never finalized."""
    h = mac.copy()
    h.update(iv)
    return AESGCM(h.finalize())


def _chacha_aead(key: bytes, iv: bytes) -> ChaCha20Poly1305:
    """ChaCha20-Poly1305 (RFC 8439) keyed with HChaCha20(secret, iv)."""
    return ChaCha20Poly1305(hchacha20(key, iv))


# --- secret keys ----------------------------------------------------------------------------------


class SecretKey:
    """A 32-byte secret key and its cipher; encrypts to and decrypts from every KES format.

    Immutable; its repr names only the cipher. AES256 keys keep a pre-keyed HMAC object that is
    copied per message (cheaper than re-keying on the hot path).
    """

    __slots__ = ("_cipher", "_key", "_mac")

    _cipher: Cipher
    _key: bytes
    _mac: HMAC | None

    def __init__(self, cipher: Cipher, key: bytes) -> None:
        try:
            cipher = Cipher(cipher)
        except ValueError:
            raise ValueError("crypto: invalid secret key type") from None
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError("crypto: secret key must be bytes")
        key = bytes(key)
        if len(key) != KEY_SIZE:
            raise ValueError(f"crypto: invalid key length {len(key)} for {cipher_name(cipher)}")
        object.__setattr__(self, "_cipher", cipher)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_mac", HMAC(key, SHA256()) if cipher == Cipher.AES256 else None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SecretKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SecretKey is immutable")

    def __repr__(self) -> str:
        return f"SecretKey(cipher={cipher_name(self._cipher)})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return self._cipher == other._cipher and compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> SecretKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretKey:
        return self

    @property
    def cipher(self) -> Cipher:
        """The key's cipher (what the newest KES uses for every decryption)."""
        return self._cipher

    def _aead(self, cipher: Cipher, iv: bytes) -> AESGCM | ChaCha20Poly1305:
        """The per-message AEAD for ``iv`` under ``cipher`` (the key's own, or a generic key's other)."""
        if cipher == Cipher.AES256:
            return _aes_aead(self._mac or HMAC(self._key, SHA256()), iv)
        return _chacha_aead(self._key, iv)

    # The three methods below inline the AES256 derivation: they are the server's hot path.

    def encrypt(self, plaintext: bytes, associated_data: bytes | None = None) -> bytes:
        """Seal ``plaintext`` in the raw format ``sealed‖iv‖nonce`` (len(plaintext) + 44 bytes)."""
        rnd = os.urandom(RANDOM_SIZE)
        mac = self._mac
        if mac is not None:
            h = mac.copy()
            h.update(rnd[:IV_SIZE])
            aead: AESGCM | ChaCha20Poly1305 = AESGCM(h.finalize())
        else:
            aead = _chacha_aead(self._key, rnd[:IV_SIZE])
        return aead.encrypt(rnd[IV_SIZE:], plaintext, associated_data or None) + rnd

    def generate(self, associated_data: bytes | None = None) -> tuple[bytes, bytes]:
        """A fresh 32-byte DEK and its 76-byte raw ciphertext, from one ``os.urandom`` call."""
        rnd = os.urandom(KEY_SIZE + RANDOM_SIZE)  # dek ‖ iv ‖ nonce
        dek = rnd[:KEY_SIZE]
        mac = self._mac
        if mac is not None:
            h = mac.copy()
            h.update(rnd[KEY_SIZE : KEY_SIZE + IV_SIZE])
            aead: AESGCM | ChaCha20Poly1305 = AESGCM(h.finalize())
        else:
            aead = _chacha_aead(self._key, rnd[KEY_SIZE : KEY_SIZE + IV_SIZE])
        sealed = aead.encrypt(rnd[KEY_SIZE + IV_SIZE :], dek, associated_data or None)
        return dek, sealed + rnd[KEY_SIZE:]

    def decrypt(
        self, ciphertext: bytes, associated_data: bytes | None = None, *, generic: bool = False
    ) -> bytes:
        """Open a JSON, msgpack or raw ciphertext; raise :class:`DecryptError` unless authentic.

        The key's cipher decides the AEAD, except for a ``generic`` key (a JSON key file without an
        algorithm) and a JSON/msgpack ciphertext: then the algorithm recorded in the ciphertext.
        """
        data = bytes(ciphertext)  # no copy for bytes
        legacy = _parse_legacy(data) if data[:1] in (b"{", b"\x95") else None
        if legacy is None:
            if len(data) <= RANDOM_SIZE:
                raise DecryptError()
            sealed = data[:-RANDOM_SIZE]
            iv = data[-RANDOM_SIZE:-NONCE_SIZE]
            nonce = data[-NONCE_SIZE:]
            cipher = self._cipher
        else:
            named, sealed, iv, nonce = legacy
            if not sealed:  # the normalised form would be only iv‖nonce (28 bytes)
                raise DecryptError()
            cipher = named if generic else self._cipher
        mac = self._mac
        try:
            if mac is not None and cipher is Cipher.AES256:
                h = mac.copy()
                h.update(iv)
                return AESGCM(h.finalize()).decrypt(nonce, sealed, associated_data or None)
            return self._aead(cipher, iv).decrypt(nonce, sealed, associated_data or None)
        except (InvalidTag, ValueError, OverflowError):
            raise DecryptError() from None


# --- legacy ciphertext encodings (§5.2) -----------------------------------------------------------

_JSON_AEADS: Final = {
    "AES-256-GCM-HMAC-SHA-256": Cipher.AES256,
    "ChaCha20Poly1305": Cipher.CHACHA20,
}
_INSECURE_JSON_AEAD: Final = "AES-256-GCM"  # KES <= v0.6.0, non-PRF key derivation: never accepted
_MSGPACK_ALGORITHMS: Final = {
    b"AES256-GCM_SHA256": Cipher.AES256,
    b"XCHACHA20-POLY1305": Cipher.CHACHA20,
    b"AES256": Cipher.AES256,
    b"ChaCha20": Cipher.CHACHA20,
}

_MP_STR_WIDTHS: Final = {0xD9: 1, 0xDA: 2, 0xDB: 4}  # str8, str16, str32: bytes of the length
_MP_BIN_WIDTHS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # bin8, bin16, bin32

_Legacy = tuple[Cipher, bytes, bytes, bytes]  # (named cipher, sealed, iv, nonce)


class _NotThisFormat(Exception):
    """Internal: the bytes are not a well-formed legacy ciphertext (treat them as raw)."""


def _parse_legacy(data: bytes) -> _Legacy | None:
    """Split a JSON or msgpack ciphertext; None if it is not one (then it is raw)."""
    try:
        if data[:1] == b"{":
            return _parse_json_ciphertext(data)
        return _parse_msgpack_ciphertext(data)
    except _NotThisFormat:
        return None


def _parse_json_ciphertext(data: bytes) -> _Legacy:
    """The JSON format of KES v0.6.1 … v0.19.1: ``{"aead","id","iv","nonce","bytes"}``."""
    obj = _go_json_value(data)
    if not isinstance(obj, dict):
        raise _NotThisFormat
    aead = obj.get("aead")
    if aead == _INSECURE_JSON_AEAD:
        raise DecryptError()
    if not isinstance(aead, str) or aead not in _JSON_AEADS:
        raise _NotThisFormat
    iv = _json_bytes(obj.get("iv"))
    nonce = _json_bytes(obj.get("nonce"))
    sealed = _json_bytes(obj.get("bytes"))
    if iv is None or nonce is None or sealed is None or len(iv) != IV_SIZE or len(nonce) != NONCE_SIZE:
        raise _NotThisFormat
    return _JSON_AEADS[aead], sealed, iv, nonce


def _json_bytes(value: object) -> bytes | None:
    """A Go ``[]byte`` JSON value: base64 string or null/absent (empty); None if malformed."""
    if value is None:
        return b""
    if not isinstance(value, str):
        return None
    try:
        return b64decode_std(value)
    except ValueError:
        return None


def _parse_msgpack_ciphertext(data: bytes) -> _Legacy:
    """The msgpack format of KES v0.19.2 … 2024-01: fixarray(5) [alg, id, iv, nonce, sealed]."""
    if data[0] != 0x95:
        raise _NotThisFormat
    algorithm, pos = _mp_str(data, 1)
    _key_id, pos = _mp_str(data, pos)
    iv, pos = _mp_bin(data, pos)
    nonce, pos = _mp_bin(data, pos)
    sealed, pos = _mp_bin(data, pos)
    if pos != len(data) or len(iv) != IV_SIZE or len(nonce) != NONCE_SIZE:
        raise _NotThisFormat
    cipher = _MSGPACK_ALGORITHMS.get(algorithm)
    if cipher is None:
        raise _NotThisFormat
    return cipher, sealed, iv, nonce


def _mp_len(data: bytes, pos: int, width: int) -> tuple[int, int]:
    """A big-endian length of ``width`` bytes at ``pos``."""
    end = pos + width
    if end > len(data):
        raise _NotThisFormat
    return int.from_bytes(data[pos:end], "big"), end


def _mp_take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    """``n`` bytes at ``pos``, or not-this-format if the input is too short."""
    end = pos + n
    if end > len(data):
        raise _NotThisFormat
    return bytes(data[pos:end]), end


def _mp_str(data: bytes, pos: int) -> tuple[bytes, int]:
    """A msgpack str (fixstr, str8, str16, str32) at ``pos``."""
    if pos >= len(data):
        raise _NotThisFormat
    tag = data[pos]
    if 0xA0 <= tag <= 0xBF:
        return _mp_take(data, pos + 1, tag & 0x1F)
    width = _MP_STR_WIDTHS.get(tag)
    if width is None:
        raise _NotThisFormat
    n, pos = _mp_len(data, pos + 1, width)
    return _mp_take(data, pos, n)


def _mp_bin(data: bytes, pos: int) -> tuple[bytes, int]:
    """A msgpack bin (bin8, bin16, bin32) at ``pos``."""
    if pos >= len(data):
        raise _NotThisFormat
    width = _MP_BIN_WIDTHS.get(data[pos])
    if width is None:
        raise _NotThisFormat
    n, pos = _mp_len(data, pos + 1, width)
    return _mp_take(data, pos, n)


# --- helpers shared by the JSON readers -----------------------------------------------------------


def b64decode_std(text: str | bytes) -> bytes:
    """Standard base64 with padding, as Go's ``base64.StdEncoding`` reads it (``\\r``/``\\n`` ignored)."""
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("invalid base64") from None
    text = text.replace(b"\r", b"").replace(b"\n", b"")
    if len(text) % 4:
        raise ValueError("invalid base64")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None


def _reject_constant(_name: str) -> Any:
    """JSON ``NaN``/``Infinity`` are not JSON for Go: refuse them."""
    raise ValueError("not JSON")


_NOT_JSON: Final = object()


def _go_json_value(data: bytes) -> Any:
    """The JSON value in ``data``, or ``_NOT_JSON`` if Go would not call it valid JSON.

    Object keys are lower-cased: Go matches struct fields case-insensitively, the last one winning.
    """
    try:
        return json.loads(
            data,
            object_pairs_hook=lambda pairs: {k.lower(): v for k, v in pairs},
            parse_constant=_reject_constant,
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _NOT_JSON


# --- time -----------------------------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO_TIME: Final = datetime(1, 1, 1, tzinfo=UTC)
_ZERO_TIME_TEXT: Final = "0001-01-01T00:00:00Z"
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def _utc(t: datetime) -> datetime:
    """``t`` as a UTC-aware datetime (a naive value is taken to be UTC already)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def format_time(t: datetime | None) -> str:
    """RFC 3339 the way Go prints it: UTC ``Z``, fraction with trailing zeros trimmed; None = zero time."""
    if t is None:
        return _ZERO_TIME_TEXT
    t = _utc(t)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_time(s: str) -> datetime | None:
    """Parse an RFC 3339 time (as in JSON key files) to UTC; sub-microsecond digits are dropped.

    Returns None for Go's zero time; raises ValueError for anything that is not RFC 3339.
    """
    m = _RFC3339.fullmatch(s)
    if m is None:
        raise ValueError("invalid RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    try:
        t = datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
        if m.group(8) is None:
            oh, om = int(m.group(10)), int(m.group(11))
            if oh > 23 or om > 59:
                raise ValueError("invalid RFC 3339 time zone")
            offset = timedelta(hours=oh, minutes=om)
            t = t - offset if m.group(9) == "+" else t + offset
    except (ValueError, OverflowError):
        raise ValueError("invalid RFC 3339 time") from None
    return None if t == _ZERO_TIME else t


def _to_unix(t: datetime | None) -> tuple[int, int]:
    """(seconds, nanos) since the Unix epoch, nanos in [0, 1e9) like Go's ``Unix``/``Nanosecond``."""
    d = (_ZERO_TIME if t is None else _utc(t)) - _EPOCH
    return d.days * 86400 + d.seconds, d.microseconds * 1000


def _from_unix(seconds: int, nanos: int) -> datetime | None:
    """The datetime for Unix (seconds, nanos) (nanos normalised, sub-µs dropped); zero time -> None."""
    extra, nanos = divmod(nanos, 1_000_000_000)
    try:
        t = _EPOCH + timedelta(seconds=seconds + extra, microseconds=nanos // 1000)
    except OverflowError:
        raise KeyFormatError("crypto: key creation time out of range") from None
    return None if t == _ZERO_TIME else t


# --- key versions (§6.2) --------------------------------------------------------------------------


class KeyFormatError(ValueError):
    """A stored key value is neither a valid JSON key file nor a valid base64 protobuf KeyVersion."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class KeyVersion:
    """One stored version of a key: secret key, optional HMAC key, creation time and creator.

    ``hmac_key`` is None for JSON key files (E0-E3); ``created_at`` None is Go's zero time;
    ``generic`` marks a JSON key stored without an algorithm (see :meth:`SecretKey.decrypt`).
    """

    secret: SecretKey
    hmac_key: bytes | None = None
    created_at: datetime | None = None
    created_by: str = ""
    generic: bool = False
    _mac: HMAC | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.hmac_key is not None:
            if len(self.hmac_key) != HMAC_KEY_SIZE:
                raise ValueError(f"crypto: invalid HMAC key length {len(self.hmac_key)}")
            object.__setattr__(self, "hmac_key", bytes(self.hmac_key))
            object.__setattr__(self, "_mac", HMAC(self.hmac_key, SHA256()))
        if self.created_at is not None:
            created_at = _utc(self.created_at)
            object.__setattr__(self, "created_at", None if created_at == _ZERO_TIME else created_at)

    def __repr__(self) -> str:
        return (
            f"KeyVersion(cipher={cipher_name(self.secret.cipher)}, hmac={self.hmac_key is not None}, "
            f"created_at={format_time(self.created_at)!r}, created_by={self.created_by!r}, "
            f"generic={self.generic})"
        )

    __str__ = __repr__

    def hmac(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` with the HMAC key; :class:`HMACNotSupported` for JSON key files."""
        if self._mac is None:
            raise HMACNotSupported()
        h = self._mac.copy()
        h.update(message)
        return h.finalize()


def _now(now: datetime | None) -> datetime:
    """``now`` in UTC, or the current time."""
    return datetime.now(UTC) if now is None else _utc(now)


def new_key_version(cipher: Cipher, created_by: str, now: datetime | None = None) -> KeyVersion:
    """A new key version with a random secret key and a random HMAC key (what ``create`` stores)."""
    rnd = os.urandom(KEY_SIZE + HMAC_KEY_SIZE)
    return KeyVersion(SecretKey(cipher, rnd[:KEY_SIZE]), rnd[KEY_SIZE:], _now(now), created_by)


def import_key_version(
    cipher: Cipher, key: bytes, created_by: str, now: datetime | None = None
) -> KeyVersion:
    """A key version for imported key bytes, with a fresh random HMAC key (what ``import`` stores)."""
    return KeyVersion(SecretKey(cipher, key), os.urandom(HMAC_KEY_SIZE), _now(now), created_by)


def parse_key_version(data: bytes) -> KeyVersion:
    """Parse a stored key value: valid JSON is a JSON key file, anything else base64 protobuf."""
    value = _go_json_value(data)
    if value is not _NOT_JSON:
        return _parse_json_key(value)
    try:
        raw = b64decode_std(data)
    except ValueError:
        raise KeyFormatError("crypto: key value is neither JSON nor base64") from None
    return _parse_protobuf_key(raw)


def _parse_json_key(value: Any) -> KeyVersion:
    """A JSON key file: ``bytes`` (32, base64), optional ``algorithm``, ``created_at``, ``created_by``."""
    if not isinstance(value, dict):
        raise KeyFormatError("crypto: JSON key value is not an object")
    key = _json_bytes(value.get("bytes"))
    if key is None:
        raise KeyFormatError("crypto: JSON key 'bytes' is not base64")
    if len(key) != KEY_SIZE:
        raise KeyFormatError(f"crypto: invalid key length {len(key)}")
    algorithm = value.get("algorithm")
    if algorithm is not None and not isinstance(algorithm, str):
        raise KeyFormatError("crypto: JSON key 'algorithm' is not a string")
    generic = not algorithm
    try:
        cipher = Cipher.AES256 if generic else parse_cipher(algorithm)
    except ValueError as err:
        raise KeyFormatError(str(err)) from None
    created_at_text = value.get("created_at")
    if created_at_text is None:
        created_at = None
    elif isinstance(created_at_text, str):
        try:
            created_at = parse_time(created_at_text)
        except ValueError:
            raise KeyFormatError("crypto: JSON key 'created_at' is not an RFC 3339 time") from None
    else:
        raise KeyFormatError("crypto: JSON key 'created_at' is not a string")
    created_by = value.get("created_by")
    if created_by is None:
        created_by = ""
    elif not isinstance(created_by, str):
        raise KeyFormatError("crypto: JSON key 'created_by' is not a string")
    return KeyVersion(SecretKey(cipher, key), None, created_at, created_by, generic)


def encode_key_version(kv: KeyVersion) -> bytes:
    """The newest stored form: base64std(protobuf KeyVersion), byte-identical to Go's encoder."""
    if kv.hmac_key is None:
        raise KeyFormatError("crypto: a key version without an HMAC key cannot be encoded")
    secret = kv.secret
    seconds, nanos = _to_unix(kv.created_at)
    timestamp = b""
    if seconds:
        timestamp += b"\x08" + _varint(seconds)
    if nanos:
        timestamp += b"\x10" + _varint(nanos)
    msg = _len_field(1, b"\x0a\x20" + secret._key + b"\x10" + _varint(int(secret.cipher)))
    msg += _len_field(2, b"\x0a\x20" + kv.hmac_key + b"\x10" + _varint(_HASH_SHA256))
    msg += _len_field(3, timestamp)
    if kv.created_by:
        msg += _len_field(4, kv.created_by.encode("utf-8"))
    return base64.b64encode(msg)


# --- protobuf (hand-rolled subset: proto3 KeyVersion) ---------------------------------------------

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_SGROUP, _WIRE_EGROUP, _WIRE_I32 = 0, 1, 2, 3, 4, 5
_U64: Final = (1 << 64) - 1


def _varint(value: int) -> bytes:
    """A protobuf varint; negative values are their 64-bit two's complement (10 bytes)."""
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _varint(number << 3 | _WIRE_LEN) + _varint(len(payload)) + payload


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos`` (at most 10 bytes, fitting 64 bits); returns (value, new pos)."""
    result = 0
    for i in range(10):
        if pos >= len(buf):
            raise KeyFormatError("crypto: truncated protobuf varint")
        b = buf[pos]
        pos += 1
        if i == 9 and b > 1:
            raise KeyFormatError("crypto: protobuf varint overflows 64 bits")
        result |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return result, pos
    raise KeyFormatError("crypto: protobuf varint too long")


def _skip_field(buf: bytes, pos: int, number: int, wire: int) -> int:
    """Skip the value of an unknown field (any wire type, groups included); returns the new pos."""
    if wire == _WIRE_VARINT:
        return _read_varint(buf, pos)[1]
    if wire in (_WIRE_I64, _WIRE_I32):
        end = pos + (8 if wire == _WIRE_I64 else 4)
    elif wire == _WIRE_LEN:
        n, pos = _read_varint(buf, pos)
        end = pos + n
    elif wire == _WIRE_SGROUP:
        while True:
            inner, inner_wire, pos = _read_tag(buf, pos)
            if inner_wire == _WIRE_EGROUP:
                if inner != number:
                    raise KeyFormatError("crypto: mismatched protobuf group end")
                return pos
            pos = _skip_field(buf, pos, inner, inner_wire)
    else:
        raise KeyFormatError("crypto: invalid protobuf wire type")
    if end > len(buf):
        raise KeyFormatError("crypto: truncated protobuf field")
    return end


def _read_tag(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Decode a field tag at ``pos``: (field number, wire type, new pos)."""
    tag, pos = _read_varint(buf, pos)
    number, wire = tag >> 3, tag & 7
    if number == 0 or number > (1 << 29) - 1:
        raise KeyFormatError("crypto: invalid protobuf field number")
    return number, wire, pos


def _decode_message(buf: bytes, schema: dict[int, int]) -> dict[int, Any]:
    """Decode the fields of ``schema`` ({number: wire type}); unknown or mistyped fields are skipped.

    Scalars and bytes: last occurrence wins. Repeated sub-message occurrences are merged the
    protobuf way (their payloads concatenated), so callers decode them from the joined bytes.
    """
    fields: dict[int, Any] = {}
    pos = 0
    while pos < len(buf):
        number, wire, pos = _read_tag(buf, pos)
        if wire == _WIRE_EGROUP:
            raise KeyFormatError("crypto: unexpected protobuf group end")
        if schema.get(number) != wire:
            pos = _skip_field(buf, pos, number, wire)
        elif wire == _WIRE_VARINT:
            fields[number], pos = _read_varint(buf, pos)
        else:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise KeyFormatError("crypto: truncated protobuf field")
            fields.setdefault(number, []).append(buf[pos : pos + n])
            pos += n
    return fields


def _last(fields: dict[int, Any], number: int) -> bytes:
    """The last occurrence of a bytes/string field (empty if absent)."""
    values = fields.get(number)
    return bytes(values[-1]) if values else b""


def _merged(fields: dict[int, Any], number: int) -> bytes | None:
    """A sub-message field's merged payload, or None if the field never occurs."""
    values = fields.get(number)
    return b"".join(values) if values else None


_KV_SCHEMA: Final = {1: _WIRE_LEN, 2: _WIRE_LEN, 3: _WIRE_LEN, 4: _WIRE_LEN}
_KEY_SCHEMA: Final = {1: _WIRE_LEN, 2: _WIRE_VARINT}
_TS_SCHEMA: Final = {1: _WIRE_VARINT, 2: _WIRE_VARINT}


def _parse_protobuf_key(raw: bytes) -> KeyVersion:
    """Decode and validate a protobuf KeyVersion (32-byte keys, known type, HMAC hash SHA-256)."""
    kv = _decode_message(raw, _KV_SCHEMA)
    sk = _decode_message(_merged(kv, 1) or b"", _KEY_SCHEMA)
    key, key_type = _last(sk, 1), sk.get(2, 0) & 0xFFFFFFFF
    if len(key) != KEY_SIZE:
        raise KeyFormatError(f"crypto: invalid secret key length {len(key)}")
    if key_type not in (Cipher.AES256, Cipher.CHACHA20):
        raise KeyFormatError(f"crypto: invalid secret key type {key_type}")
    hk = _decode_message(_merged(kv, 2) or b"", _KEY_SCHEMA)
    hmac_key, hash_type = _last(hk, 1), hk.get(2, 0) & 0xFFFFFFFF
    if len(hmac_key) != HMAC_KEY_SIZE:
        raise KeyFormatError(f"crypto: invalid HMAC key length {len(hmac_key)}")
    if hash_type != _HASH_SHA256:
        raise KeyFormatError(f"crypto: invalid HMAC key hash {hash_type}")
    ts = _decode_message(_merged(kv, 3) or b"", _TS_SCHEMA)
    seconds = _signed(ts.get(1, 0), 64)
    nanos = _signed(ts.get(2, 0) & 0xFFFFFFFF, 32)
    try:
        created_by = _last(kv, 4).decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError("crypto: CreatedBy is not valid UTF-8") from None
    created_at = _from_unix(seconds, nanos)
    return KeyVersion(SecretKey(Cipher(key_type), key), hmac_key, created_at, created_by)


def _signed(value: int, bits: int) -> int:
    """Reinterpret an unsigned ``bits``-wide integer as two's complement."""
    return value - (1 << bits) if value >> (bits - 1) else value
