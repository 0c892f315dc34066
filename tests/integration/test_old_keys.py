"""An existing KES key directory: old key files load and old ciphertexts decrypt over the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import vectors
from tests.integration.conftest import base_config
from tests.integration.harness import Identity, Server, call
from tests.unit.test_crypto import ERA_CHOICES

DECRYPT = vectors.load("crypto_decrypt.json")
CASES = [v for section in ("upstream", "synthetic") for v in DECRYPT[section]]
KEY_VERSIONS = vectors.load("key_versions.json")


def key_file(vector: dict) -> str:
    """The key file a KES of the vector's era would have written (JSON, with algorithm if known)."""
    if vector.get("key_file_content"):
        return vector["key_file_content"]
    algorithm = {"AES256": "AES256-GCM_SHA256", "ChaCha20": "XCHACHA20-POLY1305"}[vector["cipher"]]
    return json.dumps({"bytes": vector["key_b64"], "algorithm": algorithm})


@pytest.fixture(scope="module")
def old_dir_server(tmp_path_factory: pytest.TempPathFactory, server_id: Identity, admin: Identity):
    tmp = tmp_path_factory.mktemp("old-keys")
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    for i, vector in enumerate(CASES):
        (keys / f"dec-{i}").write_text(key_file(vector))
    for i, vector in enumerate(KEY_VERSIONS["parse"]):
        if not vector["should_fail"]:
            (keys / f"stored-{i}").write_text(vector["stored_value"])
    with Server(tmp, base_config(server_id, admin.identity, keys)) as srv:
        yield srv


@pytest.mark.parametrize(("index", "vector"), list(enumerate(CASES)), ids=[v["id"] for v in CASES])
def test_decrypt_vector_over_http(old_dir_server: Server, admin: Identity, index: int, vector: dict) -> None:
    should_fail = vector["should_fail"]
    if should_fail is None:
        should_fail = ERA_CHOICES[vector["id"]] == "fails"
    body = {"ciphertext": vector["ciphertext_b64"]}
    if vector["associated_data_b64"]:
        body["context"] = vector["associated_data_b64"]
    reply = call(old_dir_server, "POST", f"/v1/key/decrypt/dec-{index}", json.dumps(body), identity=admin)
    if should_fail:
        assert (reply.status, reply.body) == (
            400,
            b'{"message":"decryption failed: ciphertext is not authentic"\n}',
        )
    else:
        assert reply.status == 200, reply.body
        assert reply.json()["plaintext"] == vector["plaintext_b64"]


@pytest.mark.parametrize(
    ("index", "vector"),
    [(i, v) for i, v in enumerate(KEY_VERSIONS["parse"]) if not v["should_fail"]],
    ids=[v["id"] for v in KEY_VERSIONS["parse"] if not v["should_fail"]],
)
def test_stored_key_formats_are_served(
    old_dir_server: Server, admin: Identity, index: int, vector: dict
) -> None:
    info = call(old_dir_server, "GET", f"/v1/key/describe/stored-{index}", identity=admin)
    assert info.status == 200, info.body
    expected = vector["expected"]
    assert (
        info.json()["algorithm"]
        == {"AES256": "AES256-GCM_SHA256", "ChaCha20": "XCHACHA20-POLY1305"}[expected["cipher"]]
    )
    if expected.get("created_by"):
        assert info.json()["created_by"] == expected["created_by"]
    sealed = call(
        old_dir_server, "POST", f"/v1/key/encrypt/stored-{index}", '{"plaintext":"aGk="}', identity=admin
    )
    opened = call(
        old_dir_server,
        "POST",
        f"/v1/key/decrypt/stored-{index}",
        json.dumps({"ciphertext": sealed.json()["ciphertext"]}),
        identity=admin,
    )
    assert opened.json() == {"plaintext": "aGk="}
    mac = call(old_dir_server, "PUT", f"/v1/key/hmac/stored-{index}", '{"message":"aGk="}', identity=admin)
    if expected.get("hmac_key_b64"):
        assert mac.status == 200
    else:
        assert (mac.status, mac.body) == (409, b'{"message":"key does not support HMAC"\n}')


def test_new_keys_are_written_in_the_newest_format(
    old_dir_server: Server, admin: Identity, tmp_path: Path
) -> None:
    assert call(old_dir_server, "POST", "/v1/key/create/fresh", identity=admin).status == 200
    keys = Path(old_dir_server.config_path).parent / "keys"
    content = (keys / "fresh").read_bytes()
    assert not content.startswith(b"{")  # base64 protobuf, not the old JSON
    assert b"\n" not in content
