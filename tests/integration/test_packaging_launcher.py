"""The packaged launcher (packaging/launcher/kesd-launcher.c), as an unprivileged user meets it.

The launcher is the file that carries ``cap_ipc_lock=+ep`` in the packages. Here it is compiled from
the same source, with its script path pointing at a copy of the packaged entry script (which finds
this checkout's ``kesd``), given the capability with ``setcap``, and run by a throw-away user outside
systemd under Debian's ``/usr/bin/python3``: ``kesd --mlock`` locks memory beyond this machine's 8 MiB
memlock limit with the capability and fails clearly without it, and neither ``PYTHONPATH`` nor
``LD_PRELOAD`` gets the user's own code run. Needs root (useradd, setcap); skips otherwise.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import make_identity

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_C = ROOT / "packaging" / "launcher" / "kesd-launcher.c"
ENTRY = ROOT / "packaging" / "launcher" / "kesd.py"
PYTHON = "/usr/bin/python3"
CAP_IPC_LOCK = 1 << 14
MEMLOCK_LIMIT_KIB = 8192


def _unavailable() -> str | None:
    if os.environ.get("KESD_SKIP_PACKAGING_TESTS") == "1":
        return "KESD_SKIP_PACKAGING_TESTS=1"
    if os.geteuid() != 0:
        return "needs root (useradd, setcap)"
    for tool in ("gcc", "setcap", "setpriv", "useradd", "userdel"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt gcc libcap2-bin util-linux passwd)"
    probe = subprocess.run(
        [PYTHON, "-I", "-c", "import click, cryptography, httptools, psutil, yaml"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"{PYTHON} lacks Debian's python3 libraries (scripts/test installs them)"
    return None


pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=str(_unavailable()))


class Area:
    """A world-readable scratch directory with this checkout's kesd, launchers and a server config."""

    def __init__(self, path: Path, user: pwd.struct_passwd) -> None:
        self.path = path
        self.user = user
        shutil.copytree(ROOT / "kesd", path / "lib" / "kesd", ignore=shutil.ignore_patterns("__pycache__"))
        prologue = f"import sys\n\nsys.path.insert(0, {str(path / 'lib')!r})\n"
        self.entry = self.script("kesd.py", prologue + ENTRY.read_text())

    def script(self, name: str, text: str) -> Path:
        """Write a world-readable file in the area."""
        target = self.path / name
        target.write_text(text)
        target.chmod(0o644)
        return target

    def launcher(self, name: str, script: Path, *, capability: bool) -> Path:
        """Compile the launcher for ``script`` (as the packages do) and optionally ``setcap`` it."""
        binary = self.path / name
        subprocess.run(
            [
                "gcc",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                f'-DKESD_PYTHON="{PYTHON}"',
                f'-DKESD_SCRIPT="{script}"',
                "-o",
                str(binary),
                str(LAUNCHER_C),
            ],
            check=True,
        )
        binary.chmod(0o755)
        if capability:
            subprocess.run(["setcap", "cap_ipc_lock=+ep", str(binary)], check=True)
        return binary

    def as_user(self, *command: str, env: dict[str, str]) -> list[str]:
        """``command`` run as the unprivileged test user (no capabilities, no supplementary groups)
        with exactly ``env``; setpriv itself runs with an empty environment (no LD_PRELOAD as root)."""
        return [
            shutil.which("setpriv") or "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--clear-groups",
            shutil.which("env") or "env",
            "-i",
            *(f"{name}={value}" for name, value in env.items()),
            *command,
        ]


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    name = f"kesdpkg{os.getpid() % 100000}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/bin/false",
            name,
        ],
        check=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="module")
def area(user: pwd.struct_passwd) -> Iterator[Area]:
    path = Path(tempfile.mkdtemp(prefix="kesd-launcher-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield Area(path, user)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def server_config(area: Area) -> Path:
    """A config the test user can serve: its own TLS files, key directory and admin socket."""
    server = make_identity(area.path, "server", kind="ecdsa", san=("127.0.0.1",))
    keys = area.path / "keys"
    keys.mkdir(mode=0o700)
    for path in (server.key, server.cert, keys):
        os.chown(path, area.user.pw_uid, area.user.pw_gid)
    config = {
        "address": "127.0.0.1:0",
        "admin": {"identity": "disabled", "socket": str(area.path / "run" / "admin.sock")},
        "tls": {"key": str(server.key), "cert": str(server.cert)},
        "keystore": {"fs": {"path": str(keys)}},
    }
    (area.path / "run").mkdir(mode=0o700)
    os.chown(area.path / "run", area.user.pw_uid, area.user.pw_gid)
    return area.script("config.yml", yaml.safe_dump(config))


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def wait_for_line(proc: subprocess.Popen[bytes], pattern: str, timeout: float = 30.0) -> str:
    """Read ``proc``'s output until a line matches ``pattern``; everything read so far on failure."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if re.search(pattern, seen.decode(errors="replace")):
                return seen.decode(errors="replace")
    finally:
        sel.close()
    raise AssertionError(f"no line matching {pattern!r}:\n{seen.decode(errors='replace')}")


USER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def test_mlock_with_the_file_capability(area: Area, server_config: Path) -> None:
    """An unprivileged user runs `kesd --mlock` through the setcap'd launcher: memory is locked far
    beyond the 8 MiB limit; kesd keeps CAP_IPC_LOCK only in its own sets, passing none on."""
    launcher = area.launcher("kesd-cap", area.entry, capability=True)
    proc = subprocess.Popen(
        area.as_user(
            str(launcher), "--mlock", "--config", str(server_config), "--log-target", "stderr", env=USER_ENV
        ),
        cwd=area.path,
        env={},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_line(proc, r"kesd is serving on 127\.0\.0\.1:\d+")
        status = proc_status(proc.pid)
        print(
            "kesd via the launcher:", {k: status[k] for k in ("Uid", "VmLck", "CapEff", "CapInh", "CapAmb")}
        )
        assert status["Uid"].split()[0] == str(area.user.pw_uid)
        assert int(status["VmLck"].split()[0]) > MEMLOCK_LIMIT_KIB, status["VmLck"]
        assert int(status["CapEff"], 16) == CAP_IPC_LOCK
        assert int(status["CapPrm"], 16) == CAP_IPC_LOCK
        assert int(status["CapAmb"], 16) == 0  # cleared by kesd after start (kesd/memlock.py)
        assert int(status["CapInh"], 16) == 0
        assert status["Name"].startswith("python3")  # the launcher exec'd the fixed interpreter
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_mlock_without_the_capability_fails_clearly(area: Area, server_config: Path) -> None:
    """The same launcher without the file capability: start-up fails and says why."""
    launcher = area.launcher("kesd-nocap", area.entry, capability=False)
    result = subprocess.run(
        area.as_user(
            str(launcher), "--mlock", "--config", str(server_config), "--log-target", "stderr", env=USER_ENV
        ),
        cwd=area.path,
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "--mlock: cannot lock memory" in result.stderr, result.stderr
    assert "CAP_IPC_LOCK" in result.stderr
    assert "serving on" not in result.stderr


@pytest.fixture(scope="module")
def evil(area: Area) -> dict[str, Path]:
    """A user's attempt to run code: modules on PYTHONPATH and a library for LD_PRELOAD, each of
    which writes a marker file (with its capabilities) when it runs."""
    base = area.path / "evil"
    (base / "kesd").mkdir(parents=True)
    marker = base / "ran"
    payload = (
        "import pathlib\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        "    f.write(__name__ + ' ' + ''.join(caps))\n"
    )
    for name in ("sitecustomize.py", "usercustomize.py", "kesd/__init__.py"):
        (base / name).write_text(payload)
    source = base / "evil.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void evil(void) {\n"
        f'    FILE *f = fopen("{marker}", "a");\n'
        '    if (f) { fputs("LD_PRELOAD library\\n", f); fclose(f); }\n'
        "}\n"
    )
    library = base / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    for path in [base, *base.rglob("*")]:
        os.chown(path, area.user.pw_uid, area.user.pw_gid)
    return {"dir": base, "so": library, "marker": marker}


def test_user_environment_cannot_run_code_with_the_capability(area: Area, evil: dict[str, Path]) -> None:
    """PYTHONPATH, LD_PRELOAD and friends run the user's code in a plain python3 (the control),
    but not in kesd started through the setcap'd launcher."""
    env = {
        **USER_ENV,
        "PYTHONPATH": str(evil["dir"]),
        "PYTHONUSERBASE": str(evil["dir"]),
        "LD_PRELOAD": str(evil["so"]),
        "LD_LIBRARY_PATH": str(evil["dir"]),
        "PYTHONSTARTUP": str(evil["dir"] / "sitecustomize.py"),
    }
    marker = evil["marker"]
    control = subprocess.run(
        area.as_user(PYTHON, "-c", "import kesd", env=env),
        cwd=evil["dir"],
        env={},
        capture_output=True,
        check=False,
    )
    assert control.returncode == 0, control.stderr
    ran = marker.read_text()
    assert "LD_PRELOAD library" in ran and "sitecustomize" in ran and "kesd" in ran, ran
    marker.unlink()

    launcher = area.launcher("kesd-cap-env", area.entry, capability=True)
    result = subprocess.run(
        area.as_user(str(launcher), "--version", env=env),
        cwd=evil["dir"],  # the current directory is not on sys.path under -I either
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kesd, version"), result.stdout
    assert not marker.exists(), marker.read_text()


DUMP = """
import json, os, subprocess, sys

sys.path.insert(0, {lib!r})
from kesd.memlock import drop_inheritable_capabilities


def caps(text):
    fields = (line.partition(":\\t") for line in text.splitlines())
    return {{k: int(v, 16) for k, _, v in fields if k.startswith("Cap")}}


def child():
    return caps(subprocess.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True).stdout)


report = {{"argv": sys.argv[1:], "isolated": sys.flags.isolated, "env": dict(os.environ),
           "self_before": caps(open("/proc/self/status").read()), "child_before": child()}}
drop_inheritable_capabilities()
report.update(self_after=caps(open("/proc/self/status").read()), child_after=child())
print(json.dumps(report))
"""


def test_environment_allow_list_and_capability_handoff(area: Area) -> None:
    """What the launcher hands Python: a fixed PATH and only allow-listed variables; the arguments
    after the script; CAP_IPC_LOCK as ambient — which kesd's drop_inheritable_capabilities() clears,
    so that a program kesd starts no longer gets it."""
    dump = area.script("dump.py", DUMP.format(lib=str(area.path / "lib")))
    launcher = area.launcher("kesd-dump", dump, capability=True)
    kept = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "tls",
        "JOURNAL_STREAM": "8:123",
        "WATCHDOG_USEC": "30000000",
        "INVOCATION_ID": "0123",
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
        "TZ": "Europe/Berlin",
        "KESD_LOOP": "asyncio",
        "KES_TLS_PASSWORD": "from-the-environment",
    }
    dropped = {
        "PATH": "/tmp/evil/bin",
        "LD_PRELOAD": "/tmp/evil.so",
        "LD_LIBRARY_PATH": "/tmp/evil",
        "PYTHONPATH": "/tmp/evil",
        "PYTHONHOME": "/tmp/evil",
        "PYTHONINSPECT": "1",
        "GCONV_PATH": "/tmp/evil",
        "OPENSSL_CONF": "/tmp/evil.cnf",
        "LC_ALL": "/tmp/evil-locale",
        "HOME": "/tmp",
        "KESDX": "1",
        "SOMETHING": "else",
    }
    args = ["-c", "import os", "--", "two words", "-I"]
    result = subprocess.run(
        area.as_user(str(launcher), *args, env={**kept, **dropped}),
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["env"] == {**kept, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    assert report["argv"] == args
    assert report["isolated"] == 1
    before, after = report["self_before"], report["self_after"]
    assert before["CapEff"] == before["CapPrm"] == before["CapInh"] == before["CapAmb"] == CAP_IPC_LOCK
    assert report["child_before"]["CapEff"] == CAP_IPC_LOCK  # why kesd must clear the ambient set
    assert after["CapEff"] == after["CapPrm"] == CAP_IPC_LOCK
    assert after["CapInh"] == after["CapAmb"] == 0
    assert report["child_after"]["CapEff"] == 0
