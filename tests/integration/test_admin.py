"""The admin socket end to end: a real `kes server`, a real Unix socket, kesctl as a subprocess.

Every operation's happy path and error path, malformed frames, reload with a broken config. The
access rules (other users, a second daemon, stale sockets) are in test_admin_access.py, which
shares the helpers defined here.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import selectors
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kesd import __version__
from tests.integration.conftest import base_config
from tests.integration.harness import Identity, Server, call

TOP = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def kesctl_command(sock: Path | str, *args: str, python: str = sys.executable) -> list[str]:
    """kesctl of the package under test, run with ``python``."""
    return [python, "-m", "kesd.cli.kesctl", "--socket", str(sock), *args]


def kesctl(
    sock: Path | str, *args: str, stdin: bytes | None = None, user: User | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run kesctl to completion (as root, or as ``user`` through setpriv)."""
    command = kesctl_command(sock, *args)
    env = dict(os.environ)
    if user is not None:
        command = [*user.prefix(), *kesctl_command(sock, *args, python=SYSTEM_PYTHON)]
        env["PYTHONPATH"] = str(TOP)
    proc = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, check=False, env=env)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class Follower:
    """A background ``kesctl log STREAM --follow --json``; lines are collected as they come."""

    def __init__(self, sock: Path | str, stream: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            kesctl_command(sock, "log", stream, "--follow", "--json", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        line = _readline(self.proc.stderr, 20.0)
        assert line.startswith(b"Following"), line

    def lines(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The next ``n`` lines as JSON objects."""
        assert self.proc.stdout is not None
        return [json.loads(_readline(self.proc.stdout, timeout)) for _ in range(n)]

    def until(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        """The first line satisfying ``predicate``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(_readline(self.proc.stdout, deadline - time.monotonic()))
            if predicate(event):
                return event
        raise AssertionError("no matching line")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _readline(pipe: Any, timeout: float) -> bytes:
    """One line from a pipe, or AssertionError after ``timeout`` seconds (never hangs)."""
    fd = pipe.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line within {timeout}s (got {data!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"pipe closed (got {data!r})")
            data += chunk
    finally:
        sel.close()
    return data


def drain(server: Server) -> None:
    """Keep reading a running server's output so that a full pipe never blocks it."""
    assert server.proc is not None and server.proc.stdout is not None
    stdout = server.proc.stdout

    def pump() -> None:
        for raw in iter(stdout.readline, b""):
            server.output.append(raw.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()


# --- raw frames -------------------------------------------------------------------------------------


def frame(obj: Any) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


def raw_exchange(sock_path: Path | str, data: bytes, *, expect: int = 1, timeout: float = 15.0) -> list[dict]:
    """Send ``data`` and read up to ``expect`` answer frames (fewer if the server closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        if data:
            s.sendall(data)
        answers = []
        for _ in range(expect):
            header = _recv_exactly(s, 4)
            if header is None:
                break
            (length,) = struct.unpack(">I", header)
            body = _recv_exactly(s, length)
            assert body is not None
            answers.append(json.loads(body))
        return answers


def _recv_exactly(s: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def request(op: str, **args: str) -> bytes:
    return frame({"v": 1, "op": op, "args": args})


# --- a throw-away system user -------------------------------------------------------------------------


@dataclass
class User:
    name: str
    uid: int
    gid: int

    def prefix(self) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]


def can_make_users() -> str | None:
    """Why a non-root user cannot be used here (None if it can)."""
    if os.geteuid() != 0:
        return "needs root (to create a user)"
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import click, yaml, cryptography, httptools, psutil"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} lacks kesd's libraries (apt-get install python3-click python3-yaml ...)"
    return None


@contextmanager
def system_user() -> Iterator[User]:
    """A new system user without home or shell, deleted afterwards."""
    name = f"kesdt{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextmanager
def public_dir() -> Iterator[Path]:
    """A directory under /tmp that other users can traverse (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="kesd-admin-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def admin_config(
    server_id: Identity, admin: Identity, app_client: Identity, keys: Path, sock: Path
) -> dict[str, Any]:
    """A server config with an admin socket, the audit log on stdout and one application policy."""
    policies = {
        "my-app": {
            "allow": ["/v1/key/generate/*", "/v1/key/describe/*"],
            "deny": ["/v1/key/generate/secret-*"],
            "identities": [app_client.identity],
        }
    }
    config = base_config(server_id, admin.identity, keys, policies)
    config["admin"]["socket"] = str(sock)
    config["log"] = {"audit": "on"}
    return config


# --- the module's server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sockdir() -> Iterator[Path]:
    with public_dir() as path:
        yield path


@pytest.fixture(scope="module")
def sock(sockdir: Path) -> Path:
    return sockdir / "run" / "admin.sock"


@pytest.fixture(scope="module")
def srv(
    workdir: Path, server_id: Identity, admin: Identity, app_client: Identity, sock: Path
) -> Iterator[Server]:
    config = admin_config(server_id, admin, app_client, workdir / "keys", sock)
    with Server(workdir, config) as server:
        drain(server)
        yield server


def wait_for_output(server: Server, text: str, timeout: float = 20.0) -> str:
    """The server's output once it contains ``text`` (polled: the output pump runs in a thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = "".join(server.output)
        if text in output:
            return output
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in the server's output")


def error_of(proc: subprocess.CompletedProcess[str]) -> str:
    """The ``Error: ...`` line kesctl printed."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert lines, proc.stderr
    return lines[0][len("Error: ") :]


def answer(sock: Path, data: bytes) -> dict[str, Any]:
    frames = raw_exchange(sock, data)
    assert len(frames) == 1, frames
    return frames[0]


def refused_with(sock: Path, data: bytes, status: int, text: str) -> None:
    reply = answer(sock, data)
    assert reply["v"] == 1 and reply["ok"] is False, reply
    assert reply["error"]["status"] == status, reply
    assert text in reply["error"]["message"], reply


# --- the socket ---------------------------------------------------------------------------------------


def test_socket_is_private(srv: Server, sock: Path) -> None:
    st = os.lstat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700


# --- status -----------------------------------------------------------------------------------------


def test_status(srv: Server, sock: Path, admin: Identity) -> None:
    assert call(srv, "GET", "/v1/status", identity=admin).status == 200
    info = as_json(kesctl(sock, "status", "--json"))
    assert info["version"] == __version__
    assert info["pid"] == srv.proc.pid
    assert info["addresses"] == {"api": srv.address, "admin": str(sock)}
    assert info["keystore"]["reachable"] is True
    assert "filesystem" in info["keystore"]["kind"]
    assert isinstance(info["keys"], int)
    assert isinstance(info["connections"], int) and info["admin_connections"] >= 1
    assert info["requests"] >= 1
    assert isinstance(info["requests_per_second"], float)
    assert info["memory"]["rss"] > 0
    assert info["mlock"] is False
    assert info["uptime"] >= 0
    assert info["cache"].keys() == {"keys", "hits", "misses"}

    assert as_json(kesctl(sock, "--json", "status"))["pid"] == srv.proc.pid  # --json before the command
    human = kesctl(sock, "status")
    assert human.returncode == 0, human.stderr
    assert f"Admin socket    {sock}" in human.stdout
    assert "Keystore        filesystem" in human.stdout

    refused_with(sock, request("status", verbose="yes"), 400, "unexpected argument 'verbose' for status")


# --- keys ---------------------------------------------------------------------------------------------


def test_key_create_ls_info_rm(srv: Server, sock: Path, admin: Identity) -> None:
    created = kesctl(sock, "key", "create", "adm-key")
    assert created.returncode == 0 and created.stdout == "Created key adm-key\n", created.stderr
    again = kesctl(sock, "key", "create", "adm-key")
    assert again.returncode == 1 and error_of(again) == "key already exists"
    bad = kesctl(sock, "key", "create", "bad.name")
    assert bad.returncode == 1
    assert error_of(bad) == "key name 'bad.name' is empty, too long or contains invalid characters"

    # The key serves the API at once.
    assert call(srv, "PUT", "/v1/key/generate/adm-key", "{}", identity=admin).status == 200

    assert "adm-key" in kesctl(sock, "key", "ls").stdout.split()
    assert as_json(kesctl(sock, "key", "ls", "adm-*", "--json")) == {"keys": ["adm-key"]}
    pattern = kesctl(sock, "key", "ls", "a/b")
    assert pattern.returncode == 1 and "listing pattern 'a/b'" in error_of(pattern)

    info = as_json(kesctl(sock, "key", "info", "adm-key", "--json"))
    assert info["name"] == "adm-key" and info["algorithm"] == "AES256-GCM_SHA256"
    assert "created_at" in info
    human = kesctl(sock, "key", "info", "adm-key")
    assert human.stdout.startswith("Name            adm-key\nAlgorithm       AES256-GCM_SHA256\n")
    missing = kesctl(sock, "key", "info", "no-such-key")
    assert missing.returncode == 1 and error_of(missing) == "key does not exist"

    removed = kesctl(sock, "key", "rm", "adm-key")
    assert removed.returncode == 0 and removed.stdout == "Deleted key adm-key\n"
    assert call(srv, "PUT", "/v1/key/generate/adm-key", "{}", identity=admin).status == 404
    gone = kesctl(sock, "key", "rm", "adm-key")
    assert gone.returncode == 1 and error_of(gone) == "key does not exist"
    assert "adm-key" not in kesctl(sock, "key", "ls").stdout.split()


def test_key_import(srv: Server, sock: Path, tmp_path: Path) -> None:
    material = os.urandom(32)
    encoded = base64.b64encode(material)
    imported = kesctl(sock, "key", "import", "adm-imported", stdin=encoded + b"\n")
    assert imported.returncode == 0 and imported.stdout == "Imported key adm-imported\n", imported.stderr
    raw_file = tmp_path / "raw.key"
    raw_file.write_bytes(os.urandom(32))
    from_file = kesctl(sock, "key", "import", "adm-chacha", str(raw_file), "--cipher", "ChaCha20")
    assert from_file.returncode == 0, from_file.stderr
    assert as_json(kesctl(sock, "key", "info", "adm-chacha", "--json"))["algorithm"] == "XCHACHA20-POLY1305"

    short = kesctl(sock, "key", "import", "adm-short", stdin=base64.b64encode(b"x" * 16))
    assert short.returncode == 2 and "32 bytes" in short.stderr
    exists = kesctl(sock, "key", "import", "adm-imported", stdin=encoded)
    assert exists.returncode == 1 and error_of(exists) == "key already exists"
    bad_name = kesctl(sock, "key", "import", "bad.name", stdin=encoded)
    assert bad_name.returncode == 1 and "key name 'bad.name'" in error_of(bad_name)
    refused_with(sock, request("key.import", name="adm-x", key="not base64!"), 400, "invalid import key")

    # Key bytes never reach the audit log, the error log or an answer.
    output = wait_for_output(srv, "admin:key.import/adm-imported")
    assert encoded.decode() not in output and encoded.decode() not in exists.stderr


# --- policies and identities --------------------------------------------------------------------------


def test_policy_ls_show(srv: Server, sock: Path) -> None:
    listed = as_json(kesctl(sock, "policy", "ls", "--json"))
    assert listed == {"policies": [{"name": "my-app", "allow": 2, "deny": 1, "identities": 1}]}
    assert "my-app" in kesctl(sock, "policy", "ls", "my-*").stdout
    assert as_json(kesctl(sock, "policy", "ls", "zzz*", "--json")) == {"policies": []}
    shown = as_json(kesctl(sock, "policy", "show", "my-app", "--json"))
    assert shown["allow"] == ["/v1/key/generate/*", "/v1/key/describe/*"]
    assert shown["deny"] == ["/v1/key/generate/secret-*"]
    assert len(shown["identities"]) == 1
    human = kesctl(sock, "policy", "show", "my-app").stdout
    assert "Allow           /v1/key/generate/*\n                /v1/key/describe/*\n" in human

    missing = kesctl(sock, "policy", "show", "nope")
    assert missing.returncode == 1 and error_of(missing) == "policy does not exist"
    invalid = kesctl(sock, "policy", "show", "no/pe")
    assert invalid.returncode == 1 and "policy name 'no/pe'" in error_of(invalid)


def test_identity_ls_show(srv: Server, sock: Path, admin: Identity, app_client: Identity) -> None:
    listed = as_json(kesctl(sock, "identity", "ls", "--json"))["identities"]
    assert {i["identity"]: (i["admin"], i["policy"]) for i in listed} == {
        admin.identity: (True, None),
        app_client.identity: (False, "my-app"),
    }
    human = kesctl(sock, "identity", "ls").stdout
    assert f"{app_client.identity}  policy my-app" in human
    assert as_json(kesctl(sock, "identity", "show", admin.identity, "--json"))["admin"] is True
    shown = as_json(kesctl(sock, "identity", "show", app_client.identity, "--json"))
    assert shown["policy"] == "my-app" and shown["deny"] == ["/v1/key/generate/secret-*"]

    unknown = kesctl(sock, "identity", "show", "a" * 64)
    assert unknown.returncode == 1 and error_of(unknown) == "identity does not exist"
    invalid = kesctl(sock, "identity", "show", "x y")
    assert invalid.returncode == 1 and "identity 'x y'" in error_of(invalid)


# --- runtime controls ---------------------------------------------------------------------------------


def test_cache_purge(srv: Server, sock: Path, admin: Identity) -> None:
    assert kesctl(sock, "key", "create", "adm-cached").returncode == 0
    assert call(srv, "PUT", "/v1/key/generate/adm-cached", "{}", identity=admin).status == 200
    assert as_json(kesctl(sock, "cache", "purge", "--json"))["purged"] >= 1
    assert kesctl(sock, "cache", "purge").stdout == "Purged 0 keys from the cache\n"
    assert as_json(kesctl(sock, "status", "--json"))["cache"]["keys"] == 0
    # Purged keys come back from the keystore.
    assert call(srv, "PUT", "/v1/key/generate/adm-cached", "{}", identity=admin).status == 200
    refused_with(sock, request("cache.purge", name="adm-cached"), 400, "unexpected argument 'name'")


def test_log_level(srv: Server, sock: Path) -> None:
    changed = as_json(kesctl(sock, "log-level", "DEBUG", "--json"))
    assert changed["level"] == "DEBUG"
    assert as_json(kesctl(sock, "status", "--json"))["log_level"] == "DEBUG"
    assert kesctl(sock, "log-level", "warn+4").stdout == "Error log level: DEBUG -> ERROR\n"
    assert as_json(kesctl(sock, "log-level", "off", "--json"))["level"] == "OFF"
    bogus = kesctl(sock, "log-level", "loud")
    assert bogus.returncode == 1 and error_of(bogus).startswith("invalid log level 'loud'")
    previous = {"WARNING": "WARN", "NOTSET": "INFO"}.get(changed["previous"], changed["previous"])
    assert kesctl(sock, "log-level", previous).returncode == 0


def test_metrics(srv: Server, sock: Path) -> None:
    text = kesctl(sock, "metrics")
    assert text.returncode == 0
    assert "kes_system_up_time" in text.stdout and "kesd_cache_keys" in text.stdout
    assert "kes_system_up_time" in as_json(kesctl(sock, "metrics", "--json"))["text"]
    refused_with(sock, request("metrics", format="json"), 400, "unexpected argument 'format'")


# --- logs ---------------------------------------------------------------------------------------------


def test_log_audit_follow(srv: Server, sock: Path, admin: Identity) -> None:
    follower = Follower(sock, "audit")
    try:
        assert call(srv, "GET", "/v1/key/list/*", identity=admin).status == 200
        assert kesctl(sock, "key", "info", "no-such-key").returncode == 1
        api = follower.until(lambda e: e["request"]["path"] == "/v1/key/list/*")
        assert api["request"]["identity"] == admin.identity and api["response"]["code"] == 200
        ours = follower.until(lambda e: e["request"]["path"] == "admin:key.info/no-such-key")
        assert ours["request"]["uid"] == 0 and ours["request"]["identity"] == "unix:uid=0"
        assert isinstance(ours["request"]["pid"], int) and ours["response"]["code"] == 404
    finally:
        follower.stop()

    counted = subprocess.Popen(kesctl_command(sock, "log", "audit", "-f", "-n", "1"), stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while counted.poll() is None and time.monotonic() < deadline:
            call(srv, "GET", "/version", identity=admin)
            time.sleep(0.05)
        assert counted.wait(10) == 0
        assert counted.stdout is not None
        assert "/version" in counted.stdout.read().decode()
    finally:
        if counted.poll() is None:
            counted.kill()
            counted.wait()

    no_follow = kesctl(sock, "log", "audit")
    assert no_follow.returncode == 2 and "--follow" in no_follow.stderr
    refused_with(sock, request("log.follow", stream="debug"), 400, "unknown log stream 'debug'")


# --- reload and config check --------------------------------------------------------------------------


def test_reload(srv: Server, sock: Path, admin: Identity, app_client: Identity) -> None:
    original = srv.config_path.read_text()
    config = yaml.safe_load(original)
    assert kesctl(sock, "key", "create", "reload-key").returncode == 0

    config["policy"]["extra"] = {"allow": ["/v1/key/describe/*"], "identities": []}
    srv.config_path.write_text(yaml.safe_dump(config))
    done = kesctl(sock, "reload")
    assert done.returncode == 0 and done.stdout.startswith("Reloaded "), done.stderr
    assert "extra" in kesctl(sock, "policy", "ls").stdout

    errors_log = Follower(sock, "error")
    try:
        config["tls"]["auth"] = "maybe"
        srv.config_path.write_text(yaml.safe_dump(config))
        broken = kesctl(sock, "reload")
        assert broken.returncode == 1
        expected = error_of(kesctl(sock, "config", "check", str(srv.config_path)))
        assert error_of(broken) == expected
        assert "tls.auth" in expected and "maybe" in expected
        logged = errors_log.until(lambda e: "reload failed" in e["message"])
        assert expected in logged["message"]
    finally:
        errors_log.stop()

    # The previous configuration keeps serving: the API, its policies and the admin socket.
    assert call(srv, "PUT", "/v1/key/generate/reload-key", "{}", identity=app_client).status == 200
    assert call(srv, "PUT", "/v1/key/generate/secret-x", "{}", identity=app_client).status == 403
    assert "extra" in kesctl(sock, "policy", "ls").stdout
    assert as_json(kesctl(sock, "status", "--json"))["pid"] == srv.proc.pid

    srv.config_path.write_text(original)
    assert kesctl(sock, "reload").returncode == 0
    assert "extra" not in kesctl(sock, "policy", "ls").stdout


def test_config_check(srv: Server, sock: Path, tmp_path: Path) -> None:
    good = kesctl(sock, "config", "check", str(srv.config_path))
    assert good.returncode == 0 and good.stdout == f"{srv.config_path}: configuration is valid\n"
    assert as_json(kesctl(sock, "config", "check", str(srv.config_path), "--json"))["valid"] is True

    bad = tmp_path / "bad.yml"
    config = yaml.safe_load(srv.config_path.read_text())
    config["address"] = "127.0.0.1:http"
    bad.write_text(yaml.safe_dump(config))
    broken = kesctl(sock, "config", "check", str(bad))
    assert broken.returncode == 1
    assert error_of(broken).startswith(f"{bad}: address: invalid address '127.0.0.1:http'")

    missing = kesctl(sock, "config", "check", str(tmp_path / "missing.yml"))
    assert (
        missing.returncode == 1
        and error_of(missing) == f"{tmp_path / 'missing.yml'}: config file does not exist"
    )
    refused_with(sock, request("config.check", file="relative.yml"), 400, "must be an absolute path")


# --- robustness ---------------------------------------------------------------------------------------


MALFORMED = [
    pytest.param(b"\x00\x00\x00\x05hello", "malformed frame: not UTF-8 JSON", id="not-json"),
    pytest.param(b"\x00\x00\x00\x02\xff\xfe", "malformed frame: not UTF-8 JSON", id="not-utf8"),
    pytest.param(frame([1, 2]), "the JSON value is not an object", id="not-object"),
    pytest.param(frame({"v": 2, "op": "status"}), "unsupported protocol version 2", id="version-2"),
    pytest.param(frame({"op": "status"}), "unsupported protocol version null", id="no-version"),
    pytest.param(frame({"v": 1, "op": "shutdown"}), "unknown operation 'shutdown'", id="unknown-op"),
    pytest.param(frame({"v": 1, "op": 7}), "'op' must be a string", id="op-type"),
    pytest.param(frame({"v": 1, "op": "key.info"}), "missing argument 'name' for key.info", id="missing-arg"),
    pytest.param(frame({"v": 1, "op": "key.info", "args": {"name": 5}}), "must be a string", id="arg-type"),
    pytest.param(frame({"v": 1, "op": "key.info", "args": ["x"]}), "must be an object", id="args-type"),
    pytest.param(frame({"v": 1, "op": "status", "id": 1}), "unexpected field 'id'", id="extra-field"),
    pytest.param(b"\x00\x00\x00\x00", "empty frame", id="empty"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_request_gets_an_error_and_the_connection_goes_on(
    srv: Server, sock: Path, data: bytes, message: str
) -> None:
    bad, good = raw_exchange(sock, data + request("hello"), expect=2)
    assert bad["ok"] is False and bad["error"]["status"] == 400
    assert message in bad["error"]["message"]
    assert good["ok"] is True and good["result"]["protocol"] == 1


def test_oversized_frame_is_refused_unread(srv: Server, sock: Path) -> None:
    frames = raw_exchange(sock, struct.pack(">I", 1 << 31) + request("hello"), expect=2)
    assert len(frames) == 1, frames  # answered, then closed: the framing is lost
    assert frames[0]["error"]["status"] == 413
    assert "larger than the limit of 1048576 bytes" in frames[0]["error"]["message"]


def test_slow_request_is_cut_off(srv: Server, sock: Path) -> None:
    started = time.monotonic()
    frames = raw_exchange(sock, struct.pack(">I", 100) + b'{"v": 1', expect=2, timeout=30)
    assert time.monotonic() - started < 15
    assert len(frames) == 1 and "request timeout" in frames[0]["error"]["message"]


def test_abuse_never_takes_the_daemon_down(srv: Server, sock: Path) -> None:
    for junk in (b"", os.urandom(65536), b"\x00\x00\x00\x10" + b"x" * 3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
            if junk:
                s.sendall(junk)
    held = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(15)
            s.connect(str(sock))
            held.append(s)
        busy = 0
        for s in held:
            s.sendall(request("hello"))
            (length,) = struct.unpack(">I", _recv_exactly(s, 4) or b"\0\0\0\0")
            reply = json.loads(_recv_exactly(s, length) or b"{}")
            busy += reply.get("error", {}).get("status") == 503
        assert busy >= 1
    finally:
        for s in held:
            s.close()
    assert srv.proc.poll() is None
    assert as_json(kesctl(sock, "status", "--json"))["pid"] == srv.proc.pid


# --- kesctl without a daemon --------------------------------------------------------------------------


def test_cannot_connect_exits_3_with_a_hint(tmp_path: Path) -> None:
    missing = kesctl(tmp_path / "none.sock", "status")
    assert missing.returncode == 3
    assert "no such socket" in missing.stderr and "is kesd running?" in missing.stderr

    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))
    nobody = kesctl(dead, "key", "ls")
    assert nobody.returncode == 3 and "nothing is listening" in nobody.stderr

    env_default = subprocess.run(
        [sys.executable, "-m", "kesd.cli.kesctl", "status"],
        env={**os.environ, "KESD_ADMIN_SOCKET": str(tmp_path / "env.sock")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert env_default.returncode == 3 and str(tmp_path / "env.sock") in env_default.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert kesctl(tmp_path / "x.sock", "key", "frobnicate").returncode == 2
    assert kesctl(tmp_path / "x.sock", "key", "info").returncode == 2
    assert kesctl(tmp_path / "x.sock", "completion", "tcsh").returncode == 2


# --- documentation --------------------------------------------------------------------------------------


def _command_paths() -> list[str]:
    import click

    from kesd.cli.kesctl import cli

    paths: list[str] = []

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                paths.append(f"{prefix}{name}")

    walk(cli, "")
    return paths


def test_man_page_is_lint_clean_and_documents_every_command() -> None:
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed (apt-get install mandoc)")
    page = TOP / "man" / "kesctl.8"
    lint = subprocess.run(
        ["mandoc", "-Tlint", "-Wstyle", str(page)], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0 and lint.stdout == "" and lint.stderr == "", lint.stdout + lint.stderr
    rendered = subprocess.run(["mandoc", "-Tascii", str(page)], capture_output=True, check=True).stdout
    plain = re.sub(".\b", "", rendered.decode())  # drop the overstrike of bold and underline
    for path in _command_paths():
        assert path in plain, path


def test_protocol_document_covers_every_operation() -> None:
    from kesd.admin.protocol import OPERATIONS

    text = (TOP / "docs" / "admin-protocol.md").read_text()
    for name in OPERATIONS:
        assert f"| `{name}` |" in text, name


def test_completion_scripts_for_every_shell() -> None:
    """`kesctl completion SHELL` prints a working script (the packages install the same output)."""
    for shell in ("bash", "zsh", "fish"):
        out = subprocess.run(
            kesctl_command("/nonexistent", "completion", shell), capture_output=True, text=True, check=True
        )
        assert "_KESCTL_COMPLETE" in out.stdout, shell
        if shell == "bash" and shutil.which("bash"):
            subprocess.run(["bash", "-n"], input=out.stdout, text=True, check=True)
