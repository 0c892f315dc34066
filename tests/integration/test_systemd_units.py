"""The unit files, sysusers/tmpfiles snippets and man pages, checked with the real tools:
systemd-analyze verify/security, systemd-sysusers, systemd-tmpfiles, mandoc."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from kesd import config as kesd_config
from kesd import yamlreader

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
MAN = ROOT / "man"
SECURITY_LIMIT = 2.0


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints nothing (it exits 0 even on unknown keys, so the output counts).

    ExecStart= must exist: /usr/bin/kesd comes from an overlay in a private mount namespace, and the
    man pages of Documentation= from this tree (MANPATH), so both are checked too.
    """
    _need("systemd-analyze", "unshare", "man")
    if os.geteuid() != 0:
        pytest.skip("needs root for the /usr/bin overlay")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    stub = upper / "kesd"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    manpath = tmp_path / "man"
    for section, page in (("8", "kesd.8"), ("5", "kesd.yml.5")):
        (manpath / f"man{section}").mkdir(parents=True, exist_ok=True)
        shutil.copy(MAN / page, manpath / f"man{section}" / page)
    script = (
        "mount --make-rprivate / && "
        f"mount -t overlay overlay -o lowerdir=/usr/bin,upperdir={upper},workdir={work} /usr/bin && "
        f'exec systemd-analyze verify "$@"'
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(UNITS / "kesd.service"), str(UNITS / "kesd.socket")],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPATH": str(manpath)},
        check=False,
    )
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr
    assert result.returncode == 0


def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: an unknown directive is reported."""
    _need("systemd-analyze")
    broken = tmp_path / "kesd.service"
    broken.write_text((UNITS / "kesd.service").read_text().replace("[Service]", "[Service]\nNoSuchThing=1"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True, check=False
    )
    assert "NoSuchThing" in result.stdout + result.stderr


def test_security_exposure_score() -> None:
    """`systemd-analyze security --offline=yes` scores kesd.service at most 2.0."""
    _need("systemd-analyze")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS / "kesd.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for kesd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security --offline=yes kesd.service: {score}")
    for line in result.stdout.splitlines():
        if line.startswith("✗"):
            print("  exposed:", " ".join(line.split()))
    assert score <= SECURITY_LIMIT


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Directive → values of a unit file (all sections together)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_has_what_the_issue_asks() -> None:
    service = unit_settings(UNITS / "kesd.service")
    expected = {
        "Type": "notify",
        "User": "kesd",
        "ExecStart": "/usr/bin/kesd --config /etc/kesd/config.yml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "AmbientCapabilities": "CAP_IPC_LOCK",
        "CapabilityBoundingSet": "CAP_IPC_LOCK",
        "NoNewPrivileges": "yes",
        "LimitCORE": "0",
        "ConfigurationDirectory": "kesd",
        "StateDirectory": "kesd",
        "RuntimeDirectory": "kesd",
        "MemoryDenyWriteExecute": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert "WatchdogSec" in service
    socket_unit = unit_settings(UNITS / "kesd.socket")
    assert socket_unit["ListenStream"] == ["7373"]
    assert socket_unit["FileDescriptorName"] == ["tls"]


def test_sysusers_and_tmpfiles(tmp_path: Path) -> None:
    """systemd-sysusers creates the kesd user in a scratch root; systemd-tmpfiles then makes its
    directories with the owners and modes the unit expects."""
    _need("systemd-sysusers", "systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("needs root to chown in the scratch root")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "sysusers.d" / "kesd.conf")],
        check=True,
        capture_output=True,
    )
    passwd = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    assert "kesd" in passwd
    uid, gid, home = int(passwd["kesd"][2]), int(passwd["kesd"][3]), passwd["kesd"][5]
    assert 0 < uid < 1000 and home == "/var/lib/kesd"
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(UNITS / "tmpfiles.d" / "kesd.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for path, mode, owner, group in (
        ("etc/kesd", 0o750, 0, gid),
        ("var/lib/kesd", 0o700, uid, gid),
        ("var/lib/kesd/keys", 0o700, uid, gid),
    ):
        st = (tmp_path / path).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, owner, group), path


@pytest.mark.parametrize("page", ["kesd.8", "kesd.yml.5"])
def test_man_pages_are_lint_clean(page: str) -> None:
    _need("mandoc")
    result = subprocess.run(
        ["mandoc", "-Tlint", str(MAN / page)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        result.stdout + result.stderr
    )


def _rendered(page: str) -> str:
    text = subprocess.run(
        ["mandoc", "-Tascii", "-O", "width=250", str(MAN / page)], capture_output=True, text=True, check=True
    ).stdout
    return re.sub(r".\x08", "", text)


def _fields(spec: Any, prefix: str) -> Iterator[str]:
    """Every documented field path of the config schema (placeholders NAME/PATH for free keys)."""
    if isinstance(spec, yamlreader.Ignored):
        return
    if isinstance(spec, Mapping):
        for key, inner in spec.items():
            yield from _fields(inner, f"{prefix}.{key}" if prefix else key)
    elif isinstance(spec, yamlreader.MapOf):
        placeholder = "PATH" if prefix == "api" else "NAME"
        yield from _fields(spec.value, f"{prefix}.{placeholder}")
    elif isinstance(spec, yamlreader.ListOf):
        yield from _fields(spec.item, f"{prefix}[]")
    else:
        yield prefix


def test_every_config_field_is_documented() -> None:
    """man/kesd.yml.5 names every field of the schema in kesd/config.py (SCHEMA), by its dotted path."""
    _need("mandoc")
    text = _rendered("kesd.yml.5")
    fields = sorted(_fields(kesd_config.SCHEMA, ""))
    assert len(fields) > 60
    missing = [f for f in fields if not re.search(rf"(?<![\w.]){re.escape(f)}(?![\w])", text)]
    assert not missing, missing


def test_every_kesd_option_is_documented() -> None:
    _need("mandoc")
    from kesd.cli.kesd import main

    text = _rendered("kesd.8")
    for param in main.params:
        for opt in param.opts:
            assert opt in text, opt


def test_man_page_example_config_is_valid() -> None:
    """The example in kesd.yml(5) parses (with its ${KESD_ADMIN})."""
    _need("mandoc")
    text = _rendered("kesd.yml.5")
    block = text.split("\nEXAMPLES\n", 1)[1].split("\nSEE ALSO\n", 1)[0]
    lines = block.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    example = "\n".join(line[indent:] for line in lines)
    config = kesd_config.parse_config(example, file="kesd.yml.5", env={"KESD_ADMIN": "a" * 64})
    assert config.keys == ("minio-default",) and config.mlock
