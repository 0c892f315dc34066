"""`kesd` under a service manager, driven through the real protocols: a NOTIFY_SOCKET datagram socket
bound here, systemd-socket-activate, signals; plus mlock, hardening and --check-config.

The helpers at the top (NotifySocket, Kesd) are shared with the other test_systemd_*.py files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import base_config
from tests.integration.harness import Identity, call, client_context, make_identity

KESD = (sys.executable, "-m", "kesd.cli.kesd")


class NotifySocket:
    """A service manager's end of ``$NOTIFY_SOCKET``: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind("\0" + abstract)
            self.env_value = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.messages: list[dict[str, str]] = []
        self._seen = 0

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        return True

    def wait(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 30.0) -> dict[str, str]:
        """The next message (after those already returned) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.messages):
                message = self.messages[self._seen]
                self._seen += 1
                if predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching notification in {timeout}s; got {self.messages}")
            self._receive(remaining)

    def drain(self, seconds: float) -> list[dict[str, str]]:
        """Every message that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._receive(remaining)
        return self.messages

    def close(self) -> None:
        self.sock.close()


def has(name: str, value: str | None = None) -> Callable[[dict[str, str]], bool]:
    """A notification predicate: field ``name`` is present (and equals ``value``)."""
    return lambda m: name in m and (value is None or m[name] == value)


class Kesd:
    """A `kesd` subprocess; its output goes to ``kesd.log`` in the work directory."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | str,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        notify: NotifySocket | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yml"
        self.write_config(config)
        self.notify = notify
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_", "WATCHDOG_"))
        }
        self.env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        if notify is not None:
            self.env["NOTIFY_SOCKET"] = notify.env_value
        self.env.update(env or {})
        self.command = [*prefix, *KESD, "--config", str(self.config_path), *args]
        self.log_path = workdir / "kesd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def write_config(self, config: dict[str, Any] | str) -> None:
        if isinstance(config, dict) and "socket" not in config.get("admin", {}):
            # Each test's own admin socket, not the system-wide /run/kesd/admin.sock.
            config = {
                **config,
                "admin": {**config.get("admin", {}), "socket": str(self.workdir / "admin.sock")},
            }
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)

    def start(self) -> Kesd:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        """Wait for READY=1 and learn the port from its ``STATUS=ready on ADDR``."""
        assert self.notify is not None
        try:
            ready = self.notify.wait(has("READY", "1"), timeout)
        except AssertionError:
            raise AssertionError(f"kesd not ready: {self.log}") from None
        match = re.search(r"ready on (\S+)", ready.get("STATUS", ""))
        assert match, ready
        self.port = int(match.group(1).rpartition(":")[2])
        return ready

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@contextlib.contextmanager
def running(kesd: Kesd) -> Iterator[Kesd]:
    kesd.start()
    try:
        kesd.wait_ready()
        yield kesd
    finally:
        kesd.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_certificate(port: int, identity: Identity) -> bytes:
    """The DER certificate the server presents on a new connection."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(identity).wrap_socket(raw) as tls:
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def der(identity: Identity) -> bytes:
    return ssl.PEM_cert_to_DER_cert(identity.cert.read_text())


# --- readiness, status, stop ---------------------------------------------------------------------


def test_ready_status_and_stop(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """READY=1 once serving (with the address), STATUS with keys and req/s, STOPPING=1 and exit 0."""
    config = {
        **base_config(server_id, admin.identity, tmp_path / "keys"),
        "keys": [{"name": "k1"}, {"name": "k2"}],
    }
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        # READY came after the socket listened: a request right away succeeds.
        assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
        for _ in range(5):
            assert call(kesd, "POST", "/v1/key/generate/k1", "{}", identity=admin).status == 200
        status = notify.wait(lambda m: m.get("STATUS", "").startswith("serving 2 keys, "), timeout=20)
        assert re.fullmatch(r"serving 2 keys, \d+ req/s", status["STATUS"]), status
        kesd.kill(signal.SIGTERM)
        stopping = notify.wait(has("STOPPING", "1"))
        assert "stopping" in stopping.get("STATUS", "")
        assert kesd.wait() == 0
    print("notifications:", notify.messages)


def test_abstract_notify_socket(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    """``NOTIFY_SOCKET=@name`` (an abstract socket, as systemd uses in containers) works too."""
    sock = NotifySocket(abstract=f"kesd-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        kesd = Kesd(tmp_path, base_config(server_id, admin.identity, tmp_path / "keys"), notify=sock)
        with running(kesd):
            assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
    finally:
        sock.close()


def test_no_notify_socket_is_silent(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    """Without NOTIFY_SOCKET kesd runs normally and says where it serves on stderr."""
    kesd = Kesd(tmp_path, base_config(server_id, admin.identity, tmp_path / "keys"))
    kesd.start()
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"serving on \S+:(\d+)", kesd.log)) and time.monotonic() < deadline:
            assert kesd.proc is not None and kesd.proc.poll() is None, kesd.log
            time.sleep(0.05)
        assert m, kesd.log
        kesd.port = int(m.group(1))
        assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
        assert kesd.stop() == 0
    finally:
        kesd.stop()


def test_sigterm_finishes_requests_in_flight(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """A request whose headers are still arriving when SIGTERM comes is answered, then kesd exits 0."""
    config = {**base_config(server_id, admin.identity, tmp_path / "keys"), "keys": [{"name": "k1"}]}
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        raw = socket.create_connection(("127.0.0.1", kesd.port), timeout=15)
        with client_context(admin).wrap_socket(raw) as tls:
            tls.sendall(b"POST /v1/key/generate/k1 HTTP/1.1\r\nHost: kesd\r\n")
            time.sleep(0.2)  # let the server parse the first half
            kesd.kill(signal.SIGTERM)
            notify.wait(has("STOPPING", "1"))
            # New connections are refused once stopping.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", kesd.port), timeout=1).close()
                except OSError:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("kesd kept accepting connections after SIGTERM")
            tls.sendall(b"Content-Length: 2\r\n\r\n{}")
            reply = tls.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert kesd.wait() == 0


def test_sigint_stops_too(tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity) -> None:
    kesd = Kesd(tmp_path, base_config(server_id, admin.identity, tmp_path / "keys"), notify=notify)
    with running(kesd):
        kesd.kill(signal.SIGINT)
        notify.wait(has("STOPPING", "1"))
        assert kesd.wait() == 0


# --- watchdog ------------------------------------------------------------------------------------


def test_watchdog_pings_at_half_the_timeout(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """WATCHDOG_USEC=0.6 s: WATCHDOG=1 about every 0.3 s; none while the process is frozen."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    kesd = Kesd(tmp_path, config, notify=notify, env={"WATCHDOG_USEC": "600000"})
    with running(kesd):
        start = len(notify.messages)
        notify.drain(1.6)
        pings = [m for m in notify.messages[start:] if m.get("WATCHDOG") == "1"]
        assert 3 <= len(pings) <= 8, notify.messages
        kesd.kill(signal.SIGSTOP)  # an unresponsive process sends nothing
        try:
            time.sleep(0.1)
            frozen = len(notify.messages)
            notify.drain(1.0)
            assert not [m for m in notify.messages[frozen:] if "WATCHDOG" in m]
        finally:
            kesd.kill(signal.SIGCONT)


def test_watchdog_pings_come_from_the_event_loop(tmp_path: Path) -> None:
    """A loop blocked for 1 s (the rest of the process running) sends no pings meanwhile: the pings
    are loop callbacks, not a thread's."""
    import asyncio
    import itertools
    import threading

    from kesd import daemon, systemd

    sock = NotifySocket(tmp_path / "wd.sock")
    arrivals: list[float] = []
    done = threading.Event()

    def receive() -> None:
        sock.sock.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                if sock.sock.recv(4096) == b"WATCHDOG=1\n":
                    arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive)
    receiver.start()
    runtime = daemon.Runtime.__new__(daemon.Runtime)  # only the watchdog part is exercised
    runtime.notifier = systemd.Notifier(sock.env_value)
    runtime._timers = {}
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(runtime._watchdog_tick, 0.05)
        loop.call_later(0.5, time.sleep, 1.0)  # the loop is stuck from 0.5 s to 1.5 s
        loop.run_until_complete(asyncio.sleep(2.0))
    finally:
        for timer in runtime._timers.values():
            timer.cancel()
        loop.close()
        done.set()
        receiver.join()
        sock.close()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 10, arrivals
    assert max(gaps) >= 0.9, gaps
    assert sorted(gaps)[-2] < 0.5, gaps  # only the one gap of the blocked second


def test_watchdog_for_another_pid_is_ignored(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    kesd = Kesd(tmp_path, config, notify=notify, env=env)
    with running(kesd):
        notify.drain(0.8)
        assert not [m for m in notify.messages if "WATCHDOG" in m]


# --- start-up failures ---------------------------------------------------------------------------


def test_startup_failure_reports_status_and_errno(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """Port in use: exit 1, STATUS= names the problem, ERRNO=EADDRINUSE; a bad config: exit 2, EINVAL."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {**base_config(server_id, admin.identity, tmp_path / "keys"), "address": f"127.0.0.1:{port}"}
        kesd = Kesd(tmp_path, config, notify=notify).start()
        assert kesd.wait() == 1
    failed = notify.wait(has("ERRNO"))
    assert failed["ERRNO"] == str(98), failed
    assert "cannot listen" in failed["STATUS"] and str(port) in failed["STATUS"], failed
    assert "READY" not in failed
    assert not [m for m in notify.messages if "READY" in m]

    bad = Kesd(tmp_path, {**config, "tls": {**config["tls"], "auth": "maybe"}}, notify=notify).start()
    assert bad.wait() == 2
    failed = notify.wait(has("ERRNO"))
    assert failed["ERRNO"] == "22"
    assert "config.yml" in failed["STATUS"] and "tls.auth" in failed["STATUS"], failed


# --- reload --------------------------------------------------------------------------------------


def test_reload_swaps_policies_and_reports(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; the new policy applies at once."""
    config = {**base_config(server_id, admin.identity, tmp_path / "keys"), "keys": [{"name": "k1"}]}
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        assert call(kesd, "POST", "/v1/key/generate/k1", "{}", identity=app_client).status == 403
        config["policy"] = {"app": {"allow": ["/v1/key/generate/k1"], "identities": [app_client.identity]}}
        kesd.write_config(config)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        kesd.kill(signal.SIGHUP)
        reloading = notify.wait(has("RELOADING", "1"))
        assert int(reloading["MONOTONIC_USEC"]) >= before
        ready = notify.wait(has("READY", "1"))
        assert "failed" not in ready.get("STATUS", ""), ready
        assert call(kesd, "POST", "/v1/key/generate/k1", "{}", identity=app_client).status == 200
        assert "configuration reloaded" in kesd.log


def test_bad_reload_keeps_the_old_config(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    """A broken new config: the old one keeps serving; the reason is in the log and in STATUS=."""
    config = {
        **base_config(server_id, admin.identity, tmp_path / "keys"),
        "keys": [{"name": "k1"}],
        "policy": {"app": {"allow": ["/v1/key/generate/k1"], "identities": [app_client.identity]}},
    }
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        kesd.write_config({**config, "tls": {**config["tls"], "cert": str(tmp_path / "missing.crt")}})
        kesd.kill(signal.SIGHUP)
        notify.wait(has("RELOADING", "1"))
        ready = notify.wait(has("READY", "1"))
        assert ready["STATUS"].startswith("reload failed"), ready
        assert "tls.cert" in ready["STATUS"] and "missing.crt" in ready["STATUS"], ready
        assert "reload failed" in kesd.log and "missing.crt" in kesd.log
        assert call(kesd, "POST", "/v1/key/generate/k1", "{}", identity=app_client).status == 200
        # Broken YAML as well.
        kesd.write_config("address: [unclosed\n")
        kesd.kill(signal.SIGHUP)
        ready = notify.wait(has("READY", "1"))
        assert ready["STATUS"].startswith("reload failed") and "config.yml" in ready["STATUS"], ready
        assert call(kesd, "POST", "/v1/key/generate/k1", "{}", identity=app_client).status == 200
        # A fixed config is picked up by the next reload.
        kesd.write_config(config)
        kesd.kill(signal.SIGHUP)
        ready = notify.wait(has("READY", "1"))
        assert not ready["STATUS"].startswith("reload failed"), ready


def test_reload_switches_new_connections_to_the_new_certificate(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """After a reload with another certificate, new connections get it; open ones keep working."""
    second = make_identity(tmp_path, "server2", kind="ed25519", san=("127.0.0.1",))
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        assert peer_certificate(kesd.port, admin) == der(server_id)
        import http.client

        kept = http.client.HTTPSConnection("127.0.0.1", kesd.port, context=client_context(admin), timeout=10)
        kept.request("GET", "/v1/status")
        assert kept.getresponse().read() and True
        kesd.write_config({**config, "tls": {"key": str(second.key), "cert": str(second.cert)}})
        kesd.kill(signal.SIGHUP)
        ready = notify.wait(has("READY", "1"))
        assert "failed" not in ready.get("STATUS", ""), ready
        assert peer_certificate(kesd.port, admin) == der(second)
        assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
        kept.request("GET", "/v1/status")
        response = kept.getresponse()
        assert response.status == 200
        response.read()
        kept.close()


# --- socket activation ---------------------------------------------------------------------------

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (apt systemd) missing")


def connect_retry(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts on ``port`` (systemd-socket-activate binds it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@needs_activate
def test_socket_activation_by_name(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """systemd-socket-activate passes two sockets, admin (a Unix socket) and tls, listed first: kesd
    serves the API on "tls" and ignores its config's address (which would fail to bind)."""
    tls_port = free_port()
    config = {**base_config(server_id, admin.identity, tmp_path / "keys"), "address": "203.0.113.1:1"}
    prefix = (
        str(ACTIVATE),
        f"--listen={tmp_path / 'admin.sock'}",
        f"--listen=127.0.0.1:{tls_port}",
        "--fdname=admin:tls",
        "-E",
        "NOTIFY_SOCKET",
        "-E",
        "PYTHONPATH",
    )
    kesd = Kesd(tmp_path, config, notify=notify, prefix=prefix)
    kesd.start()
    try:
        connect_retry(tls_port)  # the first connection makes systemd-socket-activate start kesd
        ready = kesd.wait_ready()
        assert kesd.port == tls_port, ready
        assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
        assert "socket passed by systemd" in kesd.log
    finally:
        assert kesd.stop() == 0


@needs_activate
def test_listen_fds_names_and_environment(tmp_path: Path) -> None:
    """kesd.systemd.listen_fds() maps LISTEN_FDNAMES to sockets, checks LISTEN_PID, unsets the vars."""
    script = (
        "import json, os, socket\n"
        "from kesd import systemd\n"
        "fds = systemd.listen_fds()\n"
        "again = systemd.listen_fds()\n"
        "tls = systemd.take_listener('tls')\n"
        "print(json.dumps({\n"
        "  'names': {n: [s.getsockname()[1] for s in socks] for n, socks in fds.items()},\n"
        "  'same': all(a is b for n in fds for a, b in zip(fds[n], again[n])),\n"
        "  'env': [v for v in ('LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES') if v in os.environ],\n"
        "  'blocking': tls.getblocking(), 'inheritable': tls.get_inheritable(),\n"
        "  'twice': systemd.take_listener('tls') is None}))\n"
    )
    tls_port, admin_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(ACTIVATE),
            f"--listen=127.0.0.1:{tls_port}",
            f"--listen=127.0.0.1:{admin_port}",
            "--fdname=tls:admin",
            "-E",
            "PYTHONPATH",
            sys.executable,
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        connect_retry(admin_port)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    import json

    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["names"] == {"tls": [tls_port], "admin": [admin_port]}, err
    assert result["same"] and result["twice"]
    assert result["env"] == []
    assert result["blocking"] is False and result["inheritable"] is False

    # A LISTEN_PID for another process: nothing is taken.
    other = subprocess.run(
        [sys.executable, "-c", "from kesd import systemd; print(systemd.listen_fds())"],
        env={
            **os.environ,
            "LISTEN_PID": "1",
            "LISTEN_FDS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == "{}"


# --- memory protection ---------------------------------------------------------------------------


def _vm_locked_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmLck:")))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for CAP_IPC_LOCK (the memlock limit is low)")
@pytest.mark.parametrize("how", ["flag", "config"])
def test_mlock_with_capability(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity, how: str
) -> None:
    """`kesd --mlock` and `mlock: true` both lock all memory (VmLck beyond the 8 MiB limit)."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    if how == "config":
        config["mlock"] = True
    kesd = Kesd(tmp_path, config, notify=notify, args=("--mlock",) if how == "flag" else ())
    with running(kesd):
        locked = _vm_locked_kib(kesd.pid)
        print(f"VmLck with --mlock ({how}): {locked} kB")
        assert locked > 8192


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
@pytest.mark.parametrize("how", ["flag", "config"])
def test_mlock_without_capability_fails_clearly(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity, how: str
) -> None:
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    if how == "config":
        config["mlock"] = True
    prefix = ("setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock")
    kesd = Kesd(tmp_path, config, notify=notify, prefix=prefix, args=("--mlock",) if how == "flag" else ())
    assert kesd.start().wait() == 1
    assert "cannot lock memory" in kesd.log and "CAP_IPC_LOCK" in kesd.log, kesd.log
    failed = notify.wait(has("ERRNO"))
    assert failed["ERRNO"] in ("1", "12"), failed  # EPERM or ENOMEM
    assert "CAP_IPC_LOCK" in failed["STATUS"]


NOBODY = 65534
DEBIAN_PYTHON = "/usr/bin/python3"


def _nobody_can_run_kesd() -> str | None:
    """Why kesd cannot run as nobody with Debian's python3 here (None if it can)."""
    if os.geteuid() != 0:
        return "needs root to start a process as nobody"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) missing"
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            DEBIAN_PYTHON,
            "-c",
            "import cryptography, yaml, click, httptools, psutil, kesd.cli.kesd",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        check=False,
    )
    return (
        None
        if probe.returncode == 0
        else f"Debian's python3 cannot run kesd as nobody: {probe.stderr[-200:]!r}"
    )


@pytest.mark.skipif(bool(_nobody_can_run_kesd()), reason=str(_nobody_can_run_kesd()))
def test_no_core_dumps_and_not_ptraceable(server_id: Identity, admin: Identity) -> None:
    """RLIMIT_CORE is 0 and the process is not dumpable: run as nobody, its /proc files belong to
    root and another nobody process cannot read its environment (it can for an ordinary process)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="kesd-harden-"))
    try:
        work.chmod(0o755)
        for name in ("server.key", "server.crt"):
            shutil.copy(server_id.key.parent / name, work / name)
            (work / name).chmod(0o644)
        for private in ("keys", "run"):
            (work / private).mkdir(mode=0o700)
            os.chown(work / private, NOBODY, NOBODY)
        config = {
            **base_config(server_id, admin.identity, work / "keys"),
            "tls": {"key": str(work / "server.key"), "cert": str(work / "server.crt")},
        }
        config["admin"]["socket"] = str(work / "run" / "admin.sock")
        sock = NotifySocket(work / "notify.sock")
        (work / "notify.sock").chmod(0o777)
        as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
        kesd = Kesd(work, config, notify=sock, prefix=as_nobody)
        kesd.command[len(as_nobody)] = DEBIAN_PYTHON
        log = work / "kesd.log"
        log.touch()
        os.chown(log, NOBODY, NOBODY)
        try:
            with running(kesd):
                proc_dir = Path(f"/proc/{kesd.pid}")
                assert proc_dir.stat().st_uid == NOBODY
                assert (proc_dir / "status").stat().st_uid == 0  # not dumpable: /proc files are root's
                limits = (proc_dir / "limits").read_text()
                core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
                assert core.split()[4:6] == ["0", "0"], core
                peer = [*as_nobody, "cat"]
                denied = subprocess.run([*peer, str(proc_dir / "environ")], capture_output=True, check=False)
                assert denied.returncode != 0 and b"Permission denied" in denied.stderr, denied
                with subprocess.Popen([*as_nobody, "sleep", "30"]) as ordinary:
                    try:
                        time.sleep(0.2)
                        allowed = subprocess.run(
                            [*peer, f"/proc/{ordinary.pid}/environ"], capture_output=True, check=False
                        )
                        assert allowed.returncode == 0, allowed
                        assert Path(f"/proc/{ordinary.pid}/status").stat().st_uid == NOBODY
                    finally:
                        ordinary.kill()
        finally:
            sock.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- --check-config ------------------------------------------------------------------------------


def check(tmp_path: Path, config: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return subprocess.run(
        [*KESD, "--check-config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_check_config(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    """Valid: exit 0, nothing created. Invalid YAML, TLS file or keystore: exit 2 with one line."""
    good = base_config(server_id, admin.identity, tmp_path / "keys")
    ok = check(tmp_path, good)
    assert ok.returncode == 0, ok.stderr
    assert "configuration is valid" in ok.stdout
    assert not (tmp_path / "keys").exists()  # validating creates nothing
    (tmp_path / "a-file").write_text("")
    cases = [
        ("address: [\n", "check.yml"),
        ({**good, "tls": {**good["tls"], "cert": str(tmp_path / "nope.crt")}}, "tls.cert"),
        ({**good, "tls": {**good["tls"], "key": str(server_id.cert)}}, "tls.key"),
        ({**good, "keystore": {"fs": {"path": str(tmp_path / "a-file")}}}, "keystore.fs.path"),
        ({**good, "keystore": {"fs": {"path": str(tmp_path / "no" / "such" / "keys")}}}, "keystore.fs.path"),
        ({**good, "keystore": {"aws": {"secretsmanager": {"endpoint": "x", "region": "y"}}}}, "keystore"),
    ]
    for config, needle in cases:
        result = check(tmp_path, config)
        assert result.returncode == 2, (config, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.stderr


# --- kes server ----------------------------------------------------------------------------------


def test_kes_server_reload_keeps_command_line_overrides(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    """`kes server` reloads on SIGHUP too, re-applying its flags: --auth off still lets a
    self-signed client in after the reload, and the new policy applies."""
    from tests.integration.harness import Server

    config = {
        **base_config(server_id, admin.identity, tmp_path / "keys"),
        "tls": {"key": str(server_id.key), "cert": str(server_id.cert), "auth": "on"},
        "keys": [{"name": "k1"}],
    }
    env = {"NOTIFY_SOCKET": notify.env_value, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with Server(tmp_path, config, args=("--auth", "off"), env=env) as srv:
        notify.wait(has("READY", "1"))
        assert call(srv, "POST", "/v1/key/generate/k1", "{}", identity=app_client).status == 403
        config["policy"] = {"app": {"allow": ["/v1/key/generate/k1"], "identities": [app_client.identity]}}
        srv.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        ready = notify.wait(has("READY", "1"))
        assert not ready.get("STATUS", "").startswith("reload failed"), ready
        assert call(srv, "POST", "/v1/key/generate/k1", "{}", identity=app_client).status == 200


def test_reload_turns_client_verification_on(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """tls.auth off → on by reload: new connections with a self-signed certificate are refused."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
        kesd.write_config({**config, "tls": {**config["tls"], "auth": "on"}})
        kesd.kill(signal.SIGHUP)
        ready = notify.wait(has("READY", "1"))
        assert not ready["STATUS"].startswith("reload failed"), ready
        with pytest.raises((ssl.SSLError, ConnectionError)):
            call(kesd, "GET", "/v1/status", identity=admin)


def test_reload_applies_log_settings(
    tmp_path: Path, notify: NotifySocket, server_id: Identity, admin: Identity
) -> None:
    """log.audit switched on by a reload: the next request's audit event is printed."""
    config = base_config(server_id, admin.identity, tmp_path / "keys")
    kesd = Kesd(tmp_path, config, notify=notify)
    with running(kesd):
        assert call(kesd, "GET", "/v1/status", identity=admin).status == 200
        kesd.write_config({**config, "log": {"audit": "on"}})
        kesd.kill(signal.SIGHUP)
        ready = notify.wait(has("READY", "1"))
        assert not ready["STATUS"].startswith("reload failed"), ready
        assert call(kesd, "GET", "/version", identity=admin).status == 200
        deadline = time.monotonic() + 10
        while '"path":"/version"' not in kesd.log and time.monotonic() < deadline:
            time.sleep(0.05)
    assert '"path":"/version"' in kesd.log, kesd.log
    assert '"path":"/v1/status"' not in kesd.log
