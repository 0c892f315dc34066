"""The key API over real mTLS against a real `kes server` process (reference §1-§2)."""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading

import pytest

from tests.integration.harness import Identity, Server, call, make_identity


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def err(message: str) -> bytes:
    """KES's exact error body (newline before the closing brace)."""
    return b'{"message":"' + message.encode() + b'"\n}'


def test_version_needs_no_policy(server: Server, stranger: Identity) -> None:
    reply = call(server, "GET", "/version", identity=stranger)
    assert reply.status == 200
    assert set(reply.json()) == {"version", "commit"}


def test_handshake_without_client_certificate_fails(server: Server) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        call(server, "GET", "/version", identity=None)


def test_self_signed_ca_certificate_counts_as_no_certificate(server: Server, workdir) -> None:
    ca_like = make_identity(workdir, "ca-like", ca=True)
    reply = call(server, "GET", "/v1/key/list/*", identity=ca_like)
    assert (reply.status, reply.body) == (400, err("tls: client certificate is required"))


def test_create_generate_decrypt_round_trip(server: Server, app_client: Identity) -> None:
    assert call(server, "POST", "/v1/key/create/my-key-rt", identity=app_client).status == 200
    context = b64(b'{"bucket":"b"}')
    reply = call(
        server, "POST", "/v1/key/generate/my-key-rt", json.dumps({"context": context}), identity=app_client
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    dek = reply.json()
    assert len(base64.b64decode(dek["plaintext"])) == 32
    assert len(base64.b64decode(dek["ciphertext"])) == 76
    body = json.dumps({"ciphertext": dek["ciphertext"], "context": context})
    opened = call(server, "PUT", "/v1/key/decrypt/my-key-rt", body, identity=app_client)
    assert opened.status == 200
    assert opened.json() == {"plaintext": dek["plaintext"]}
    wrong = call(
        server,
        "POST",
        "/v1/key/decrypt/my-key-rt",
        json.dumps({"ciphertext": dek["ciphertext"]}),
        identity=app_client,
    )
    assert (wrong.status, wrong.body) == (400, err("decryption failed: ciphertext is not authentic"))


def test_create_twice_is_key_exists(server: Server, app_client: Identity) -> None:
    assert call(server, "PUT", "/v1/key/create/my-key-twice", identity=app_client).status == 200
    reply = call(server, "PUT", "/v1/key/create/my-key-twice", identity=app_client)
    assert (reply.status, reply.body) == (400, err("key already exists"))
    assert reply.headers["content-type"] == "application/json"


def test_concurrent_creates_of_one_name(server: Server, app_client: Identity) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def create() -> None:
        status = call(server, "POST", "/v1/key/create/my-key-race", identity=app_client).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [400] * 7


def test_policy_denies_other_keys_with_exact_message(server: Server, app_client: Identity) -> None:
    reply = call(server, "POST", "/v1/key/create/other-key", identity=app_client)
    assert (reply.status, reply.body) == (403, err("not authorized: insufficient permissions"))


def test_unknown_identity_is_not_allowed(server: Server, stranger: Identity) -> None:
    reply = call(server, "POST", "/v1/key/create/my-key-x", identity=stranger)
    assert (reply.status, reply.body) == (403, err("not authorized: insufficient permissions"))


def test_2023_style_deny_glob_still_protects(server: Server, admin: Identity, app_client: Identity) -> None:
    assert call(server, "POST", "/v1/key/create/my-key-secret", identity=admin).status == 200
    reply = call(server, "POST", "/v1/key/generate/my-key-secret", identity=app_client)
    assert reply.status == 403
    assert call(server, "POST", "/v1/key/generate/my-key-denied", identity=app_client).status == 403


def test_2023_style_allow_glob_works(server: Server, admin: Identity, app_client: Identity) -> None:
    assert call(server, "POST", "/v1/key/create/my-key-internal", identity=admin).status == 200
    # /v1/key/*/my-key-internal allows every operation on that one key, e.g. delete.
    assert call(server, "DELETE", "/v1/key/delete/my-key-internal", identity=app_client).status == 200


def test_admin_bypasses_policies(server: Server, admin: Identity) -> None:
    assert call(server, "POST", "/v1/key/create/admin-key", identity=admin).status == 200
    assert call(server, "DELETE", "/v1/key/delete/admin-key", identity=admin).status == 200
    reply = call(server, "DELETE", "/v1/key/delete/admin-key", identity=admin)
    assert (reply.status, reply.body) == (404, err("key does not exist"))


def test_invalid_name_is_checked_after_authorization(
    server: Server, admin: Identity, app_client: Identity
) -> None:
    reply = call(server, "POST", "/v1/key/create/bad.name", identity=admin)
    assert (reply.status, reply.body) == (
        400,
        err("key name 'bad.name' is empty, too long or contains invalid characters"),
    )
    assert call(server, "POST", "/v1/key/create/bad.name", identity=app_client).status == 403


def test_path_traversal_is_not_a_key(server: Server, admin: Identity, workdir) -> None:
    reply = call(server, "GET", "/v1/key/describe/..%2F..%2Fetc%2Fpasswd", identity=admin)
    assert reply.status in (301, 400)
    assert not (workdir / "etc").exists()


def test_wrong_method_is_405_with_accept(server: Server, admin: Identity) -> None:
    reply = call(server, "GET", "/v1/key/create/my-key", identity=admin)
    assert reply.status == 405
    assert reply.headers["accept"] == "PUT"
    assert reply.body == err("received method 'GET' expected 'PUT'")


def test_unknown_path_is_go_404(server: Server, admin: Identity) -> None:
    reply = call(server, "GET", "/v1/nothing", identity=admin)
    assert (reply.status, reply.body) == (404, b"404 page not found\n")
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"


def test_list_without_slash_redirects(server: Server, admin: Identity) -> None:
    reply = call(server, "GET", "/v1/key/list", identity=admin)
    assert reply.status == 301
    assert reply.headers["location"] == "/v1/key/list/"


def test_non_canonical_path_redirects(server: Server, admin: Identity) -> None:
    reply = call(server, "GET", "/v1/key//describe/x", identity=admin)
    assert reply.status == 301
    assert reply.headers["location"] == "/v1/key/describe/x"


def test_list_keys_by_prefix_and_star(server: Server, admin: Identity) -> None:
    for name in ("list-a1", "list-a2", "list-b1"):
        call(server, "POST", f"/v1/key/create/{name}", identity=admin)
    for arg in ("list-a", "list-a*"):
        reply = call(server, "GET", f"/v1/key/list/{arg}", identity=admin)
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/x-ndjson"
        names = [json.loads(line)["name"] for line in reply.body.splitlines()]
        assert names == ["list-a1", "list-a2"]
    every = call(server, "GET", "/v1/key/list/*", identity=admin)
    names = [json.loads(line)["name"] for line in every.body.splitlines()]
    assert {"list-a1", "list-a2", "list-b1"} <= set(names)
    assert names == sorted(names)
    bad = call(server, "GET", "/v1/key/list/a*b", identity=admin)
    assert (bad.status, bad.body) == (400, err("listing pattern 'a*b' is empty, too long or is invalid"))


def test_describe_key(server: Server, app_client: Identity) -> None:
    call(server, "POST", "/v1/key/create/my-key-describe", identity=app_client)
    info = call(server, "GET", "/v1/key/describe/my-key-describe", identity=app_client).json()
    assert info["name"] == "my-key-describe"
    assert info["algorithm"] == "AES256-GCM_SHA256"
    assert info["created_by"] == app_client.identity
    assert info["created_at"].endswith("Z")


def test_encrypt_decrypt_and_hmac(server: Server, app_client: Identity) -> None:
    call(server, "POST", "/v1/key/create/my-key-ed", identity=app_client)
    sealed = call(
        server,
        "POST",
        "/v1/key/encrypt/my-key-ed",
        json.dumps({"plaintext": b64(b"hello")}),
        identity=app_client,
    ).json()["ciphertext"]
    opened = call(
        server, "POST", "/v1/key/decrypt/my-key-ed", json.dumps({"ciphertext": sealed}), identity=app_client
    ).json()
    assert base64.b64decode(opened["plaintext"]) == b"hello"
    mac1 = call(
        server, "PUT", "/v1/key/hmac/my-key-ed", json.dumps({"message": b64(b"m")}), identity=app_client
    )
    mac2 = call(
        server, "PUT", "/v1/key/hmac/my-key-ed", json.dumps({"message": b64(b"m")}), identity=app_client
    )
    assert mac1.status == 200
    assert len(base64.b64decode(mac1.json()["hmac"])) == 32
    assert mac1.body == mac2.body


def test_bad_bodies(server: Server, app_client: Identity, admin: Identity) -> None:
    call(server, "POST", "/v1/key/create/my-key-body", identity=app_client)
    for body in ("not json", "[]", '{"context": "no base64!"}', '{"context": "YQ"}'):
        reply = call(server, "POST", "/v1/key/generate/my-key-body", body, identity=app_client)
        assert (reply.status, reply.body) == (400, err("invalid request body")), body
    huge = json.dumps({"plaintext": b64(b"x" * 800_000)})
    reply = call(server, "POST", "/v1/key/encrypt/my-key-body", huge, identity=app_client)
    assert (reply.status, reply.body) == (400, err("invalid request body"))
    reply = call(server, "POST", "/v1/key/import/imp", "{", identity=admin)
    assert (reply.status, reply.body) == (400, err("invalid import key request body"))


def test_import_rules(server: Server, admin: Identity) -> None:
    key = b64(bytes(range(32)))
    reply = call(
        server, "POST", "/v1/key/import/imp-1", json.dumps({"key": key, "cipher": "DES"}), identity=admin
    )
    assert (reply.status, reply.body) == (406, err("algorithm 'DES' is not supported"))
    reply = call(
        server,
        "POST",
        "/v1/key/import/imp-1",
        json.dumps({"key": b64(b"short"), "cipher": "AES256"}),
        identity=admin,
    )
    assert (reply.status, reply.body) == (406, err("invalid key size for 'AES256'"))
    assert (
        call(
            server,
            "POST",
            "/v1/key/import/imp-1",
            json.dumps({"key": key, "cipher": "ChaCha20"}),
            identity=admin,
        ).status
        == 200
    )
    # 2022 clients send {"bytes"} only: AES256.
    assert (
        call(server, "POST", "/v1/key/import/imp-2", json.dumps({"bytes": key}), identity=admin).status == 200
    )
    info = call(server, "GET", "/v1/key/describe/imp-1", identity=admin).json()
    assert info["algorithm"] == "XCHACHA20-POLY1305"


def test_status_ready_api(server: Server, admin: Identity, app_client: Identity) -> None:
    status = call(server, "GET", "/v1/status", identity=app_client)
    assert status.status == 200
    info = status.json()
    assert info["os"] == "linux"
    assert info["keystore_latency"] >= 1
    assert "keystore_unreachable" not in info
    assert call(server, "GET", "/v1/ready", identity=admin).status == 200
    routes = call(server, "GET", "/v1/api", identity=admin).json()
    generate = next(r for r in routes if r["path"] == "/v1/key/generate/")
    assert generate == {"method": "PUT", "path": "/v1/key/generate/", "max_body": 1_000_000, "timeout": 15}


def test_key_files_are_private(server: Server, admin: Identity, workdir) -> None:
    call(server, "POST", "/v1/key/create/mode-check", identity=admin)
    keys = workdir / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert (keys / "mode-check").stat().st_mode & 0o777 == 0o600
    assert not [p for p in keys.iterdir() if p.name.startswith(".")]


def test_keep_alive_and_pipelining(server: Server, app_client: Identity) -> None:
    """Several requests written at once on one connection are answered in order."""
    import socket

    from tests.integration.harness import client_context

    call(server, "POST", "/v1/key/create/my-key-pipe", identity=app_client)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = client_context(app_client).wrap_socket(raw)
    try:
        req = (
            b"POST /v1/key/generate/my-key-pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
            b"GET /v1/key/describe/my-key-pipe HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v1/key/describe/missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        tls.sendall(req)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    finally:
        tls.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d+) ", data)
    assert statuses == [b"200", b"200", b"403"]


def test_expect_100_continue(server: Server, app_client: Identity) -> None:
    """curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for the interim answer."""
    import socket

    from tests.integration.harness import client_context

    call(server, "POST", "/v1/key/create/my-key-expect", identity=app_client)
    body = json.dumps({"plaintext": b64(b"x" * 2000)}).encode()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = client_context(app_client).wrap_socket(raw)
    try:
        tls.sendall(
            b"POST /v1/key/encrypt/my-key-expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert tls.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        tls.sendall(body)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    finally:
        tls.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def _tls_socket(server: Server, identity: Identity):
    import socket

    from tests.integration.harness import client_context

    raw = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    return client_context(identity).wrap_socket(raw)


def _read_all(tls) -> bytes:
    data = b""
    try:
        while chunk := tls.recv(65536):
            data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return data


def test_malformed_request_gets_400_and_server_survives(server: Server, admin: Identity) -> None:
    tls = _tls_socket(server, admin)
    try:
        tls.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert _read_all(tls).startswith(b"HTTP/1.1 400 ")
    finally:
        tls.close()
    assert call(server, "GET", "/version", identity=admin).status == 200


def test_oversized_headers_close_the_connection(server: Server, admin: Identity) -> None:
    tls = _tls_socket(server, admin)
    try:
        tls.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert _read_all(tls).startswith(b"HTTP/1.1 400 ")
    finally:
        tls.close()


def test_slow_header_is_cut_after_read_header_timeout(server: Server, admin: Identity) -> None:
    """Like Go's ReadHeaderTimeout (5 s): a client that never finishes its header is disconnected."""
    import time

    tls = _tls_socket(server, admin)
    try:
        tls.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        data = _read_all(tls)
        waited = time.monotonic() - start
    finally:
        tls.close()
    assert data == b""
    assert 4.0 <= waited < 14.0
