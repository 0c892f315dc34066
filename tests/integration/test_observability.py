"""Audit and error streams, metrics, status, the offline cache, skip_auth and TLS proxies — over real mTLS."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import vectors
from tests.integration.conftest import base_config
from tests.integration.harness import Identity, Server, call, client_context, make_identity


class StreamReader:
    """A raw HTTPS connection following an ndjson log stream."""

    def __init__(self, server: Server, identity: Identity, path: str, rcvbuf: int | None = None) -> None:
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", server.port))
        self.tls = client_context(identity).wrap_socket(raw)
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"application/x-ndjson" in head

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def lines(self, n: int) -> list[dict]:
        """The next ``n`` JSON lines (chunked transfer encoding is decoded here)."""
        out: list[dict] = []
        text = b""
        while len(out) < n:
            size = int(self._until(b"\r\n"), 16)
            while len(self.buffer) < size + 2:
                self.buffer += self.tls.recv(65536)
            text += self.buffer[:size]
            self.buffer = self.buffer[size + 2 :]
            *complete, text = text.split(b"\n")
            out.extend(json.loads(line) for line in complete if line)
        return out

    def close(self) -> None:
        self.tls.close()


def test_every_request_is_audited_once_without_secrets(
    server: Server, admin: Identity, app_client: Identity, stranger: Identity
) -> None:
    stream = StreamReader(server, admin, "/v1/log/audit")
    try:
        first = stream.lines(1)[0]  # the subscription's own request
        assert first["request"]["path"] == "/v1/log/audit"
        call(server, "POST", "/v1/key/create/my-key-audit", identity=app_client)
        dek = call(server, "POST", "/v1/key/generate/my-key-audit", "{}", identity=app_client).json()
        call(server, "POST", "/v1/key/create/other-key", identity=stranger)  # 403
        call(server, "GET", "/v1/key/describe/..", identity=admin)  # redirected
        tls = client_context(admin).wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
        tls.sendall(b"NOT HTTP\r\n\r\n")
        tls.recv(100)
        tls.close()
        events = stream.lines(5)
    finally:
        stream.close()
    got = [(e["request"].get("path"), e["response"]["code"], e["request"].get("identity")) for e in events]
    assert got[0] == ("/v1/key/create/my-key-audit", 200, app_client.identity)
    assert got[1] == ("/v1/key/generate/my-key-audit", 200, app_client.identity)
    assert got[2] == ("/v1/key/create/other-key", 403, stranger.identity)
    assert got[3][1] == 301
    assert got[4][1] == 400
    for event in events:
        assert event["request"]["ip"] == "127.0.0.1"
        assert isinstance(event["response"]["time"], int)
        assert event["time"].endswith("Z")
    text = json.dumps(events)
    assert dek["plaintext"] not in text
    assert dek["ciphertext"] not in text


def test_stream_lines_match_the_sdk_shape() -> None:
    """Our audit lines carry the fields the SDK parses in its own examples."""
    for vector in vectors.load("streams.json")["vectors"]:
        line = json.loads(vector["line"])
        if vector["stream"] == "/v1/log/audit":
            assert set(line) == {"time", "request", "response"}
            assert {"code", "time"} <= set(line["response"])


def test_error_stream_reports_a_broken_key_file(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "broken").write_text("this is not a key")
    with Server(tmp_path, base_config(server_id, admin.identity, keys)) as srv:
        stream = StreamReader(srv, admin, "/v1/log/error")
        try:
            reply = call(srv, "GET", "/v1/key/describe/broken", identity=admin)
            assert (reply.status, reply.body) == (502, b'{"message":"failed to read key"\n}')
            (line,) = stream.lines(1)
        finally:
            stream.close()
    assert "broken" in line["message"]
    assert "cannot be parsed" in line["message"]


def test_stalled_subscriber_loses_events_not_the_server(server: Server, admin: Identity) -> None:
    """A subscriber that never reads: the API stays fast, memory stays bounded, drops are counted."""
    stalled = StreamReader(server, admin, "/v1/log/audit", rcvbuf=4096)
    try:
        before_rss = _rss(server)
        tls = client_context(admin).wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
        batch = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" * 200
        start = time.monotonic()
        for _ in range(100):  # 20,000 requests, pipelined
            tls.sendall(batch)
            got = 0
            while got < 200:
                got += tls.recv(1 << 20).count(b"HTTP/1.1 200 OK")
        elapsed = time.monotonic() - start
        tls.close()
        metrics = _metrics(server, admin)
        assert metrics["kesd_log_audit_dropped"] > 0
        assert elapsed < 60
        assert _rss(server) - before_rss < 50 * 1024 * 1024
    finally:
        stalled.close()


def _rss(server: Server) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def _metrics(server: Server, identity: Identity) -> dict[str, float]:
    reply = call(server, "GET", "/v1/metrics", identity=identity)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")  # the parser renames counter samples
            key = name + (f"{{code={sample.labels['code']}}}" if "code" in sample.labels else "")
            values[key] = values.get(key, 0) + sample.value
    return values


def test_metrics_have_kes_names_types_and_one_sample(
    server: Server, admin: Identity, app_client: Identity
) -> None:
    call(server, "POST", "/v1/key/create/my-key-metric", identity=app_client)
    call(server, "POST", "/v1/key/create/my-key-metric", identity=app_client)  # 400
    text = call(server, "GET", "/v1/metrics", identity=admin).body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for spec in vectors.load("metrics.json")["families"]:
        name = spec["name"]
        if name == "kes_http_request_failure":
            continue  # no 5xx answered yet: the family has no sample and is left out (checked below)
        assert f"# TYPE {name} {spec['type']}\n" in text, name  # exact name: no _total suffix
        samples = (
            families[name].samples if name in families else families[name.removesuffix("_total")].samples
        )
        assert samples, name
        labelled = name in ("kes_http_request_success", "kes_http_request_error", "kes_http_request_failure")
        if not labelled and spec["type"] != "histogram":
            assert len(samples) == 1, name
    assert 'kes_http_request_success{code="200"}' in text
    assert 'kes_http_request_error{code="400"}' in text
    assert "kes_http_request_failure" not in text  # no 5xx yet: no empty family
    before = _metrics(server, admin)
    call(server, "GET", "/v1/status", identity=admin)  # not a key route: not counted
    call(server, "POST", "/v1/key/generate/my-key-metric", "{}", identity=app_client)
    after = _metrics(server, admin)
    assert after["kes_http_request_success{code=200}"] == before["kes_http_request_success{code=200}"] + 1
    assert after["kes_http_response_time_count"] == before["kes_http_response_time_count"] + 1
    assert after["kesd_cache_hits"] >= 0


def test_keystore_outage_with_offline_cache(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    """The keystore directory disappears: cached keys keep working, writes fail cleanly, status says so."""
    keys = tmp_path / "keys"
    config = base_config(server_id, admin.identity, keys)
    config["cache"] = {"expiry": {"any": "5m", "unused": "5m", "offline": "5m"}}
    with Server(tmp_path, config) as srv:
        assert call(srv, "POST", "/v1/key/create/cached", identity=admin).status == 200
        sealed = call(srv, "POST", "/v1/key/generate/cached", "{}", identity=admin).json()
        shutil.move(keys, tmp_path / "keys-away")  # the volume is gone
        try:
            status = call(srv, "GET", "/v1/status", identity=admin).json()
            assert status["keystore_unavailable"] is True
            assert status["keystore_unreachable"] is True
            ready = call(srv, "GET", "/v1/ready", identity=admin)
            assert (ready.status, ready.body) == (504, b'{"message":"key store is not reachable"\n}')
            assert call(srv, "POST", "/v1/key/generate/cached", "{}", identity=admin).status == 200
            opened = call(
                srv,
                "POST",
                "/v1/key/decrypt/cached",
                json.dumps({"ciphertext": sealed["ciphertext"]}),
                identity=admin,
            )
            assert opened.json() == {"plaintext": sealed["plaintext"]}
            created = call(srv, "POST", "/v1/key/create/new-during-outage", identity=admin)
            assert (created.status, created.body) == (502, b'{"message":"failed to create key"\n}')
            missing = call(srv, "GET", "/v1/key/describe/not-cached", identity=admin)
            assert missing.status == 502
        finally:
            shutil.move(tmp_path / "keys-away", keys)
        assert call(srv, "GET", "/v1/ready", identity=admin).status == 200
        assert call(srv, "POST", "/v1/key/create/after-outage", identity=admin).status == 200


def test_skip_auth_lets_certificate_less_clients_reach_public_routes_only(
    tmp_path: Path, server_id: Identity, admin: Identity
) -> None:
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    config["api"] = {"/v1/status": {"skip_auth": True}, "/v1/key/create/": {"timeout": "3s"}}
    with Server(tmp_path, config) as srv:
        assert call(srv, "GET", "/v1/status", identity=None).status == 200
        reply = call(srv, "POST", "/v1/key/create/k", identity=None)
        assert (reply.status, reply.body) == (400, b'{"message":"tls: client certificate is required"\n}')
        assert call(srv, "POST", "/v1/key/create/k", identity=admin).status == 200
        routes = {r["path"]: r for r in call(srv, "GET", "/v1/api", identity=admin).json()}
        assert routes["/v1/key/create/"]["timeout"] == 3


def test_skip_auth_on_key_routes_is_refused(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    import subprocess

    from tests.integration.harness import kes_command

    config = base_config(server_id, admin.identity, tmp_path / "keys")
    config["api"] = {"/v1/key/decrypt/": {"skip_auth": True}}
    path = tmp_path / "c.yml"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        kes_command("server", "--config", str(path)), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "api./v1/key/decrypt/.skip_auth" in proc.stderr


def _forwarded(cert: Identity) -> str:
    return quote(cert.cert.read_text(), safe="")


@pytest.fixture(scope="module")
def proxied(
    tmp_path_factory: pytest.TempPathFactory, server_id: Identity, admin: Identity, app_client: Identity
):
    tmp = tmp_path_factory.mktemp("proxy")
    proxy = make_identity(tmp, "proxy")
    config = base_config(
        server_id,
        admin.identity,
        tmp / "keys",
        {
            "app": {"allow": ["/v1/key/*"], "identities": [app_client.identity]},
        },
    )
    config["tls"]["proxy"] = {"identities": [proxy.identity], "header": {"cert": "X-Tls-Client-Cert"}}
    with Server(tmp, config) as srv:
        yield srv, proxy


def test_proxy_forwards_its_clients_identity(proxied, app_client: Identity, stranger: Identity) -> None:
    srv, proxy = proxied
    headers = {"X-Tls-Client-Cert": _forwarded(app_client), "X-Forwarded-For": "203.0.113.7:4711"}
    assert call(srv, "POST", "/v1/key/create/via-proxy", identity=proxy, headers=headers).status == 200
    # Without a forwarded certificate the proxy itself is not a client.
    reply = call(srv, "POST", "/v1/key/create/x", identity=proxy)
    assert (reply.status, reply.body) == (400, b'{"message":"no client certificate is present"\n}')
    bad = call(srv, "POST", "/v1/key/create/x", identity=proxy, headers={"X-Tls-Client-Cert": "garbage"})
    assert (bad.status, bad.body) == (400, b'{"message":"invalid client certificate"\n}')


def test_forwarded_header_from_a_non_proxy_is_ignored(
    proxied, app_client: Identity, stranger: Identity
) -> None:
    srv, _proxy = proxied
    headers = {"X-Tls-Client-Cert": _forwarded(app_client)}
    reply = call(srv, "POST", "/v1/key/create/sneaky", identity=stranger, headers=headers)
    assert reply.status == 403  # judged as the stranger it is
    assert call(srv, "POST", "/v1/key/create/direct", identity=app_client, headers=headers).status == 200


def test_audit_of_proxied_request_names_the_forwarded_client(
    proxied, admin: Identity, app_client: Identity
) -> None:
    srv, proxy = proxied
    stream = StreamReader(srv, admin, "/v1/log/audit")
    try:
        stream.lines(1)
        headers = {"X-Tls-Client-Cert": _forwarded(app_client), "X-Forwarded-For": "203.0.113.7:4711"}
        call(srv, "GET", "/v1/key/describe/via-proxy", identity=proxy, headers=headers)
        (event,) = stream.lines(1)
    finally:
        stream.close()
    assert event["request"]["identity"] == app_client.identity
    assert event["request"]["ip"] == "203.0.113.7"


def test_plain_http_on_the_tls_port_gets_no_answer(server: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        raw.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = raw.recv(100)
        except (ConnectionError, TimeoutError):
            data = b""
    finally:
        raw.close()
    assert not data.startswith(b"HTTP/1.1 200")
