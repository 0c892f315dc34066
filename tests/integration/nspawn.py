"""A booted systemd-nspawn container for end-to-end tests of the units and the packages."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

BOOT_TIMEOUT = 120.0
CLEAN_ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "SYSTEMD_PAGER=")


class BootedContainer:
    """``systemd-nspawn --boot`` on ``root`` (private network, CAP_IPC_LOCK) and commands run inside it."""

    def __init__(self, root: Path, log: Path, extra: list[str], machine: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    f"--directory={root}",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--capability=CAP_IPC_LOCK",
                    "--console=passive",
                    f"--machine={machine}",
                    *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.leader = self._find_leader()

    def _find_leader(self) -> int:
        """The container's PID 1 once it has exec'd systemd (only then are its namespaces final)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if (
                    fields.get("PPid") == str(self.proc.pid)
                    and fields.get("NSpid", "").split()[-1:] == ["1"]
                    and fields.get("Name") == "systemd"
                ):
                    return int(entry.name)
            time.sleep(0.1)
        self.close()
        raise RuntimeError("no container init found:\n" + self.log.read_text(errors="replace")[-3000:])

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, env: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as root inside the container, with a clean environment."""
        command = ["nsenter", f"--target={self.leader}", "--all", "env", "-i", *CLEAN_ENV, *env, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check)

    def wait_booted(self) -> str:
        """Wait until systemd in the container has finished booting; returns its state."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            result = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        return state

    def diagnostics(self) -> str:
        status = self.run(
            "systemctl", "status", "--no-pager", "--full", "kesd.service", "kesd.socket", check=False
        )
        journal = self.run("journalctl", "--no-pager", "-u", "kesd", "-n", "60", check=False)
        return status.stdout + status.stderr + journal.stdout

    def close(self) -> None:
        """Power the container off; kill its PID 1 if nspawn does not manage to."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                # Killing the container's PID 1 ends its whole PID namespace.
                with contextlib.suppress(ProcessLookupError, AttributeError):
                    os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
