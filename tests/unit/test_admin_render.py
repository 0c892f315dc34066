"""What kesctl prints: the human renderings and the pure parts of the CLI (no socket involved)."""

from __future__ import annotations

import base64

import click
import pytest
from click.testing import CliRunner

from kesd.admin import protocol, render
from kesd.cli import kesctl

STATUS = {
    "version": "0.1.0",
    "pid": 42,
    "started_at": "2025-01-01T00:00:00Z",
    "uptime": 93784.2,
    "config": "/etc/kesd/config.yml",
    "keystore": {"kind": "filesystem /var/lib/kesd/keys", "reachable": True, "latency_ms": 0.25},
    "keys": 12,
    "connections": 3,
    "admin_connections": 1,
    "requests": 1200,
    "requests_per_second": 12.345,
    "cache": {"keys": 2, "hits": 10, "misses": 2},
    "memory": {"rss": 50 * 1024 * 1024, "vms": 3 * 1024**3},
    "mlock": True,
    "addresses": {"api": "0.0.0.0:7373", "admin": "/run/kesd/admin.sock"},
    "log_level": "INFO",
}


def test_status_rows() -> None:
    text = render.status(STATUS)
    assert text.splitlines() == [
        "Version         kesd 0.1.0 (pid 42)",
        "Uptime          1d 2h 3m 4s (since 2025-01-01T00:00:00Z)",
        "Config          /etc/kesd/config.yml",
        "Keystore        filesystem /var/lib/kesd/keys (reachable, 0.2 ms)",
        "Keys            12",
        "Connections     3 API, 1 admin",
        "Requests        1200 total, 12.3/s (last 10s)",
        "Cache           2 keys (10 hits, 2 misses)",
        "Memory          50.0 MiB resident, 3.0 GiB virtual",
        "Memory lock     locked (mlock)",
        "API address     0.0.0.0:7373",
        "Admin socket    /run/kesd/admin.sock",
        "Log level       INFO",
    ]


def test_status_with_the_keystore_down() -> None:
    down = {**STATUS, "keystore": {"kind": "fs", "reachable": False, "error": "key store is not reachable"}}
    text = render.status({**down, "keys": None, "mlock": False})
    assert "Keystore        fs (NOT reachable: key store is not reachable)\n" in text
    assert "Keys            -\n" in text and "Memory lock     not locked\n" in text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m 0s"), (3600, "1h 0m 0s"), (None, "-")]
)
def test_duration(seconds: float | None, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), ("x", "-")])
def test_size(n: object, text: str) -> None:
    assert render.size(n) == text


def test_tables_align_and_keep_their_header() -> None:
    assert render.key_list({"keys": []}) == "Key\n"
    assert render.key_list({"keys": ["a", "b"]}) == "Key\na\nb\n"
    policies = {"policies": [{"name": "minio", "allow": 12, "deny": 0, "identities": 3}]}
    assert render.policy_list(policies) == "Policy  Allow  Deny  Identities\nminio   12     0     3\n"
    idents = {"identities": [{"identity": "abc", "admin": True}, {"identity": "d", "policy": "p"}]}
    assert render.identity_list(idents) == "Identity  Role\nabc       admin\nd         policy p\n"


def test_policy_and_identity_details() -> None:
    shown = render.policy_show({"name": "p", "allow": ["/a", "/b"], "deny": [], "identities": ["x"]})
    assert shown == (
        "Policy          p\nAllow           /a\n                /b\nDeny            -\nIdentities      x\n"
    )
    assert render.identity_show({"identity": "x", "admin": True}) == (
        "Identity        x\nRole            admin (every API)\n"
    )
    assert "Role            policy p\n" in render.identity_show(
        {"identity": "x", "policy": "p", "allow": ["/a"]}
    )


def test_key_info() -> None:
    text = render.key_info({"name": "k", "algorithm": "AES256-GCM_SHA256", "created_at": "t"})
    assert (
        text == "Name            k\nAlgorithm       AES256-GCM_SHA256\nCreated         t\nCreated by      -\n"
    )


def test_audit_lines() -> None:
    line = (
        '{"time":"2025-01-01T00:00:00Z","request":{"path":"/v1/key/create/k","identity":"'
        + "a" * 64
        + '"},"response":{"code":200,"time":2500000}}'
    )
    assert (
        render.audit_line(line) == "2025-01-01T00:00:00Z  200    2500µs  aaaaaaaaaaaa…     /v1/key/create/k\n"
    )
    admin = (
        '{"time":"t","request":{"path":"admin:status","identity":"unix:uid=0"},'
        '"response":{"code":403,"time":0}}'
    )
    assert render.audit_line(admin) == "t  403       0µs  unix:uid=0        admin:status\n"
    assert render.audit_line("not json") == "not json\n"
    assert render.error_line('{"message":"2025/01/01 boom\\n"}') == "2025/01/01 boom\n"
    assert render.error_line("{}") == "{}\n"


def test_key_material_raw_or_base64() -> None:
    key = bytes(range(32))
    assert kesctl._key_material(base64.b64encode(key) + b"\n") == key
    assert (
        kesctl._key_material(b"  " + base64.b64encode(key)[:20] + b"\n" + base64.b64encode(key)[20:]) == key
    )
    assert kesctl._key_material(key) == key
    for wrong in (b"", b"short", base64.b64encode(key[:16]), key + b"!"):
        with pytest.raises(click.UsageError):
            kesctl._key_material(wrong)


def test_one_kesctl_command_per_operation() -> None:
    """Every admin operation (but the handshake) is reachable from kesctl, under its own name."""
    names = set()

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name}.")
            else:
                names.add(f"{prefix}{name}")

    walk(kesctl.cli, "")
    expected = {name.replace("log.level", "log-level") for name in protocol.OPERATIONS if name != "hello"}
    expected = {("log.audit" if n == "log.follow" else n) for n in expected} | {"log.error"}
    assert expected <= names
    assert names - expected == {"completion"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(kesctl.cli, ["completion", shell])
    assert result.exit_code == 0
    assert "_KESCTL_COMPLETE" in result.output


def test_usage_errors_exit_2() -> None:
    runner = CliRunner()
    assert runner.invoke(kesctl.cli, ["log", "audit"]).exit_code == 2
    assert runner.invoke(kesctl.cli, ["nope"]).exit_code == 2
    assert runner.invoke(kesctl.cli, ["--timeout", "0", "status"]).exit_code == 2
    assert runner.invoke(kesctl.cli, ["key", "import", "k", "--cipher", "DES"]).exit_code == 2
