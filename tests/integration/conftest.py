"""Fixtures: identities on disk and a running `kes server` with a filesystem keystore."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Identity, Server, make_identity


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kesd")


@pytest.fixture(scope="module")
def server_id(workdir: Path) -> Identity:
    return make_identity(workdir, "server", kind="ecdsa", san=("127.0.0.1", "localhost"))


@pytest.fixture(scope="module")
def admin(workdir: Path) -> Identity:
    return make_identity(workdir, "admin")


@pytest.fixture(scope="module")
def app_client(workdir: Path) -> Identity:
    return make_identity(workdir, "my-app")


@pytest.fixture(scope="module")
def stranger(workdir: Path) -> Identity:
    return make_identity(workdir, "stranger")


def base_config(server_id: Identity, admin: str, keys: Path, policies: dict | None = None) -> dict:
    """A config with an ephemeral loopback port and a filesystem keystore."""
    return {
        "address": "127.0.0.1:0",
        "admin": {"identity": admin},
        "tls": {"key": str(server_id.key), "cert": str(server_id.cert)},
        "policy": policies or {},
        "keystore": {"fs": {"path": str(keys)}},
    }


@pytest.fixture(scope="module")
def server(workdir: Path, server_id: Identity, admin: Identity, app_client: Identity) -> Iterator[Server]:
    policies = {
        "my-app": {
            "allow": [
                "/v1/key/create/my-key*",
                "/v1/key/generate/my-key*",
                "/v1/key/decrypt/my-key*",
                "/v1/key/encrypt/my-key*",
                "/v1/key/hmac/my-key*",
                "/v1/key/describe/my-key*",
                "/v1/key/list/*",
                "/v1/status",
                "/v1/key/*/my-key-internal",
            ],
            "deny": ["/v1/key/*/my-key-secret", "/v1/key/generate/my-key-denied"],
            "identities": [app_client.identity],
        }
    }
    config = base_config(server_id, admin.identity, workdir / "keys", policies)
    with Server(workdir, config) as srv:
        yield srv
