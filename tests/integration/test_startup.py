"""Start-up as an operator meets it: bad configs, TLS variants (auth on, encrypted keys), --mlock."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.integration.conftest import base_config
from tests.integration.harness import READY_LINE, Identity, Server, call, kes_command, make_identity


def start_fails(workdir: Path, config: dict | str, *args: str) -> tuple[int, str]:
    """Run `kes server` expecting a refusal; returns (exit code, stderr)."""
    path = workdir / "bad.yml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    proc = subprocess.run(
        kes_command("server", "--config", str(path), *args),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert READY_LINE not in proc.stdout
    return proc.returncode, proc.stderr


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_configs_name_file_field_and_value(
    workdir: Path, server_id: Identity, app_client: Identity
) -> None:
    good = base_config(server_id, "disabled", workdir / "keys-bad")
    cases: list[tuple[dict, list[str]]] = [
        ({**good, "tls": {**good["tls"], "auth": "maybe"}}, ["tls.auth", "maybe"]),
        ({**good, "adress": "127.0.0.1:0"}, ["adress", "unknown field"]),
        ({**good, "address": ["not", "a", "string"]}, ["address"]),
        (
            {**good, "policy": {"p": {"allow": ["/v1/key/[x"], "identities": [app_client.identity]}}},
            ["policy.p.allow", "/v1/key/[x"],
        ),
        (
            {**good, "policy": {"p": {"allow": ["/v1/status"], "identities": ["not valid!"]}}},
            ["policy.p.identities", "not valid!"],
        ),
        ({**good, "tls": {**good["tls"], "key": str(workdir / "missing.key")}}, ["tls.key", "missing.key"]),
        ({**good, "tls": {**good["tls"], "key": str(server_id.cert)}}, ["tls.key", "server.crt"]),
    ]
    for config, needles in cases:
        code, stderr = start_fails(workdir, config)
        assert code != 0
        line = one_line(stderr)
        assert "bad.yml" in line, line
        for needle in needles:
            assert needle in line, (needle, line)


def test_missing_config_file(workdir: Path) -> None:
    proc = subprocess.run(
        kes_command("server", "--config", str(workdir / "nope.yml")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "nope.yml" in one_line(proc.stderr)


def test_address_in_use_is_a_clear_error(workdir: Path, server: Server, server_id: Identity) -> None:
    config = {
        **base_config(server_id, "disabled", workdir / "keys-busy"),
        "address": f"127.0.0.1:{server.port}",
    }
    code, stderr = start_fails(workdir, config)
    assert code == 1
    assert f"cannot listen on '127.0.0.1:{server.port}'" in one_line(stderr)


def test_encrypted_server_key_with_password(tmp_path: Path, admin: Identity) -> None:
    plain = make_identity(tmp_path, "srv", kind="ecdsa", san=("127.0.0.1",))
    key = serialization.load_pem_private_key(plain.key.read_bytes(), None)
    plain.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    assert b"ENCRYPTED" in plain.key.read_bytes()
    config = base_config(plain, admin.identity, tmp_path / "keys")
    config["tls"]["password"] = "s3cret"
    with Server(tmp_path, config) as srv:
        assert call(srv, "GET", "/v1/ready", identity=admin).status == 200
    config["tls"]["password"] = "hunter2-not-it"
    code, stderr = start_fails(tmp_path, config)
    assert code != 0
    line = one_line(stderr)
    assert "tls.key" in line
    assert "hunter2" not in line  # the password never appears in messages


def test_auth_on_verifies_client_chains(tmp_path: Path) -> None:
    ca = make_identity(tmp_path, "ca", ca=True, kind="ecdsa")
    from cryptography import x509

    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    signed = make_identity(tmp_path, "signed", kind="ecdsa", issuer=(ca_key, ca_cert))
    self_signed = make_identity(tmp_path, "selfsigned")
    srv_id = make_identity(tmp_path, "srv", kind="ecdsa", san=("127.0.0.1",))
    config = base_config(srv_id, signed.identity, tmp_path / "keys")
    config["tls"]["ca"] = str(ca.cert)
    with Server(tmp_path, config, args=("--auth", "on")) as srv:
        assert call(srv, "GET", "/v1/ready", identity=signed).status == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            call(srv, "GET", "/v1/ready", identity=self_signed)


def test_auth_off_accepts_self_signed_ed25519(tmp_path: Path) -> None:
    client = make_identity(tmp_path, "client")
    srv_id = make_identity(tmp_path, "srv", san=("127.0.0.1",))  # Ed25519 server, as `kes identity new`
    with Server(
        tmp_path, base_config(srv_id, client.identity, tmp_path / "keys"), args=("--auth", "off")
    ) as srv:
        assert call(srv, "POST", "/v1/key/create/k", identity=client).status == 200


def test_mlock_with_and_without_capability(tmp_path: Path, admin: Identity, server_id: Identity) -> None:
    """--mlock locks memory with CAP_IPC_LOCK; without it (and an 8 MiB limit) start-up fails clearly."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    with Server(tmp_path, config, args=("--mlock",)) as srv:
        assert "MLock       enabled" in "".join(srv.output)
        status = Path(f"/proc/{srv.proc.pid}/status").read_text()
        locked_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmLck:")))
        assert locked_kib > 8192
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_IPC_LOCK")
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            *kes_command("server", "--config", str(path), "--mlock"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert "--mlock: cannot lock memory" in line
    assert "CAP_IPC_LOCK" in line


def test_dev_server_starts_with_no_files(tmp_path: Path) -> None:
    """`kes server --dev`: one command, a working server, an admin identity written and printed."""
    state = tmp_path / "state"
    srv = Server(tmp_path, "", args=())
    srv.config_path.unlink()
    srv.command = kes_command("server", "--dev", "--addr", "127.0.0.1:0", "--state-dir", str(state))
    with srv:
        text = "".join(srv.output)
        admin = Identity(state / "admin.key", state / "admin.crt", "")
        assert f"KES_CLIENT_CERT={state / 'admin.crt'}" in text
        assert (state / "admin.key").stat().st_mode & 0o777 == 0o600
        assert call(srv, "POST", "/v1/key/create/my-key", identity=admin).status == 200
        assert call(srv, "POST", "/v1/key/generate/my-key", "{}", identity=admin).status == 200
        assert "in-memory" in text


def test_declared_keys_are_created_once(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    """`keys:` creates missing keys at start-up and never replaces an existing one."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    config["keys"] = [{"name": "declared-1"}, {"name": "declared-2"}]
    with Server(tmp_path, config) as srv:
        assert call(srv, "GET", "/v1/key/describe/declared-1", identity=admin).status == 200
        sealed = call(
            srv, "POST", "/v1/key/encrypt/declared-2", '{"plaintext":"aGk="}', identity=admin
        ).json()
    before = (tmp_path / "keys" / "declared-2").read_bytes()
    with Server(tmp_path, config) as srv:
        opened = call(srv, "POST", "/v1/key/decrypt/declared-2", json.dumps(sealed), identity=admin)
        assert opened.json() == {"plaintext": "aGk="}
    assert (tmp_path / "keys" / "declared-2").read_bytes() == before


def test_sigterm_finishes_a_request_whose_body_is_still_arriving(
    tmp_path: Path, server_id: Identity, admin: Identity
) -> None:
    import signal
    import socket
    import time

    from tests.integration.harness import client_context

    srv = Server(tmp_path, base_config(server_id, admin.identity, tmp_path / "keys")).start()
    try:
        assert call(srv, "POST", "/v1/key/create/k", identity=admin).status == 200
        tls = client_context(admin).wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        body = b'{"plaintext":"aGVsbG8="}'
        tls.sendall(b"POST /v1/key/encrypt/k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        tls.sendall(body[:10])
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        tls.sendall(body[10:])
        reply = tls.recv(65536)
        tls.close()
        assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    finally:
        code = srv.stop()
    assert code == 0
