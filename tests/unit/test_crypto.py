"""Secret-key AEAD and ciphertext encodings (kesd.crypto) against the shared vectors (§5)."""

from __future__ import annotations

import base64
import json
import os

import pytest

from kesd import crypto
from kesd.crypto import Cipher, SecretKey, cipher_name, hchacha20, parse_cipher, parse_key_version
from kesd.errors import DecryptError
from tests.vectors import load

_DECRYPT = load("crypto_decrypt.json")
DECRYPT_VECTORS = _DECRYPT["upstream"] + _DECRYPT["synthetic"]
ROUNDTRIP_VECTORS = load("crypto_roundtrip.json")["vectors"]
HMAC_VECTORS = load("hmac.json")["vectors"]

# kesd's answer for every era-dependent vector (should_fail: null), see the module docstring of
# kesd/crypto.py: the key ID is ignored (newest) and algorithm-less keys follow the ciphertext.
ERA_CHOICES = {
    "upstream-decrypt-v0.22-keyid": "succeeds",
    "era-generic-key-chacha-ciphertext": "succeeds",
}


def b64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def key_of(vector: dict) -> tuple[SecretKey, bool]:
    """The vector's key and its generic flag (keys without a cipher come from their key file)."""
    if vector["cipher"] is None:
        kv = parse_key_version(vector["key_file_content"].encode())
        assert kv.secret == SecretKey(Cipher.AES256, b64(vector["key_b64"]))
        return kv.secret, kv.generic
    return SecretKey(parse_cipher(vector["cipher"]), b64(vector["key_b64"])), False


@pytest.mark.parametrize("vector", DECRYPT_VECTORS, ids=[v["id"] for v in DECRYPT_VECTORS])
def test_decrypt_vector(vector: dict) -> None:
    key, generic = key_of(vector)
    should_fail = vector["should_fail"]
    if should_fail is None:
        assert vector["id"] in ERA_CHOICES, "era-dependent vector without a documented choice"
        should_fail = ERA_CHOICES[vector["id"]] == "fails"
    ciphertext = b64(vector["ciphertext_b64"])
    if "ciphertext_text" in vector:
        assert ciphertext == vector["ciphertext_text"].encode()
    context = b64(vector["associated_data_b64"])
    if should_fail:
        with pytest.raises(DecryptError):
            key.decrypt(ciphertext, context, generic=generic)
    else:
        assert key.decrypt(ciphertext, context, generic=generic) == b64(vector["plaintext_b64"])


def test_keyed_algorithm_wins_for_keys_stored_with_an_algorithm() -> None:
    # The same ChaCha20 JSON ciphertext under an AES256 key that names its algorithm: newest rule.
    vector = next(v for v in DECRYPT_VECTORS if v["id"] == "era-generic-key-chacha-ciphertext")
    key = SecretKey(Cipher.AES256, b64(vector["key_b64"]))
    with pytest.raises(DecryptError):
        key.decrypt(b64(vector["ciphertext_b64"]))


def test_generic_key_follows_msgpack_algorithm_but_not_raw() -> None:
    vector = next(v for v in DECRYPT_VECTORS if v["id"] == "syn-msgpack-chacha-new-name")
    aes_key = SecretKey(Cipher.AES256, b64(vector["key_b64"]))
    ciphertext, context = b64(vector["ciphertext_b64"]), b64(vector["associated_data_b64"])
    assert aes_key.decrypt(ciphertext, context, generic=True) == b64(vector["plaintext_b64"])
    with pytest.raises(DecryptError):
        aes_key.decrypt(ciphertext, context)
    chacha_raw = SecretKey(Cipher.CHACHA20, b64(vector["key_b64"])).encrypt(b"dek", context)
    with pytest.raises(DecryptError):
        aes_key.decrypt(chacha_raw, context, generic=True)


@pytest.mark.parametrize("vector", ROUNDTRIP_VECTORS, ids=[v["id"] for v in ROUNDTRIP_VECTORS])
def test_roundtrip_vector(vector: dict) -> None:
    key = SecretKey(parse_cipher(vector["cipher"]), b64(vector["key_b64"]))
    plaintext, context = b64(vector["plaintext_b64"]), b64(vector["associated_data_b64"])
    first, second = key.encrypt(plaintext, context), key.encrypt(plaintext, context)
    assert len(first) == len(second) == vector["expected_raw_ciphertext_length"]
    assert first != second
    assert key.decrypt(first, context) == plaintext
    assert key.decrypt(second, context or None) == plaintext
    with pytest.raises(DecryptError):
        key.decrypt(first, context + b"x")


@pytest.mark.parametrize("vector", HMAC_VECTORS, ids=[v["id"] for v in HMAC_VECTORS])
def test_hmac_vector(vector: dict) -> None:
    kv = parse_key_version(vector["key_file_content"].encode())
    assert kv.hmac_key == b64(vector["hmac_key_b64"])
    assert kv.hmac(b64(vector["message_b64"])) == b64(vector["expected_hmac_b64"])


@pytest.mark.parametrize("cipher", list(Cipher), ids=cipher_name)
def test_wrong_associated_data_fails(cipher: Cipher) -> None:
    key = SecretKey(cipher, os.urandom(32))
    ciphertext = key.encrypt(b"secret", b'{"bucket":"a"}')
    for wrong in (None, b"", b'{"bucket":"b"}'):
        with pytest.raises(DecryptError):
            key.decrypt(ciphertext, wrong)
    assert key.decrypt(key.encrypt(b"x", b""), None) == b"x"


@pytest.mark.parametrize("cipher", list(Cipher), ids=cipher_name)
def test_every_tampered_byte_fails(cipher: Cipher) -> None:
    key = SecretKey(cipher, os.urandom(32))
    _, ciphertext = key.generate(b"ctx")
    for i in range(len(ciphertext)):
        tampered = bytearray(ciphertext)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptError):
            key.decrypt(bytes(tampered), b"ctx")
    for cut in (ciphertext[:-1], ciphertext[1:], ciphertext + b"\x00", b"", ciphertext[:28]):
        with pytest.raises(DecryptError):
            key.decrypt(cut, b"ctx")


@pytest.mark.parametrize("cipher", list(Cipher), ids=cipher_name)
def test_generate(cipher: Cipher, monkeypatch: pytest.MonkeyPatch) -> None:
    key = SecretKey(cipher, os.urandom(32))
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(crypto.os, "urandom", counting)
    dek, ciphertext = key.generate(b"context")
    monkeypatch.undo()
    assert calls == [60]
    assert len(dek) == 32
    assert len(ciphertext) == 76
    assert key.decrypt(ciphertext, b"context") == dek
    assert key.generate()[0] != dek


def test_hchacha20_published_vector() -> None:
    # XChaCha20 draft (draft-irtf-cfrg-xchacha-03) §2.2.1 test vector.
    key = bytes(range(32))
    data = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert hchacha20(key, data).hex() == expected


def test_aes_derivation_is_hmac_sha256_of_iv() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.hmac import HMAC

    secret = os.urandom(32)
    ciphertext = SecretKey(Cipher.AES256, secret).encrypt(b"plain", b"ad")
    sealed, iv, nonce = ciphertext[:-28], ciphertext[-28:-12], ciphertext[-12:]
    mac = HMAC(secret, SHA256())
    mac.update(iv)
    assert AESGCM(mac.finalize()).decrypt(nonce, sealed, b"ad") == b"plain"


# --- legacy encodings ----------------------------------------------------------------------------


def _msgpack(alg: bytes, key_id: bytes, iv: bytes, nonce: bytes, sealed: bytes, sealed_tag: int) -> bytes:
    width = {0xC4: 1, 0xC5: 2, 0xC6: 4}[sealed_tag]
    return (
        b"\x95"
        + bytes([0xA0 | len(alg)])
        + alg
        + b"\xd9"
        + bytes([len(key_id)])
        + key_id
        + b"\xc4\x10"
        + iv
        + b"\xc4\x0c"
        + nonce
        + bytes([sealed_tag])
        + len(sealed).to_bytes(width, "big")
        + sealed
    )


@pytest.mark.parametrize("sealed_tag", [0xC4, 0xC5, 0xC6], ids=["bin8", "bin16", "bin32"])
@pytest.mark.parametrize("alg", [b"AES256-GCM_SHA256", b"AES256"])
def test_msgpack_bin_widths(alg: bytes, sealed_tag: int) -> None:
    key = SecretKey(Cipher.AES256, os.urandom(32))
    raw = key.encrypt(b"p" * 200, b"ad")
    sealed, iv, nonce = raw[:-28], raw[-28:-12], raw[-12:]
    packed = _msgpack(alg, b"0" * 32, iv, nonce, sealed, sealed_tag)
    assert key.decrypt(packed, b"ad") == b"p" * 200
    assert key.decrypt(_msgpack(alg, b"", iv, nonce, sealed, sealed_tag), b"ad") == b"p" * 200
    for broken in (packed + b"\x00", packed[:-1], b"\x95" + packed[1:].replace(alg, b"X" * len(alg))):
        with pytest.raises(DecryptError):
            key.decrypt(broken, b"ad")


def test_json_ciphertext_field_names_match_case_insensitively() -> None:
    key = SecretKey(Cipher.AES256, os.urandom(32))
    raw = key.encrypt(b"plain")
    doc = {
        "AEAD": "AES-256-GCM-HMAC-SHA-256",
        "Iv": base64.b64encode(raw[-28:-12]).decode(),
        "nonce": base64.b64encode(raw[-12:]).decode(),
        "bytes": base64.b64encode(raw[:-28]).decode(),
    }
    assert key.decrypt(json.dumps(doc).encode()) == b"plain"
    doc["aead"] = "AES-256-GCM"  # the pre-2020 name, now later in the object: it wins and is refused
    with pytest.raises(DecryptError):
        key.decrypt(json.dumps(doc).encode())


def test_json_ciphertext_without_bytes_fails() -> None:
    key = SecretKey(Cipher.AES256, bytes(32))
    doc = {"aead": "AES-256-GCM-HMAC-SHA-256", "iv": base64.b64encode(bytes(16)).decode()}
    doc["nonce"] = base64.b64encode(bytes(12)).decode()
    with pytest.raises(DecryptError):
        key.decrypt(json.dumps(doc).encode())


# --- names, construction, secrecy ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cipher"),
    [
        ("AES256", Cipher.AES256),
        ("AES256-GCM_SHA256", Cipher.AES256),
        ("ChaCha20", Cipher.CHACHA20),
        ("XCHACHA20-POLY1305", Cipher.CHACHA20),
    ],
)
def test_parse_cipher(name: str, cipher: Cipher) -> None:
    assert parse_cipher(name) is cipher


@pytest.mark.parametrize("name", ["", "aes256", "undefined", "AES-256-GCM", "CHACHA20", "ChaCha20Poly1305"])
def test_parse_cipher_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        parse_cipher(name)


def test_cipher_names_and_numbers() -> None:
    assert (cipher_name(Cipher.AES256), cipher_name(Cipher.CHACHA20)) == ("AES256", "ChaCha20")
    assert (int(Cipher.AES256), int(Cipher.CHACHA20)) == (1, 2)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_secret_key_length(length: int) -> None:
    material = os.urandom(length)
    with pytest.raises(ValueError) as info:
        SecretKey(Cipher.AES256, material)
    assert not material or not _leaks(str(info.value), material)


def test_secret_key_rejects_unknown_cipher() -> None:
    with pytest.raises(ValueError):
        SecretKey(3, bytes(32))  # type: ignore[arg-type]


def test_secret_key_is_immutable_and_compares_by_value() -> None:
    material = os.urandom(32)
    key = SecretKey(Cipher.CHACHA20, material)
    with pytest.raises(AttributeError):
        key._key = bytes(32)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key.extra = 1  # type: ignore[attr-defined]
    assert key == SecretKey(Cipher.CHACHA20, material)
    assert key != SecretKey(Cipher.AES256, material)
    assert key.cipher is Cipher.CHACHA20


def _leaks(text: str, secret: bytes) -> bool:
    forms = (
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        repr(secret),
    )
    return any(form in text for form in forms)


@pytest.mark.parametrize("cipher", list(Cipher), ids=cipher_name)
def test_repr_of_secret_key_hides_material(cipher: Cipher) -> None:
    material = os.urandom(32)
    key = SecretKey(cipher, material)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert not _leaks(text, material)
        assert cipher_name(cipher) in text


def test_repr_of_key_version_hides_material() -> None:
    kv = crypto.new_key_version(Cipher.AES256, "3ecf")
    for text in (repr(kv), str(kv), f"{kv!r}"):
        assert not _leaks(text, kv.secret._key)
        assert kv.hmac_key is not None
        assert not _leaks(text, kv.hmac_key)
        assert "3ecf" in text
