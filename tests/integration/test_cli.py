"""Every `kes` client command, run as a real subprocess against a real `kes server` over TLS.

The client authenticates with certificate files from the environment (KES_SERVER, KES_CLIENT_CERT,
KES_CLIENT_KEY) and trusts the server's self-signed certificate through KES_CA. Each command is
checked on its happy path, with --json where it has one, and on an error path where it must print
the server's message and exit 1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import Identity, Server, call, kes_command

HEX64 = re.compile(r"^[0-9a-f]{64}$")
FORBIDDEN = "not authorized: insufficient permissions"
# Client settings of the environment that would override the ones a test gives.
_CLIENT_ENV = (
    "MINIO_KES_SERVER",
    "MINIO_KMS_KES_ENDPOINT",
    "MINIO_KES_API_KEY",
    "KES_API_KEY",
    "MINIO_KMS_KES_API_KEY",
    "MINIO_KES_CERT_FILE",
    "MINIO_KES_CLIENT_CERT",
    "MINIO_KES_KEY_FILE",
    "MINIO_KES_CLIENT_KEY",
    "KES_ENCLAVE",
)


def _env(server: Server, who: Identity | None, server_id: Identity) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV}
    env.update(KES_SERVER=server.url, KES_CA=str(server_id.cert))
    if who is None:
        env.pop("KES_CLIENT_CERT", None)
        env.pop("KES_CLIENT_KEY", None)
    else:
        env.update(KES_CLIENT_CERT=str(who.cert), KES_CLIENT_KEY=str(who.key))
    return env


@pytest.fixture(scope="module")
def kes(server: Server, server_id: Identity, admin: Identity):
    """Run `kes ARGS...` as ``who`` (default: the admin); returns the finished process."""

    def run(
        *args: str, who: Identity | None = admin, cwd: Path | None = None, tty: bool = False
    ) -> subprocess.CompletedProcess:
        command = kes_command(*args)
        if tty:  # on a terminal, as a person types it: `script` gives the command a pty
            command = ["script", "-qec", shlex.join(command), "/dev/null"]
        result = subprocess.run(
            command,
            env=_env(server, who, server_id),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if tty:
            result.stdout = result.stdout.replace("\r\n", "\n")
        return result

    return run


@pytest.fixture(scope="module")
def follow(server: Server, server_id: Identity, admin: Identity):
    """Start a long-running `kes ARGS...` (log, metric); the test reads its lines and ends it."""
    started: list[Follower] = []

    def start(*args: str, who: Identity | None = admin) -> Follower:
        proc = subprocess.Popen(
            kes_command(*args),
            env=_env(server, who, server_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        follower = Follower(proc)
        started.append(follower)
        return follower

    yield start
    for follower in started:
        follower.kill()


class Follower:
    """A running `kes` process whose stdout is read line by line with deadlines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._pending = b""

    def line(self, timeout: float = 20.0) -> str:
        """The next line of output (without its newline); fails the test on timeout or exit."""
        line = self.poll_line(timeout)
        if line is None:
            pytest.fail(f"no output line within {timeout}s; got so far: {self._pending!r}")
        return line

    def poll_line(self, timeout: float) -> str | None:
        """The next line of output, or None if none came within ``timeout``; fails if kes ended."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    pytest.fail(f"kes ended (rc={self.proc.wait()}) before a line; stderr: {stderr}")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def event_for(self, request, path: str, timeout: float = 20.0) -> str:
        """Repeat ``request()`` until an output line mentions ``path`` (events that happen before the
        stream is subscribed are not delivered); returns that line.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request()
            while (line := self.poll_line(0.5)) is not None:
                if path in line:
                    return line
        pytest.fail(f"no event for {path} within {timeout}s")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: returns the exit status and stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, stderr = self.proc.communicate(timeout=20)
        return self.proc.returncode, stderr.decode()

    def finished(self, timeout: float = 20.0) -> tuple[int, str]:
        """Wait for a process that ends by itself: its exit status and stderr."""
        _, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, stderr.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _fails_with(result: subprocess.CompletedProcess, message: str) -> None:
    """The command exited 1 and printed exactly the server's message on stderr (nothing on stdout)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip() == f"Error: {message}"
    assert result.stdout == ""


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


# --- kes identity new / of (offline) ------------------------------------------------------------


def test_identity_new_and_of(kes, tmp_path: Path):
    out = _ok(
        kes("identity", "new", "--key", "c.key", "--cert", "c.crt", "--ip", "127.0.0.1", "App", cwd=tmp_path)
    )
    match = re.fullmatch(
        r"\n  Private key:  c\.key\n  Certificate:  c\.crt\n  Identity:     ([0-9a-f]{64})\n", out
    )
    assert match is not None, out
    assert (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    assert _ok(kes("identity", "of", "c.crt", cwd=tmp_path)) == f"\n  Identity:  {match.group(1)}\n"
    # The short form without `of` gives the same answer.
    assert _ok(kes("identity", "c.crt", cwd=tmp_path)) == f"\n  Identity:  {match.group(1)}\n"


def test_identity_new_refuses_to_overwrite(kes, tmp_path: Path):
    _ok(kes("identity", "new", "--key", "c.key", "--cert", "c.crt", "App", cwd=tmp_path))
    again = kes("identity", "new", "--key", "c.key", "--cert", "c.crt", "App", cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_identity_of_unknown_file_fails(kes, tmp_path: Path):
    result = kes("identity", "of", "missing.crt", cwd=tmp_path)
    _fails_with(result, "'missing.crt' is neither a file nor an API key")


def test_identity_of_matches_the_server_view(kes, app_client: Identity):
    assert _ok(kes("identity", "of", str(app_client.cert))) == f"\n  Identity:  {app_client.identity}\n"


# --- kes key ------------------------------------------------------------------------------------


def test_key_create_and_duplicate(kes):
    assert _ok(kes("key", "create", "cli-create-1", "cli-create-2")) == ""
    _fails_with(kes("key", "create", "cli-create-1"), "key already exists")


def test_key_create_denied_by_policy(kes, app_client: Identity):
    _fails_with(kes("key", "create", "not-my-key", who=app_client), FORBIDDEN)


def test_key_create_without_identity_is_refused(kes, server: Server):
    result = kes("key", "create", "cli-anon", who=None)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert server.url in result.stderr
    assert "The server probably requires a client certificate" in result.stderr


def test_key_import_and_info(kes, admin: Identity):
    material = base64.b64encode(bytes(range(32))).decode()
    assert _ok(kes("key", "import", "cli-imported", material)) == ""
    lines = _ok(kes("key", "info", "cli-imported")).splitlines()
    assert lines[0] == "Name        cli-imported"
    assert lines[1].startswith("Algorithm   AES256")
    assert re.fullmatch(r"Date        \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[2])
    assert lines[3] == f"Owner       {admin.identity}"
    info = json.loads(_ok(kes("key", "info", "cli-imported", "--json")))
    assert info["name"] == "cli-imported"
    assert info["created_by"] == admin.identity


def test_key_import_errors(kes):
    _fails_with(
        kes("key", "import", "cli-short", base64.b64encode(b"short").decode()),
        "invalid key size for 'AES256'",
    )
    bad = kes("key", "import", "cli-bad", "!!not base64!!")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "Error: invalid key: not base64"


def test_key_info_of_missing_key(kes):
    _fails_with(kes("key", "info", "cli-no-such-key"), "key does not exist")
    _fails_with(kes("key", "info", "cli-no-such-key", "--json"), "key does not exist")


def test_key_ls(kes):
    _ok(kes("key", "create", "cli-ls-b", "cli-ls-a"))
    assert _ok(kes("key", "ls", "cli-ls-*")) == "Key\ncli-ls-a\ncli-ls-b\n"
    assert json.loads(_ok(kes("key", "ls", "cli-ls-", "--json"))) == ["cli-ls-a", "cli-ls-b"]
    assert _ok(kes("key", "ls", "cli-nothing-*")) == ""
    assert {"cli-ls-a", "cli-ls-b"} <= set(_ok(kes("key", "ls")).splitlines())


def test_key_ls_invalid_pattern(kes):
    _fails_with(kes("key", "ls", "a*b"), "listing pattern 'a*b' is empty, too long or is invalid")


def test_key_rm(kes):
    _ok(kes("key", "create", "cli-rm-1", "cli-rm-2"))
    assert _ok(kes("key", "rm", "cli-rm-1", "cli-rm-2")) == ""
    assert _ok(kes("key", "ls", "cli-rm-*")) == ""
    _fails_with(kes("key", "rm", "cli-rm-1"), "key does not exist")


def test_key_dek_and_decrypt(kes):
    _ok(kes("key", "create", "cli-dek"))
    out = _ok(kes("key", "dek", "cli-dek", tty=True))
    match = re.fullmatch(r"\{\n  plaintext : (\S+)\n  ciphertext: (\S+)\n\}\n", out)
    assert match is not None, out
    plaintext, ciphertext = match.groups()
    assert len(base64.b64decode(plaintext)) == 32
    assert _ok(kes("key", "decrypt", "cli-dek", ciphertext, tty=True)) == f"\nplaintext: {plaintext}\n"
    # Into a pipe or file, KES's dek/encrypt/decrypt print JSON without being asked.
    piped = json.loads(_ok(kes("key", "dek", "cli-dek")))
    assert list(piped) == ["plaintext", "ciphertext"]
    assert json.loads(_ok(kes("key", "decrypt", "cli-dek", piped["ciphertext"]))) == {
        "plaintext": piped["plaintext"]
    }
    assert json.loads(_ok(kes("key", "decrypt", "cli-dek", ciphertext, "--json"))) == {"plaintext": plaintext}


def test_key_dek_json_with_context(kes):
    _ok(kes("key", "create", "cli-dek-ctx"))
    context = base64.b64encode(b'{"bucket":"b"}').decode()
    doc = json.loads(_ok(kes("key", "dek", "cli-dek-ctx", context, "--json")))
    assert list(doc) == ["plaintext", "ciphertext"]
    assert _ok(kes("key", "decrypt", "cli-dek-ctx", doc["ciphertext"], context, "--json")) == (
        json.dumps({"plaintext": doc["plaintext"]}, separators=(",", ":")) + "\n"
    )
    # Without the context the ciphertext does not open.
    _fails_with(
        kes("key", "decrypt", "cli-dek-ctx", doc["ciphertext"]),
        "decryption failed: ciphertext is not authentic",
    )


def test_key_dek_of_missing_key(kes):
    _fails_with(kes("key", "dek", "cli-no-such-key"), "key does not exist")


def test_key_encrypt_and_decrypt(kes):
    _ok(kes("key", "create", "cli-enc"))
    out = _ok(kes("key", "encrypt", "cli-enc", "Hello World", tty=True))
    match = re.fullmatch(r"\nciphertext: (\S+)\n", out)
    assert match is not None, out
    assert list(json.loads(_ok(kes("key", "encrypt", "cli-enc", "Hello World")))) == ["ciphertext"]
    plain = _ok(kes("key", "decrypt", "cli-enc", match.group(1), tty=True))
    assert plain == f"\nplaintext: {base64.b64encode(b'Hello World').decode()}\n"
    doc = json.loads(_ok(kes("key", "encrypt", "cli-enc", "Hello", "--json")))
    assert list(doc) == ["ciphertext"]


def test_key_encrypt_denied_and_missing(kes, app_client: Identity):
    _fails_with(kes("key", "encrypt", "cli-enc-x", "m", who=app_client), FORBIDDEN)
    _fails_with(kes("key", "encrypt", "cli-no-such-key", "m"), "key does not exist")


def test_key_decrypt_garbage(kes):
    _ok(kes("key", "create", "cli-dec"))
    garbage = base64.b64encode(b"\x00" * 60).decode()
    _fails_with(kes("key", "decrypt", "cli-dec", garbage), "decryption failed: ciphertext is not authentic")


def test_key_hmac(kes):
    _ok(kes("key", "create", "cli-hmac"))
    out = _ok(kes("key", "hmac", "cli-hmac", "Hello World"))
    match = re.fullmatch(r"\nhmac: (\S+)\n", out)
    assert match is not None, out
    assert len(base64.b64decode(match.group(1))) == 32
    doc = json.loads(_ok(kes("key", "hmac", "cli-hmac", "Hello World", "--json")))
    assert doc == {"hmac": match.group(1)}  # deterministic
    _fails_with(kes("key", "hmac", "cli-no-such-key", "m"), "key does not exist")


def test_policy_holder_uses_its_own_keys(kes, app_client: Identity):
    assert _ok(kes("key", "create", "my-key-cli", who=app_client)) == ""
    out = _ok(kes("key", "dek", "my-key-cli", "--json", who=app_client))
    ciphertext = json.loads(out)["ciphertext"]
    _ok(kes("key", "decrypt", "my-key-cli", ciphertext, who=app_client))
    _fails_with(kes("key", "rm", "my-key-cli", who=app_client), FORBIDDEN)


# --- kes status ---------------------------------------------------------------------------------


def test_status_human(kes, server: Server):
    lines = _ok(kes("status")).splitlines()
    assert lines[0] == f"● 127.0.0.1:{server.port}"
    labels = [line.split()[0] for line in lines[1:6]]
    assert labels == ["Version", "Uptime", "Latency", "OS", "CPUs"]
    assert re.fullmatch(r"  Uptime   \d+ (seconds|minutes|hours)", lines[2])
    assert re.fullmatch(r"  Latency  \S+", lines[3])
    assert lines[4] == "  OS       linux"
    assert lines[6] == "  Memory"
    assert re.fullmatch(r"  · Heap   \d+(\.\d)? [KMGT]?B", lines[7])
    assert lines[8].startswith("  · Stack  ")
    assert lines[9].startswith("  Keystore reachable, latency ")


def test_status_short_and_json(kes, server: Server):
    assert _ok(kes("status", "-s")) == f"● 127.0.0.1:{server.port}\n"
    assert _ok(kes("status", "--short", "--server", server.url)) == f"● 127.0.0.1:{server.port}\n"
    doc = json.loads(_ok(kes("status", "--json")))
    assert doc["os"] == "linux"
    assert isinstance(doc["uptime"], int)
    assert doc["num_cpu_used"] >= 1
    assert "keystore_unreachable" not in doc


def test_status_api(kes):
    out = _ok(kes("status", "--api"))
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0] == "  Method  API                          Timeout"
    assert "  PUT     /v1/key/create/              15s" in table
    assert "  GET     /v1/log/audit                Inf" in table
    apis = json.loads(_ok(kes("status", "--api", "--json")))
    assert {"method": "GET", "path": "/version", "max_body": 0, "timeout": 10} in apis
    assert len(apis) == len(table) - 1


def test_status_allowed_by_policy_and_denied_to_strangers(kes, app_client: Identity, stranger: Identity):
    assert _ok(kes("status", "-s", who=app_client)).startswith("● ")
    _fails_with(kes("status", who=stranger), FORBIDDEN)
    _fails_with(kes("status", "--json", who=stranger), FORBIDDEN)


def test_status_unreachable_server(kes, server_id: Identity, admin: Identity, server: Server):
    result = subprocess.run(
        [*kes_command("status", "--server", "127.0.0.1:1")],
        env=_env(server, admin, server_id),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot connect to https://127.0.0.1:1")


# --- kes metric ---------------------------------------------------------------------------------


def test_metric_once_human(kes):
    out = _ok(kes("metric", "--once"))
    lines = out.split("\n")
    assert len(out.splitlines()) == 8
    assert lines[1].split()[:2] == ["Request", "OK"]
    assert lines[5].split()[:2] == ["System", "UpTime"]
    ok, err, fail, rate, _latency = lines[2].split()
    assert int(ok) >= 0 and int(err) >= 0 and int(fail) >= 0
    assert rate == "0.00"
    assert all(share.endswith("%") for share in lines[3].split())
    assert int(lines[6].split()[-1]) >= 1  # threads


def test_metric_once_json_counts_requests(kes):
    before = json.loads(_ok(kes("metric", "--once", "--json")))
    _ok(kes("key", "create", "cli-metric"))
    _fails_with(kes("key", "create", "cli-metric"), "key already exists")
    after = json.loads(_ok(kes("metric", "--once", "--json")))
    assert after["kes_http_request_success"] >= before["kes_http_request_success"] + 1
    assert after["kes_http_request_error"] >= before["kes_http_request_error"] + 1
    assert after["kes_system_up_time"] >= before["kes_system_up_time"]
    assert after["kes_system_num_cpu_used"] >= 1
    assert after["kes_system_mem_heap_used"] > 0
    assert sorted(int(b) for b in after["kes_http_response_time"]) == [
        10_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        1_500_000_000,
        3_000_000_000,
        5_000_000_000,
        10_000_000_000,
    ]


def test_metric_follows_until_interrupted(follow):
    proc = follow("metric", "--rate", "200ms", "--json")
    first = json.loads(proc.line())
    second = json.loads(proc.line())
    assert second["kes_system_up_time"] >= first["kes_system_up_time"]
    status, stderr = proc.interrupt()
    assert status == 0
    assert stderr == ""


def test_metric_denied_and_bad_rate(kes, stranger: Identity):
    _fails_with(kes("metric", "--once", who=stranger), FORBIDDEN)
    bad = kes("metric", "--rate", "0s")
    assert bad.returncode == 2
    assert "the rate must be positive" in bad.stderr


# --- kes policy ---------------------------------------------------------------------------------


def test_policy_ls(kes):
    assert _ok(kes("policy", "ls")) == "Policy\nmy-app\n"
    assert _ok(kes("policy", "ls", "my-*")) == "Policy\nmy-app\n"
    assert _ok(kes("policy", "ls", "other")) == ""
    assert json.loads(_ok(kes("policy", "ls", "--json"))) == ["my-app"]


def test_policy_ls_denied(kes, app_client: Identity):
    _fails_with(kes("policy", "ls", who=app_client), FORBIDDEN)


def test_policy_info(kes, admin: Identity):
    lines = _ok(kes("policy", "info", "my-app")).splitlines()
    assert lines[0] == "Name        my-app"
    assert re.fullmatch(r"Date        \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[1])
    assert lines[2] == f"Created by  {admin.identity}"
    doc = json.loads(_ok(kes("policy", "info", "my-app", "--json")))
    assert doc["name"] == "my-app"
    assert doc["created_by"] == admin.identity


def test_policy_info_errors(kes):
    _fails_with(kes("policy", "info", "no-such-policy"), "policy does not exist")
    _fails_with(kes("policy", "info", "no-such-policy", "--json"), "policy does not exist")


def test_policy_show(kes, admin: Identity):
    out = _ok(kes("policy", "show", "my-app"))
    allow, deny, created = out.split("\n\n")
    assert allow.splitlines()[0] == "Allow:"
    assert "  · /v1/key/create/my-key*" in allow.splitlines()
    assert deny.splitlines() == ["Deny:", "  · /v1/key/*/my-key-secret", "  · /v1/key/generate/my-key-denied"]
    assert created.splitlines()[1] == f"Created by: {admin.identity}"
    doc = json.loads(_ok(kes("policy", "show", "my-app", "--json")))
    assert doc["deny"] == {"/v1/key/*/my-key-secret": {}, "/v1/key/generate/my-key-denied": {}}
    assert doc["allow"]["/v1/status"] == {}
    assert doc["created_by"] == admin.identity


def test_policy_show_errors(kes, app_client: Identity):
    _fails_with(kes("policy", "show", "no-such-policy"), "policy does not exist")
    _fails_with(kes("policy", "show", "my-app", "--json", who=app_client), FORBIDDEN)


# --- kes identity ls / info ---------------------------------------------------------------------


def test_identity_ls(kes, admin: Identity, app_client: Identity):
    expected = sorted([admin.identity, app_client.identity])
    assert _ok(kes("identity", "ls")) == "Identity\n" + "".join(f"{i}\n" for i in expected)
    assert json.loads(_ok(kes("identity", "ls", "--json"))) == expected
    prefix = app_client.identity[:10]
    assert _ok(kes("identity", "ls", prefix + "*")) == f"Identity\n{app_client.identity}\n"


def test_identity_ls_denied(kes, app_client: Identity):
    _fails_with(kes("identity", "ls", who=app_client), FORBIDDEN)


def test_identity_info_self_admin(kes, admin: Identity):
    lines = _ok(kes("identity", "info")).splitlines()
    assert lines[0] == f"Identity    {admin.identity}"
    assert lines[2] == "Role        Admin"
    doc = json.loads(_ok(kes("identity", "info", "--json")))
    assert doc["identity"] == admin.identity
    assert doc["admin"] is True


def test_identity_info_self_policy_holder(kes, app_client: Identity, admin: Identity):
    out = _ok(kes("identity", "info", who=app_client))
    head, policy = out.split("\n\n")
    assert head.splitlines()[0] == f"Identity    {app_client.identity}"
    assert "Role        User" in head.splitlines()
    assert f"Created By  {admin.identity}" in head.splitlines()
    lines = policy.splitlines()
    assert lines[0] == "Policy      my-app"
    assert "Allow" in lines and "Deny" in lines
    assert "            · /v1/key/create/my-key*" in lines
    doc = json.loads(_ok(kes("identity", "info", "--json", who=app_client)))
    assert doc["identity"] == app_client.identity
    assert doc["policy"] == "my-app"
    assert "/v1/key/*/my-key-secret" in doc["deny"]


def test_identity_info_self_of_unknown_identity(kes, stranger: Identity):
    _fails_with(kes("identity", "info", who=stranger), "identity does not exist")


def test_identity_info_of_other_identity(kes, app_client: Identity, admin: Identity):
    lines = _ok(kes("identity", "info", app_client.identity)).splitlines()
    assert lines[0] == f"Identity    {app_client.identity}"
    assert lines[1] == "Policy      my-app"
    assert lines[3] == "Role        User"
    assert lines[4] == f"Created By  {admin.identity}"
    doc = json.loads(_ok(kes("identity", "info", admin.identity, "--json")))
    assert doc["identity"] == admin.identity
    assert doc["admin"] is True


def test_identity_info_errors(kes, stranger: Identity, app_client: Identity):
    _fails_with(kes("identity", "info", stranger.identity), "identity does not exist")
    _fails_with(kes("identity", "info", stranger.identity, who=app_client), FORBIDDEN)


# --- kes ls -------------------------------------------------------------------------------------


def test_ls_keys_policies_identities(kes, admin: Identity, app_client: Identity):
    _ok(kes("key", "create", "cli-ls2-x"))
    assert _ok(kes("ls", "cli-ls2-")) == "Key\ncli-ls2-x\n"
    assert "cli-ls2-x" in json.loads(_ok(kes("ls", "--json")))
    assert _ok(kes("ls", "-p")) == "Policy\nmy-app\n"
    assert json.loads(_ok(kes("ls", "--policy", "--json"))) == ["my-app"]
    assert json.loads(_ok(kes("ls", "-i", "--json"))) == sorted([admin.identity, app_client.identity])
    assert _ok(kes("ls", "--identity", admin.identity[:6])) == f"Identity\n{admin.identity}\n"


def test_ls_errors(kes, app_client: Identity, stranger: Identity):
    _fails_with(kes("ls", "-p", who=app_client), FORBIDDEN)
    _fails_with(kes("ls", who=stranger), FORBIDDEN)
    both = kes("ls", "-i", "-p")
    assert both.returncode == 2
    assert "must not be used at the same time" in both.stderr


# --- kes log ------------------------------------------------------------------------------------


def test_log_audit_human(follow, server: Server, admin: Identity):
    log = follow("log", "--audit")
    assert log.line().split() == ["Time", "Status", "Identity", "IP", "API", "Latency"]
    path = "/v1/key/describe/cli-log-missing"
    fields = log.event_for(lambda: call(server, "GET", path, identity=admin), path).split()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", fields[0])
    assert fields[1:5] == ["404", admin.identity[:20], "127.0.0.1", path]
    assert re.fullmatch(r"[\d.]+(ns|µs|ms|s)", fields[5])
    status, stderr = log.interrupt()
    assert status == 0
    assert stderr == ""


def test_log_audit_json_is_the_raw_stream(follow, server: Server, admin: Identity):
    log = follow("log", "--json")  # --audit is the default
    path = "/v1/key/describe/cli-log-json"
    event = json.loads(log.event_for(lambda: call(server, "GET", path, identity=admin), path))
    assert event["request"]["path"] == path
    assert event["request"]["identity"] == admin.identity
    assert event["response"]["code"] == 404
    assert isinstance(event["response"]["time"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", event["time"])
    log.kill()


def test_log_ends_quietly_when_its_reader_goes_away(follow, server: Server, admin: Identity):
    """`kes log --json | head -1`: once the pipe closes, kes ends with status 0 and no message."""
    log = follow("log", "--json")
    path = "/v1/key/describe/cli-log-pipe"
    log.event_for(lambda: call(server, "GET", path, identity=admin), path)
    assert log.proc.stdout is not None
    log.proc.stdout.close()
    deadline = time.monotonic() + 20
    while log.proc.poll() is None and time.monotonic() < deadline:
        call(server, "GET", path, identity=admin)  # the next event's write hits the closed pipe
        time.sleep(0.1)
    assert log.proc.wait(5) == 0
    assert log.proc.stderr is not None
    assert log.proc.stderr.read() == b""


def test_log_error_follows_until_interrupted(follow):
    log = follow("log", "--error")
    time.sleep(0.5)
    assert log.proc.poll() is None  # connected and waiting for events
    status, stderr = log.interrupt()
    assert status == 0
    assert stderr == ""


def test_log_error_json_connects(follow):
    log = follow("log", "--error", "--json")
    time.sleep(0.5)
    assert log.proc.poll() is None
    log.kill()


def test_log_denied(follow, app_client: Identity):
    log = follow("log", who=app_client)
    status, stderr = log.finished()
    assert status == 1
    assert stderr.strip() == f"Error: {FORBIDDEN}"
    log = follow("log", "--error", who=app_client)
    status, stderr = log.finished()
    assert status == 1
    assert stderr.strip() == f"Error: {FORBIDDEN}"


def test_log_audit_and_error_together_is_a_usage_error(kes):
    result = kes("log", "--audit", "--error")
    assert result.returncode == 2
    assert "cannot display audit and error logs at the same time" in result.stderr


def test_log_ends_when_the_server_stops(workdir: Path, server_id: Identity, admin: Identity):
    """A stream the server closes ends `kes log` cleanly; no server at all is a connection error."""
    from tests.integration.conftest import base_config

    own = workdir / "log-stop"
    own.mkdir()
    srv = Server(own, base_config(server_id, admin.identity, own / "keys")).start()
    env = _env(srv, admin, server_id)
    try:
        proc = subprocess.Popen(
            kes_command("log", "--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        follower = Follower(proc)
        follower.event_for(
            lambda: call(srv, "GET", "/v1/key/describe/x", identity=admin), "/v1/key/describe/x"
        )
    finally:
        srv.stop()
    status, stderr = follower.finished()
    follower.kill()
    assert status == 0, stderr
    again = subprocess.run(
        kes_command("log"), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 1
    assert again.stderr.startswith(f"Error: cannot connect to {srv.url}")
