"""End to end under a real, booted systemd: a Debian 12 container (systemd-nspawn --boot) with our
units, sysusers/tmpfiles snippets and kesd installed as the package would install them.

The root comes from scripts/build-test-root (debootstrap, cached under /var/cache/kesd-test) and
boots with --volatile=overlay, so every run starts from the same pristine tree. Commands run inside
with nsenter into the container's namespaces; requests come from Debian's python3 in there.

Skips (with the reason) when not root, when the tools are missing, when the root cannot be built
(no mirror), or when the container does not boot here. KESD_SKIP_CONTAINER_TESTS=1 skips it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import Identity, make_identity
from tests.integration.nspawn import BootedContainer

ROOT = Path(__file__).resolve().parents[2]
BUILD_ROOT = ROOT / "scripts" / "build-test-root"
STAGE = "/srv/kesd-test"  # where the staging directory appears inside the container


def _unavailable() -> str | None:
    if os.environ.get("KESD_SKIP_CONTAINER_TESTS") == "1":
        return "KESD_SKIP_CONTAINER_TESTS=1"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap)"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt systemd-container, util-linux)"
    return None


pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=str(_unavailable()))

LAUNCHER = """#!/usr/bin/python3
# kesd as the Debian package installs it: the code under /usr/lib/kesd, Debian's libraries.
import sys

sys.path.insert(0, "/usr/lib/kesd")
from kesd.cli.kesd import main

main()
"""

INSTALL = f"""set -e
mkdir -p /usr/lib/kesd
cp -r {STAGE}/kesd /usr/lib/kesd/
install -m 0755 {STAGE}/kesd-launcher /usr/bin/kesd
install -m 0644 {STAGE}/systemd/kesd.service {STAGE}/systemd/kesd.socket /usr/lib/systemd/system/
install -m 0644 {STAGE}/systemd/sysusers.d/kesd.conf /usr/lib/sysusers.d/kesd.conf
install -m 0644 {STAGE}/systemd/tmpfiles.d/kesd.conf /usr/lib/tmpfiles.d/kesd.conf
systemd-sysusers kesd.conf
systemd-tmpfiles --create kesd.conf
install -m 0640 -g kesd {STAGE}/server.key {STAGE}/server.crt /etc/kesd/
systemctl daemon-reload
"""

CLIENT = """import http.client, json, ssl, sys, time
cert, key, method, path, body = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(cert, key)
conn = http.client.HTTPSConnection("127.0.0.1", 7373, context=ctx, timeout=30)
conn.request(method, path, body=body.encode() if body else None)
reply = conn.getresponse()
print(json.dumps({"status": reply.status, "body": reply.read().decode()}))
"""


class Container(BootedContainer):
    """The booted test root with kesd staged at STAGE, and what the tests ask of it."""

    def __init__(self, root: Path, stage: Path, log: Path) -> None:
        self.stage = stage
        super().__init__(
            root,
            log,
            ["--volatile=overlay", f"--bind-ro={stage}:{STAGE}"],
            f"kesd-test-{os.getpid()}",
        )

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def request(self, who: str, method: str, path: str, body: str = "") -> tuple[int, str]:
        out = self.run(
            "python3", f"{STAGE}/client.py", f"{STAGE}/{who}.crt", f"{STAGE}/{who}.key", method, path, body
        ).stdout
        reply = json.loads(out)
        return int(reply["status"]), str(reply["body"])

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        (self.stage / "config.yml").write_text(text)
        self.sh(f"install -m 0640 -g kesd {STAGE}/config.yml /etc/kesd/config.yml")

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", "--all", *matches).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_status(self, predicate: Any, timeout: float = 30.0) -> dict[str, str]:
        """Poll ``systemctl show kesd.service`` until ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.show(
                "kesd.service", "ActiveState", "SubState", "StatusText", "StatusErrno", "MainPID", "Result"
            )
            if predicate(shown):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"kesd.service never reached the expected state: {shown}")
            time.sleep(0.2)


def _build_root() -> Path:
    result = subprocess.run([str(BUILD_ROOT)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot build the Debian 12 test root: {(result.stderr or result.stdout)[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _stage(stage: Path) -> dict[str, Identity]:
    """The files the container installs from: kesd's code, units, launcher, certificates."""
    shutil.copytree(ROOT / "kesd", stage / "kesd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "systemd", stage / "systemd")
    (stage / "kesd-launcher").write_text(LAUNCHER)
    (stage / "client.py").write_text(CLIENT)
    ids = {
        "server": make_identity(stage, "server", kind="ecdsa", san=("127.0.0.1", "localhost")),
        "admin": make_identity(stage, "admin"),
        "app": make_identity(stage, "app"),
    }
    for path in stage.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ids


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Container, dict[str, Identity]]]:
    root = _build_root()
    stage = tmp_path_factory.mktemp("container-stage")
    stage.chmod(0o755)
    ids = _stage(stage)
    box = Container(root, stage, tmp_path_factory.mktemp("container-log") / "nspawn.log")
    try:
        state = box.wait_booted()
        if state not in ("running", "degraded"):
            pytest.skip(
                f"the container did not boot here ({state!r}): {box.log.read_text(errors='replace')[-800:]}"
            )
        box.sh(INSTALL)
        yield box, ids
    finally:
        box.close()


def base_config(ids: dict[str, Identity], **extra: Any) -> dict[str, Any]:
    return {
        "address": "0.0.0.0:7373",
        "admin": {"identity": ids["admin"].identity},
        "tls": {"key": "/etc/kesd/server.key", "cert": "/etc/kesd/server.crt"},
        "keystore": {"fs": {"path": "/var/lib/kesd/keys"}},
        "keys": [{"name": "k1"}],
        "log": {"audit": "on"},
        "mlock": True,
        **extra,
    }


def test_socket_activation_reload_journal_stop(container: tuple[Container, dict[str, Identity]]) -> None:
    """systemctl start kesd.socket; the first request starts kesd.service through it (sandboxed,
    as user kesd, memory locked); systemctl reload (good and bad); journalctl -u kesd with
    structured fields; systemctl stop ends it with exit 0."""
    box, ids = container
    box.write_config(base_config(ids))
    box.run("systemctl", "start", "kesd.socket")
    assert box.show("kesd.socket", "ActiveState")["ActiveState"] == "active"
    assert box.show("kesd.service", "ActiveState")["ActiveState"] == "inactive"
    try:
        status, body = box.request("admin", "GET", "/v1/status")
        assert status == 200, body
        shown = box.wait_status(lambda s: s["ActiveState"] == "active")
        assert shown["StatusText"].startswith(("ready on", "serving")), shown
        pid = shown["MainPID"]
        proc_status = box.run("cat", f"/proc/{pid}/status").stdout
        fields = dict(line.split(":", 1) for line in proc_status.splitlines() if ":" in line)
        kesd_uid = box.run("id", "-u", "kesd").stdout.strip()
        assert fields["Uid"].split()[0] == kesd_uid, fields["Uid"]
        assert int(fields["VmLck"].split()[0]) > 8192, fields["VmLck"]  # mlock: true, CAP_IPC_LOCK only
        assert fields["NoNewPrivs"].strip() == "1"
        assert int(fields["CapEff"], 16) == 1 << 14  # CAP_IPC_LOCK and nothing else
        print("kesd in the container:", {k: fields[k].strip() for k in ("Uid", "VmLck", "CapEff", "Seccomp")})

        # The sandbox leaves everything the API needs working (psutil, TLS callback, keystore).
        for path in ("/v1/metrics", "/v1/api", "/version"):
            status, body = box.request("admin", "GET", path)
            assert status == 200, (path, body)
        status, body = box.request("admin", "POST", "/v1/key/generate/k1", "{}")
        assert status == 200, body
        dek = json.loads(body)
        status, body = box.request(
            "admin", "POST", "/v1/key/decrypt/k1", json.dumps({"ciphertext": dek["ciphertext"]})
        )
        assert status == 200 and json.loads(body)["plaintext"] == dek["plaintext"], body
        assert box.request("app", "POST", "/v1/key/generate/k1", "{}")[0] == 403
        shown = box.wait_status(lambda s: s["StatusText"].startswith("serving 1 key, "), timeout=20)
        print("StatusText:", shown["StatusText"])

        # systemctl reload: a new policy lets the app in.
        policy = {"app": {"allow": ["/v1/key/generate/k1"], "identities": [ids["app"].identity]}}
        box.write_config(base_config(ids, policy=policy))
        box.run("systemctl", "reload", "kesd.service")
        box.wait_status(lambda s: s["StatusText"].startswith("serving"))
        assert box.request("app", "POST", "/v1/key/generate/k1", "{}")[0] == 200
        assert box.show("kesd.service", "MainPID")["MainPID"] == pid  # reloaded, not restarted

        # A bad config: the old one keeps serving; the reason is in the status and the journal.
        box.write_config("admin: [broken\n")
        box.run("systemctl", "reload", "kesd.service")
        shown = box.wait_status(lambda s: s["StatusText"].startswith("reload failed"))
        assert "/etc/kesd/config.yml" in shown["StatusText"], shown
        assert shown["ActiveState"] == "active"
        assert box.request("app", "POST", "/v1/key/generate/k1", "{}")[0] == 200
        box.write_config(base_config(ids, policy=policy))

        # journalctl -u kesd: native entries with structured fields (stderr was detected as the
        # journal: the unit passes no --log-target).
        entries = box.journal("-u", "kesd", "SYSLOG_IDENTIFIER=kesd")
        serving = [e for e in entries if e["MESSAGE"].startswith("kesd is serving on")]
        assert serving and serving[0]["CODE_FUNC"] == "_ready" and serving[0]["PRIORITY"] == "6", entries[-5:]
        assert serving[0]["CODE_FILE"].endswith("kesd/daemon.py")
        assert any("reload failed" in e["MESSAGE"] and e["PRIORITY"] == "3" for e in entries)
        denied = box.journal("-u", "kesd", "KESD_STATUS=403")
        assert denied, "no audit event with KESD_STATUS=403"
        assert denied[0]["SYSLOG_IDENTIFIER"] == "kesd-audit"
        assert denied[0]["KESD_IDENTITY"] == ids["app"].identity
        assert denied[0]["KESD_PATH"] == "/v1/key/generate/k1"
        assert denied[0]["KESD_DURATION_US"].isdigit()
        print(
            "journalctl -u kesd KESD_STATUS=403:",
            {k: v for k, v in denied[0].items() if k.startswith("KESD_")},
        )
        everything = box.run("journalctl", "--no-pager", "-o", "export").stdout
        assert dek["plaintext"] not in everything

        box.run("systemctl", "stop", "kesd.service")
        shown = box.show("kesd.service", "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
        assert shown["ActiveState"] == "inactive" and shown["Result"] == "success", shown
        assert shown["ExecMainStatus"] == "0", shown
        assert any(e["MESSAGE"].startswith("stopping") for e in box.journal("-u", "kesd", f"_PID={pid}"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- diagnostics ---\n{box.diagnostics()}") from None
    finally:
        box.run("systemctl", "stop", "kesd.service", "kesd.socket", check=False)


def test_service_without_socket_and_startup_failure(container: tuple[Container, dict[str, Identity]]) -> None:
    """systemctl start kesd.service alone: kesd binds its address; an invalid config fails the
    start with the error in StatusText and StatusErrno, exit status 2 and no restart loop."""
    box, ids = container
    box.run("systemctl", "stop", "kesd.socket", "kesd.service", check=False)
    box.write_config(base_config(ids, address="127.0.0.1:7373"))
    try:
        box.run("systemctl", "start", "kesd.service")  # returns after READY=1 (Type=notify)
        shown = box.show("kesd.service", "ActiveState", "StatusText")
        assert shown["ActiveState"] == "active" and shown["StatusText"] == "ready on 127.0.0.1:7373", shown
        assert box.request("admin", "GET", "/v1/status")[0] == 200
        box.run("systemctl", "stop", "kesd.service")

        # An invalid config exits 2, which the unit does not restart (RestartPreventExitStatus=2).
        box.write_config({**base_config(ids), "tls": {**base_config(ids)["tls"], "auth": "maybe"}})
        failed = box.run("systemctl", "start", "kesd.service", check=False)
        assert failed.returncode != 0
        shown = box.show(
            "kesd.service", "ActiveState", "StatusText", "StatusErrno", "ExecMainStatus", "NRestarts"
        )
        assert shown["ActiveState"] == "failed", shown
        assert shown["StatusText"].startswith("start-up failed:") and "tls.auth" in shown["StatusText"], shown
        assert shown["StatusErrno"] == "22", shown  # EINVAL
        assert shown["ExecMainStatus"] == "2" and shown["NRestarts"] == "0", shown
        print("failed start:", shown)
        box.run("systemctl", "reset-failed", "kesd.service")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- diagnostics ---\n{box.diagnostics()}") from None
    finally:
        box.run("systemctl", "stop", "kesd.service", check=False)


def test_watchdog_keeps_the_service_alive(container: tuple[Container, dict[str, Identity]]) -> None:
    """With WatchdogSec=1s (a drop-in) kesd pings often enough: still the same process after 4 s."""
    box, ids = container
    box.write_config(base_config(ids, address="127.0.0.1:7373"))
    box.sh(
        "mkdir -p /run/systemd/system/kesd.service.d && "
        "printf '[Service]\\nWatchdogSec=1s\\n' > /run/systemd/system/kesd.service.d/watchdog.conf && "
        "systemctl daemon-reload"
    )
    try:
        box.run("systemctl", "start", "kesd.service")
        first = box.show("kesd.service", "MainPID", "WatchdogTimestampMonotonic", "WatchdogUSec")
        assert first["WatchdogUSec"] == "1s", first
        time.sleep(4)
        later = box.show("kesd.service", "MainPID", "ActiveState", "NRestarts", "WatchdogTimestampMonotonic")
        assert later["ActiveState"] == "active" and later["NRestarts"] == "0", later
        assert later["MainPID"] == first["MainPID"]
        assert int(later["WatchdogTimestampMonotonic"]) > int(first["WatchdogTimestampMonotonic"]), (
            first,
            later,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- diagnostics ---\n{box.diagnostics()}") from None
    finally:
        box.run("systemctl", "stop", "kesd.service", check=False)
        box.sh("rm -rf /run/systemd/system/kesd.service.d && systemctl daemon-reload")


def test_security_score_of_the_running_unit(container: tuple[Container, dict[str, Identity]]) -> None:
    """`systemd-analyze security kesd.service` inside the booted system agrees with the offline score."""
    box, _ids = container
    out = box.run("systemd-analyze", "security", "--no-pager", "kesd.service").stdout
    line = next(line for line in out.splitlines() if "Overall exposure level" in line)
    score = float(line.split(":")[1].split()[0])
    print(f"systemd-analyze security kesd.service (booted container): {score}")
    assert score <= 2.0
