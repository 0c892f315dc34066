"""Policy and identity routes for every kind of caller (reference §1.3, newest SDK shapes)."""

from __future__ import annotations

import json

from tests.integration.harness import Identity, Server, call


def ndjson(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines() if line]


def test_policy_describe_read_list(server: Server, admin: Identity) -> None:
    described = call(server, "GET", "/v1/policy/describe/my-app", identity=admin)
    assert described.status == 200
    info = described.json()
    assert info["name"] == "my-app"
    assert info["created_by"] == admin.identity
    assert info["created_at"].endswith("Z")
    read = call(server, "GET", "/v1/policy/read/my-app", identity=admin).json()
    assert read["allow"]["/v1/key/create/my-key*"] == {}
    assert read["deny"] == {"/v1/key/*/my-key-secret": {}, "/v1/key/generate/my-key-denied": {}}
    listed = call(server, "GET", "/v1/policy/list/*", identity=admin)
    assert listed.headers["content-type"] == "application/x-ndjson"
    assert [p["name"] for p in ndjson(listed.body)] == ["my-app"]
    assert ndjson(call(server, "GET", "/v1/policy/list/my-*", identity=admin).body)[0]["name"] == "my-app"
    assert ndjson(call(server, "GET", "/v1/policy/list/zzz", identity=admin).body) == []
    missing = call(server, "GET", "/v1/policy/describe/nope", identity=admin)
    assert (missing.status, missing.body) == (404, b'{"message":"policy does not exist"\n}')
    bad = call(server, "GET", "/v1/policy/read/bad.name", identity=admin)
    assert bad.status == 400
    assert b"policy name 'bad.name' is empty, too long or contains invalid characters" in bad.body


def test_identity_describe_and_list(server: Server, admin: Identity, app_client: Identity) -> None:
    me = call(server, "GET", f"/v1/identity/describe/{admin.identity}", identity=admin).json()
    assert me["admin"] is True
    other = call(server, "GET", f"/v1/identity/describe/{app_client.identity}", identity=admin).json()
    assert other["policy"] == "my-app"
    assert other["created_by"] == admin.identity
    missing = call(server, "GET", "/v1/identity/describe/" + "0" * 64, identity=admin)
    assert (missing.status, missing.body) == (404, b'{"message":"identity does not exist"\n}')
    rows = ndjson(call(server, "GET", "/v1/identity/list/*", identity=admin).body)
    ids = [r["identity"] for r in rows]
    assert ids == sorted(ids)
    assert admin.identity in ids  # the admin is listed, as KES does
    assert {"identity": app_client.identity, "policy": "my-app"}.items() <= next(
        r for r in rows if r["identity"] == app_client.identity
    ).items()


def test_self_describe_for_every_kind_of_caller(
    server: Server, admin: Identity, app_client: Identity, stranger: Identity
) -> None:
    mine = call(server, "GET", "/v1/identity/self/describe", identity=app_client)
    assert mine.status == 200  # the newest KES answers 404 to every non-admin: a bug
    info = mine.json()
    assert info["identity"] == app_client.identity
    assert info["policy"] == "my-app"  # the flat shape the SDK decodes
    assert "/v1/key/create/my-key*" in info["allow"]
    assert "/v1/key/*/my-key-secret" in info["deny"]
    root = call(server, "GET", "/v1/identity/self/describe", identity=admin).json()
    assert root["admin"] is True
    assert root["identity"] == admin.identity
    unknown = call(server, "GET", "/v1/identity/self/describe", identity=stranger)
    assert (unknown.status, unknown.body) == (404, b'{"message":"identity does not exist"\n}')


def test_policy_routes_obey_policies(server: Server, app_client: Identity) -> None:
    reply = call(server, "GET", "/v1/policy/list/*", identity=app_client)
    assert (reply.status, reply.body) == (403, b'{"message":"not authorized: insufficient permissions"\n}')
