"""kesd's records in a real systemd-journald, read back with journalctl.

journald runs standalone in a private mount namespace (``unshare -m`` with a tmpfs on /run), so its
sockets are the canonical /run/systemd/journal/socket without touching the host's; kesd and
journalctl enter that namespace with nsenter.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import base_config
from tests.integration.harness import Identity, call
from tests.integration.test_systemd import Kesd, NotifySocket, has, running

JOURNALD = "/lib/systemd/systemd-journald"
ROOT = str(Path(__file__).resolve().parents[2])


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace for journald)"
    for tool in ("unshare", "nsenter", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    if not os.access(JOURNALD, os.X_OK):
        return f"{JOURNALD} missing (apt systemd)"
    return None


pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=str(_unavailable()))

SETUP = """
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
exec {journald}
"""


class Journal:
    """A standalone journald in its own mount namespace."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", SETUP.format(journald=JOURNALD)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        socket_path = Path(f"/proc/{self.proc.pid}/root/run/systemd/journal/socket")
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"journald did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            time.sleep(0.05)

    def enter(self) -> tuple[str, ...]:
        """A command prefix that runs a program inside journald's mount namespace."""
        return ("nsenter", "-t", str(self.proc.pid), "-m", "--")

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        """Every entry matching ``matches`` (journalctl FIELD=value terms), as JSON objects."""
        out = subprocess.run(
            [*self.enter(), "journalctl", "--no-pager", "-o", "json", "--all", *matches],
            capture_output=True,
            text=True,
            check=False,
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wait_for(self, *matches: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll journalctl until ``count`` entries match."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(*matches)
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, (matches, found)
                return found
            time.sleep(0.1)

    def export(self) -> bytes:
        """The whole journal in export format (every field of every entry)."""
        return subprocess.run(
            [*self.enter(), "journalctl", "--no-pager", "-o", "export"], capture_output=True, check=True
        ).stdout

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def journal() -> Iterator[Journal]:
    j = Journal()
    yield j
    j.close()


def test_records_and_audit_events_in_the_journal(
    tmp_path: Path,
    journal: Journal,
    notify: NotifySocket,
    server_id: Identity,
    admin: Identity,
    app_client: Identity,
) -> None:
    """--log-target journal: PRIORITY, SYSLOG_IDENTIFIER, CODE_* on kesd's records; audit events as
    kesd-audit with KESD_* fields, findable by KESD_STATUS=403; no key material anywhere."""
    config = {
        **base_config(server_id, admin.identity, tmp_path / "keys"),
        "keys": [{"name": "k1"}],
        "policy": {"app": {"allow": ["/v1/key/generate/k1"], "identities": [app_client.identity]}},
        "log": {"audit": "on"},
    }
    kesd = Kesd(tmp_path, config, notify=notify, prefix=journal.enter(), args=("--log-target", "journal"))
    with running(kesd):
        pid = str(kesd.pid)
        reply = call(kesd, "POST", "/v1/key/generate/k1", "{}", identity=app_client)
        assert reply.status == 200
        plaintext = reply.json()["plaintext"]
        assert call(kesd, "POST", "/v1/key/generate/k2", "{}", identity=app_client).status == 403
        kesd.kill(signal.SIGTERM)
        notify.wait(has("STOPPING", "1"))
        assert kesd.wait() == 0

    serving = journal.wait_for("SYSLOG_IDENTIFIER=kesd", f"_PID={pid}", "PRIORITY=6")
    started = next(e for e in serving if e["MESSAGE"].startswith("kesd is serving on"))
    assert started["CODE_FILE"].endswith("kesd/daemon.py")
    assert started["CODE_LINE"].isdigit() and started["CODE_FUNC"] == "_ready"
    assert started["LOGGER"] == "kesd"

    denied = journal.wait_for("KESD_STATUS=403", f"_PID={pid}")
    assert len(denied) == 1, denied
    event = denied[0]
    print("audit entry:", {k: v for k, v in event.items() if not k.startswith("__")})
    assert event["SYSLOG_IDENTIFIER"] == "kesd-audit"
    assert event["KESD_IDENTITY"] == app_client.identity
    assert event["KESD_PATH"] == "/v1/key/generate/k2"
    assert event["KESD_DURATION_US"].isdigit()
    assert event["KESD_IP"] == "127.0.0.1"
    ok = journal.wait_for("KESD_STATUS=200", "SYSLOG_IDENTIFIER=kesd-audit", f"_PID={pid}")
    assert ok[0]["KESD_PATH"] == "/v1/key/generate/k1"

    everything = journal.export()
    assert plaintext.encode() not in everything
    assert base64.b64decode(plaintext).hex().encode() not in everything
    key_file = (tmp_path / "keys" / "k1").read_bytes()
    assert key_file not in everything


def test_auto_target_follows_journal_stream(
    tmp_path: Path, journal: Journal, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """No --log-target: journald when $JOURNAL_STREAM names stderr's device:inode, else stderr."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    log_file = tmp_path / "kesd.log"
    log_file.touch()
    st = log_file.stat()
    kesd = Kesd(
        tmp_path,
        config,
        notify=notify,
        prefix=journal.enter(),
        env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
    )
    with running(kesd):
        pid = str(kesd.pid)
    journal.wait_for("SYSLOG_IDENTIFIER=kesd", f"_PID={pid}")
    assert "serving on" not in kesd.log

    other = Kesd(tmp_path, config, notify=notify, prefix=journal.enter(), env={"JOURNAL_STREAM": "1:1"})
    with running(other):
        pid = str(other.pid)
    assert "kesd is serving on" in other.log
    assert journal.entries("SYSLOG_IDENTIFIER=kesd", f"_PID={pid}") == []


def test_startup_failure_is_logged_as_an_error(
    tmp_path: Path, journal: Journal, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = {
            **base_config(server_id, admin.identity, tmp_path / "keys"),
            "address": f"127.0.0.1:{taken.getsockname()[1]}",
        }
        kesd = Kesd(tmp_path, config, notify=notify, prefix=journal.enter(), args=("--log-target", "journal"))
        assert kesd.start().wait() == 1
    failed = journal.wait_for("SYSLOG_IDENTIFIER=kesd", f"_PID={kesd.pid}", "PRIORITY=3")
    assert "start-up failed" in failed[0]["MESSAGE"] and "cannot listen" in failed[0]["MESSAGE"]


def test_handler_multiline_and_oversized_records(journal: Journal, tmp_path: Path) -> None:
    """Values with newlines use the binary framing; a record too big for a datagram goes in a memfd."""
    script = (
        "import logging\n"
        "from kesd.systemd import JournalHandler\n"
        "log = logging.getLogger('kesd.audit')\n"
        "log.addHandler(JournalHandler()); log.setLevel(logging.INFO); log.propagate = False\n"
        "log.info('first line\\nsecond line', extra={'kesd_status': 418, 'kesd_path': '/v1/teapot'})\n"
        "log.warning('x' * 400000, extra={'kesd_status': 419})\n"
    )
    subprocess.run(
        [*journal.enter(), sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
        timeout=60,
    )
    multi = journal.wait_for("KESD_STATUS=418")[0]
    assert multi["MESSAGE"] == "first line\nsecond line"
    assert multi["SYSLOG_IDENTIFIER"] == "kesd-audit" and multi["KESD_PATH"] == "/v1/teapot"
    assert multi["PRIORITY"] == "6"
    big = journal.wait_for("KESD_STATUS=419")[0]
    assert big["MESSAGE"] == "x" * 400000
    assert big["PRIORITY"] == "4"
