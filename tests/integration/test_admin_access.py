"""Who may use the admin socket, and whose socket it is: other users, the service user, a second kesd,
stale and foreign files at the path, `kesd --admin-socket`, and what stopping does to the socket.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import Identity, Server, kes_command, make_identity
from tests.integration.test_admin import (
    SYSTEM_PYTHON,
    TOP,
    Follower,
    User,
    admin_config,
    as_json,
    can_make_users,
    drain,
    kesctl,
    kesctl_command,
    public_dir,
    system_user,
    wait_for_output,
)

NO_USERS = can_make_users()
needs_users = pytest.mark.skipif(NO_USERS is not None, reason=NO_USERS or "")


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    if NO_USERS is not None:
        pytest.skip(NO_USERS)
    with system_user() as made:
        yield made


# Every operation an intruder might try (the stream too).
INTRUSIONS = [
    ("status",),
    ("reload",),
    ("config", "check", "/etc/passwd"),
    ("key", "ls"),
    ("key", "info", "held-key"),
    ("key", "create", "intruder"),
    ("key", "rm", "held-key"),
    ("policy", "ls"),
    ("policy", "show", "my-app"),
    ("identity", "ls"),
    ("identity", "show", "a" * 64),
    ("log", "audit", "--follow"),
    ("log", "error", "--follow"),
    ("cache", "purge"),
    ("log-level", "DEBUG"),
    ("metrics",),
]


@needs_users
def test_other_user_is_refused_even_with_open_file_modes(
    user: User, workdir: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    with public_dir() as top:
        sock = top / "run" / "admin.sock"
        config = admin_config(server_id, admin, app_client, workdir / "keys-access", sock)
        with Server(workdir, config) as srv:
            drain(srv)
            assert kesctl(sock, "key", "create", "held-key").returncode == 0

            # With the 0700 directory the kernel already keeps the user out.
            blocked = kesctl(sock, "status", user=user)
            assert blocked.returncode == 3
            assert "permission denied" in blocked.stderr and "are you root?" in blocked.stderr

            # Loosened modes let the user connect: SO_PEERCRED still refuses every operation.
            sock.parent.chmod(0o755)
            sock.chmod(0o666)
            audit = Follower(sock, "audit")
            try:
                for args in INTRUSIONS:
                    refused = kesctl(sock, *args, user=user)
                    assert refused.returncode == 3, (args, refused.stdout, refused.stderr)
                    assert (
                        f"permission denied: the kesd admin socket serves only root; you are uid {user.uid}"
                        in refused.stderr
                    ), args
                    assert refused.stdout == ""
                event = audit.until(lambda e: e["request"]["path"] == "admin:key.create/intruder")
                assert event["request"]["uid"] == user.uid and event["response"]["code"] == 403
                assert event["request"]["identity"] == f"unix:uid={user.uid}"
            finally:
                audit.stop()

            # Nothing happened, and the refusals are in the audit log with the uid.
            keys = as_json(kesctl(sock, "key", "ls", "--json"))["keys"]
            assert "held-key" in keys and "intruder" not in keys
            output = wait_for_output(srv, '"path":"admin:log.level/DEBUG"')
            refusals = [line for line in output.splitlines() if f'"uid":{user.uid}' in line]
            assert len(refusals) >= len(INTRUSIONS)
            assert all('"code":403' in line for line in refusals)
            assert srv.proc.poll() is None


@needs_users
def test_the_service_user_is_served(user: User) -> None:
    """kesd running as a service user answers that user (and root), and refuses everyone else."""
    with public_dir() as top, system_user() as other:
        server_id = make_identity(top, "server", kind="ecdsa", san=("127.0.0.1",))
        admin = make_identity(top, "admin")
        app = make_identity(top, "app")
        sock = top / "run" / "admin.sock"
        srv = Server(
            top, admin_config(server_id, admin, app, top / "keys", sock), env={"PYTHONPATH": str(TOP)}
        )
        srv.command = [
            *user.prefix(),
            SYSTEM_PYTHON,
            "-m",
            "kesd",
            "server",
            "--config",
            str(srv.config_path),
        ]
        for path in top.iterdir():
            os.chown(path, user.uid, user.gid)
        os.chown(top, user.uid, user.gid)
        with srv:
            drain(srv)
            st = os.lstat(sock)
            assert st.st_uid == user.uid and stat.S_IMODE(st.st_mode) == 0o600
            mine = kesctl(sock, "status", "--json", user=user)
            assert mine.returncode == 0, mine.stderr
            assert as_json(mine)["pid"] == srv.proc.pid
            assert kesctl(sock, "key", "create", "service-key", user=user).returncode == 0
            assert "service-key" in as_json(kesctl(sock, "key", "ls", "--json"))["keys"]  # root

            sock.parent.chmod(0o755)
            sock.chmod(0o666)
            refused = kesctl(sock, "key", "ls", user=other)
            assert refused.returncode == 3
            assert (
                f"serves only root and kesd's own user {user.name} (uid {user.uid}); you are uid {other.uid}"
                in refused.stderr
            )


def test_a_second_kesd_on_the_same_socket_fails_clearly(
    tmp_path: Path, workdir: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    sock = tmp_path / "run" / "admin.sock"
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    config = admin_config(server_id, admin, app_client, tmp_path / "keys", sock)
    with Server(first_dir, config) as first:
        drain(first)
        (second_dir / "config.yml").write_text(yaml.safe_dump(config))
        second = subprocess.run(
            kes_command("server", "--config", str(second_dir / "config.yml")),
            cwd=second_dir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        assert f"Error: admin socket: another kesd is serving {sock}" in second.stderr
        # The first one still owns and serves its socket.
        assert as_json(kesctl(sock, "status", "--json"))["pid"] == first.proc.pid
    assert not sock.exists()  # removed when the first one stopped


def test_a_stale_socket_file_is_replaced(
    tmp_path: Path, workdir: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    sock = tmp_path / "run" / "admin.sock"
    sock.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))  # a socket file whose server is gone, as after a crash
    stale_inode = os.lstat(sock).st_ino
    config = admin_config(server_id, admin, app_client, tmp_path / "keys", sock)
    with Server(tmp_path, config) as srv:
        drain(srv)
        assert os.lstat(sock).st_ino != stale_inode
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        assert as_json(kesctl(sock, "status", "--json"))["pid"] == srv.proc.pid


def test_a_file_that_is_not_a_socket_is_left_alone(
    tmp_path: Path, workdir: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    sock = tmp_path / "run" / "admin.sock"
    sock.parent.mkdir(mode=0o700)
    sock.write_text("precious")
    (tmp_path / "config.yml").write_text(
        yaml.safe_dump(admin_config(server_id, admin, app_client, tmp_path / "keys", sock))
    )
    proc = subprocess.run(
        kes_command("server", "--config", str(tmp_path / "config.yml")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert f"admin socket: '{sock}' exists and is not a socket" in proc.stderr
    assert sock.read_text() == "precious"


def test_admin_socket_flag_overrides_the_config(
    tmp_path: Path, workdir: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    flag_sock = tmp_path / "flag" / "admin.sock"
    config = admin_config(server_id, admin, app_client, tmp_path / "keys", tmp_path / "cfg" / "admin.sock")
    with Server(tmp_path, config, args=("--admin-socket", str(flag_sock))) as srv:
        drain(srv)
        assert as_json(kesctl(flag_sock, "status", "--json"))["addresses"]["admin"] == str(flag_sock)
        assert not (tmp_path / "cfg" / "admin.sock").exists()


def test_no_admin_socket_unless_asked(tmp_path: Path, server_id: Identity, admin: Identity) -> None:
    from tests.integration.conftest import base_config

    with Server(tmp_path, base_config(server_id, admin.identity, tmp_path / "keys")) as srv:
        assert srv.proc.poll() is None
        assert not any(p.name.endswith(".sock") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_kesd_serves_the_admin_socket_and_removes_it_on_stop(
    loop: str, tmp_path: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    """`kesd --admin-socket`, on both event loops; SIGTERM ends streams and removes the socket file."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    sock = tmp_path / "run" / "admin.sock"
    config_path = tmp_path / "config.yml"
    config = admin_config(server_id, admin, app_client, tmp_path / "keys", tmp_path / "unused.sock")
    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kesd.cli.kesd",
            "--config",
            str(config_path),
            "--admin-socket",
            str(sock),
            "--log-target",
            "stderr",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "KESD_LOOP": loop},
    )
    try:
        deadline = time.monotonic() + 30
        status = kesctl(sock, "status", "--json")
        while status.returncode != 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            status = kesctl(sock, "status", "--json")
        assert as_json(status)["pid"] == proc.pid

        follower = subprocess.Popen(
            kesctl_command(sock, "log", "audit", "--follow"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert follower.stderr is not None
        assert follower.stderr.readline().startswith(b"Following")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert follower.wait(30) == 1
        assert b"kesd ended the stream" in follower.stderr.read()
        follower.stdout.close()  # type: ignore[union-attr]
        follower.stderr.close()
        assert not sock.exists()
        assert (sock.parent / "admin.sock.lock").exists()  # kept on purpose: see kesd/admin/server.py
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_socket_passed_by_systemd_is_used(
    tmp_path: Path, server_id: Identity, admin: Identity, app_client: Identity
) -> None:
    """``FileDescriptorName=admin``: kesd serves the passed socket and leaves its file to systemd."""
    sock = tmp_path / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(sock))
    listening.listen(16)
    config_path = tmp_path / "config.yml"
    config = admin_config(server_id, admin, app_client, tmp_path / "keys", tmp_path / "configured.sock")
    config_path.write_text(yaml.safe_dump(config))
    fd = listening.fileno()
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            'LISTEN_PID=$$ exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "kesd.cli.kesd",
            "--config",
            str(config_path),
            "--log-target",
            "stderr",
        ],
        pass_fds=(fd, 3),
        preexec_fn=lambda: os.dup2(fd, 3),  # noqa: PLW1509 - the activation protocol wants fd 3
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "admin"},
    )
    listening.close()
    try:
        deadline = time.monotonic() + 30
        status = kesctl(sock, "status", "--json")
        while status.returncode != 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            status = kesctl(sock, "status", "--json")
        info = as_json(status)
        assert info["pid"] == proc.pid and info["addresses"]["admin"] == str(sock)
        assert not (tmp_path / "configured.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert sock.exists()  # systemd's file: kesd does not remove it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
