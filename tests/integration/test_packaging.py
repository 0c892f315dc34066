"""The .deb and the .rpm as users get them: built from this checkout by packaging/build-deb.sh and
packaging/build-rpm.sh, linted, and installed.

The .deb goes into a booted Debian 12 container (the cached root of scripts/build-test-root under an
overlay): its dependencies are fetched from the Debian archive with the host's network before boot,
then ``apt-get install ./kesd_*.deb`` runs in the booted system, which has a private network. There the
package must start its socket and service, answer ``kesctl status`` and mTLS clients on port 7373,
lock memory (the service, and an unprivileged user's ``kesd --mlock`` through the installed launcher),
log to the journal, survive an upgrade with keys and the edited config, and leave nothing behind
after ``apt-get purge``. The .rpm is checked with ``rpm -qp`` and installed with ``rpm --root
--nodeps`` into another overlay of the same root, where its scriptlets run.

Needs root, systemd-nspawn and a Debian mirror (for the test root and the dependencies); skips with
the reason otherwise. KESD_SKIP_PACKAGING_TESTS=1 skips it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nspawn import BootedContainer

ROOT = Path(__file__).resolve().parents[2]
BUILD_DEB = ROOT / "packaging" / "build-deb.sh"
BUILD_RPM = ROOT / "packaging" / "build-rpm.sh"
BUILD_ROOT = ROOT / "scripts" / "build-test-root"
UPSTREAM = next(
    line.split('"')[1]
    for line in (ROOT / "kesd" / "__init__.py").read_text().splitlines()
    if "__version__" in line
)
DIST = "/srv/dist"  # where the packages appear inside the container
CAP_IPC_LOCK = 1 << 14


def _unavailable() -> str | None:
    if os.environ.get("KESD_SKIP_PACKAGING_TESTS") == "1":
        return "KESD_SKIP_PACKAGING_TESTS=1"
    if os.geteuid() != 0:
        return "needs root (package builds install their tools; containers, overlays, rpm --root)"
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "needs a Debian host (the build scripts install their tools with apt)"
    for tool in ("systemd-nspawn", "nsenter", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt systemd-container util-linux)"
    return None


pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=str(_unavailable()))


def run(*command: str | Path, timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a host command; fail with its output if it fails."""
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two builds of each package from this checkout: release 1, and release 2 for the upgrade."""
    out = tmp_path_factory.mktemp("dist")
    out.chmod(0o755)
    built = {}
    for release in ("1", "2"):
        version = f"{UPSTREAM}-{release}"
        env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck"} if release == "2" else None
        deb = run(BUILD_DEB, "--no-lintian", "--version", version, "--out", out, env=env).stdout
        rpm = run(BUILD_RPM, "--no-rpmlint", "--version", version, "--out", out).stdout
        built[f"deb{release}"] = Path(deb.strip().splitlines()[-1])
        built[f"rpm{release}"] = Path(rpm.strip().splitlines()[-1])
    for path in built.values():
        assert path.is_file(), path
    assert built["deb1"].name.startswith(f"kesd_{UPSTREAM}-1_") and built["deb1"].suffix == ".deb"
    assert built["rpm1"].name.startswith(f"kesd-{UPSTREAM}-1.") and built["rpm1"].suffix == ".rpm"
    return built


# --- the .deb: metadata, contents, lintian --------------------------------------------------------


def test_deb_metadata_and_contents(packages: dict[str, Path]) -> None:
    """Debian's own libraries as dependencies, the config as a conffile, the launcher as an ELF file."""
    deb = packages["deb1"]
    fields = {
        name: run("dpkg-deb", "-f", deb, name).stdout.strip() for name in ("Depends", "Recommends", "Version")
    }
    print("Depends:", fields["Depends"])
    depends = {part.strip().split()[0] for part in fields["Depends"].split(",")}
    for need in (
        "python3",
        "python3-cryptography",
        "python3-yaml",
        "python3-click",
        "python3-psutil",
        "python3-httptools",
        "libcap2-bin",
    ):
        assert need in depends, (need, fields["Depends"])
    assert "python3 (>= 3.11)" in fields["Depends"]
    assert "python3-uvloop" in fields["Recommends"]
    assert fields["Version"] == f"{UPSTREAM}-1"

    control = Path(run("mktemp", "-d").stdout.strip())
    try:
        run("dpkg-deb", "-e", deb, control)
        assert (control / "conffiles").read_text().split() == ["/etc/kesd/config.yml"]
        postinst = (control / "postinst").read_text()
        assert "setcap cap_ipc_lock=+ep" in postinst and "dpkg-statoverride --list" in postinst
        assert "deb-systemd-helper enable 'kesd.socket'" in postinst
        assert "_dh_action=restart" in postinst  # restart on upgrade
        # The socket starts first, in its own call, and is not restarted; then the service (re)starts.
        assert postinst.index("deb-systemd-invoke start 'kesd.socket'") < postinst.index(
            "deb-systemd-invoke $_dh_action 'kesd.service'"
        )
        assert "deb-systemd-invoke stop kesd.socket kesd.service" in (control / "prerm").read_text()
        postrm = (control / "postrm").read_text()
        assert postrm.index('if [ "$1" = purge ]') < postrm.index("rm -rf /var/lib/kesd")
    finally:
        shutil.rmtree(control)

    files = set(_deb_files(deb))
    for path in (
        "/usr/bin/kesd",
        "/usr/bin/kesctl",
        "/usr/bin/kes",
        "/usr/lib/kesd/kesd.py",
        "/usr/lib/python3/dist-packages/kesd/daemon.py",
        "/etc/kesd/config.yml",
        "/lib/systemd/system/kesd.service",
        "/lib/systemd/system/kesd.socket",
        "/usr/lib/sysusers.d/kesd.conf",
        "/usr/lib/tmpfiles.d/kesd.conf",
        "/usr/share/man/man8/kesd.8.gz",
        "/usr/share/man/man5/kesd.yml.5.gz",
        "/usr/share/bash-completion/completions/kesctl",
        "/usr/share/zsh/vendor-completions/_kesctl",
        "/usr/share/fish/vendor_completions.d/kesctl.fish",
        "/usr/share/doc/kesd/copyright",
    ):
        assert path in files, path
    launcher = subprocess.run(
        f"dpkg-deb --fsys-tarfile {deb} | tar -xOf - ./usr/bin/kesd | head -c 4",
        shell=True,
        capture_output=True,
        check=True,
    ).stdout
    assert launcher == b"\x7fELF", launcher  # a compiled program: file capabilities on scripts are ignored


def _deb_files(deb: Path) -> list[str]:
    listing = run("dpkg-deb", "-c", deb).stdout
    return [line.split()[5].lstrip(".") for line in listing.splitlines() if len(line.split()) >= 6]


def test_deb_lintian(packages: dict[str, Path]) -> None:
    """lintian reports no errors (the warnings we keep are listed in packaging/README.md)."""
    if shutil.which("lintian") is None:
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "lintian")
    result = subprocess.run(
        ["lintian", "--fail-on", "error", str(packages["deb1"])],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print("lintian:\n" + (result.stdout or "(nothing)"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")]


# --- the .rpm: metadata, scriptlets, rpmlint, install into a root -----------------------------------


def test_rpm_metadata_scripts_and_files(packages: dict[str, Path]) -> None:
    """rpm -qp --scripts / -l / --requires / -c: what the RPM declares and runs."""
    rpm = packages["rpm1"]
    scripts = run("rpm", "-qp", "--scripts", rpm).stdout
    print(scripts)
    assert "systemd-sysusers --replace=/usr/lib/sysusers.d/kesd.conf" in scripts
    assert "setcap cap_ipc_lock=+ep /usr/bin/kesd" in scripts
    assert "/usr/libexec/kesd/make-identity" in scripts
    assert "systemctl --no-reload preset kesd.socket kesd.service" in scripts
    assert "systemctl try-restart kesd.service" in scripts
    files = set(run("rpm", "-qpl", rpm).stdout.split())
    for path in (
        "/usr/bin/kesd",
        "/usr/bin/kesctl",
        "/usr/bin/kes",
        "/usr/lib/kesd/kesd.py",
        "/etc/kesd/config.yml",
        "/usr/lib/systemd/system/kesd.service",
        "/usr/lib/systemd/system/kesd.socket",
        "/usr/lib/sysusers.d/kesd.conf",
        "/usr/lib/tmpfiles.d/kesd.conf",
        "/var/lib/kesd/keys",
        "/usr/share/man/man8/kesd.8.gz",
        "/usr/share/zsh/site-functions/_kesctl",
    ):
        assert path in files, path
    assert any(f.endswith("/site-packages/kesd/daemon.py") for f in files)
    requires = run("rpm", "-qp", "--requires", rpm).stdout
    for need in (
        "python3-cryptography",
        "python3-pyyaml",
        "python3-click",
        "python3-psutil",
        "python3-httptools",
        "/usr/sbin/setcap",
        "python(abi)",
    ):
        assert need in requires, need
    assert run("rpm", "-qpc", rpm).stdout.split() == ["/etc/kesd/config.yml"]
    flags = run("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm).stdout
    assert "/etc/kesd/config.yml cn" in flags  # %config(noreplace)


def test_rpmlint(packages: dict[str, Path]) -> None:
    """rpmlint reports no errors, with the filters and settings kept in packaging/rpm/."""
    if shutil.which("rpmlint") is None:
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "rpmlint")
    result = subprocess.run(
        [
            "rpmlint",
            "-c",
            str(ROOT / "packaging" / "rpm" / "rpmlint.toml"),
            "-r",
            str(ROOT / "packaging" / "rpm" / "kesd.rpmlintrc"),
            str(packages["rpm1"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print("rpmlint:\n" + result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 errors" in result.stdout


@pytest.fixture(scope="module")
def debian_root() -> Path:
    """The cached Debian 12 root with systemd (scripts/build-test-root)."""
    result = subprocess.run([str(BUILD_ROOT)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot build the Debian 12 test root: {(result.stderr or result.stdout)[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class Overlay:
    """A writable copy-on-write view of the cached root (overlayfs), so that the cache stays pristine."""

    def __init__(self, lower: Path, base: Path) -> None:
        self.dirs = {name: base / name for name in ("upper", "work", "merged")}
        for path in self.dirs.values():
            path.mkdir()
        self.path = self.dirs["merged"]
        run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={self.dirs['upper']},workdir={self.dirs['work']}",
            self.path,
        )

    def close(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(self.path)], capture_output=True, check=False)


def test_rpm_install_upgrade_erase_in_a_root(
    packages: dict[str, Path], debian_root: Path, tmp_path: Path
) -> None:
    """rpm --root DIR --nodeps: %pre creates the user, %post applies the capability and the server
    identity; an upgrade applies the capability again and keeps the edited config; erasing keeps keys."""
    box = Overlay(debian_root, tmp_path)
    root = box.path
    try:
        # The Debian root stands in for an RPM system: setcap for %post (libcap2-bin is not in it),
        # and Debian's python3 told about the RPM's site-packages.
        for tool in ("setcap", "getcap"):
            shutil.copy2(shutil.which(tool) or f"/usr/sbin/{tool}", root / "usr" / "sbin" / tool)
        site = run("rpm", "-qpl", packages["rpm1"]).stdout.split()
        sitelib = next(f for f in site if f.endswith("/site-packages/kesd")).rpartition("/")[0]
        (root / "usr/lib/python3/dist-packages/rpm-site-packages.pth").write_text(sitelib + "\n")
        run("rpm", "--root", root, "--initdb")
        installed = run("rpm", "--root", root, "-i", "--nodeps", packages["rpm1"])
        print(installed.stdout + installed.stderr)

        assert "cap_ipc_lock=ep" in run("getcap", root / "usr/bin/kesd").stdout
        assert any(line.startswith("kesd:") for line in (root / "etc/passwd").read_text().splitlines())
        kesd_uid = next(
            int(line.split(":")[2])
            for line in (root / "etc/passwd").read_text().splitlines()
            if line.startswith("kesd:")
        )
        key = (root / "etc/kesd/private.key").stat()
        assert key.st_mode & 0o777 == 0o640 and key.st_uid == 0
        assert (root / "etc/kesd/public.crt").is_file()
        state = (root / "var/lib/kesd/keys").stat()
        assert state.st_mode & 0o777 == 0o700 and state.st_uid == kesd_uid
        check = run("chroot", root, "/usr/bin/kesd", "--check-config", "/etc/kesd/config.yml")
        assert "configuration is valid" in check.stdout

        config = root / "etc/kesd/config.yml"
        config.write_text(config.read_text() + "# edited by the administrator\n")
        (root / "var/lib/kesd/keys/my-key").write_text("key material stand-in")
        run("setcap", "-r", root / "usr/bin/kesd")
        run("rpm", "--root", root, "-U", "--nodeps", packages["rpm2"])
        assert run("rpm", "--root", root, "-q", "kesd").stdout.strip().startswith(f"kesd-{UPSTREAM}-2")
        assert "cap_ipc_lock=ep" in run("getcap", root / "usr/bin/kesd").stdout
        assert config.read_text().endswith("# edited by the administrator\n")
        assert (root / "var/lib/kesd/keys/my-key").is_file()

        run("rpm", "--root", root, "-e", "--nodeps", "kesd")
        assert not (root / "usr/bin/kesd").exists()
        assert (root / "var/lib/kesd/keys/my-key").is_file()  # keys are never deleted by the package
        assert (root / "etc/kesd/private.key").is_file()
    finally:
        box.close()


# --- the .deb in a booted Debian 12 ----------------------------------------------------------------


class Container(BootedContainer):
    """The booted Debian root with the packages at DIST, and what the tests ask of it."""

    def __init__(self, root: Path, dist: Path, log: Path) -> None:
        super().__init__(root, log, [f"--bind-ro={dist}:{DIST}"], f"kesdpkg-{os.getpid()}")

    def run(self, *args: str, check: bool = True, timeout: float = 300, env: tuple[str, ...] = ()):
        return super().run(*args, check=check, timeout=timeout, env=("DEBIAN_FRONTEND=noninteractive", *env))

    def active(self, *units: str) -> list[str]:
        return self.run("systemctl", "is-active", *units, check=False).stdout.split()

    def main_pid(self) -> int:
        return int(self.run("systemctl", "show", "-P", "MainPID", "kesd.service").stdout.strip())

    def proc_status(self, pid: int) -> dict[str, str]:
        text = self.run("cat", f"/proc/{pid}/status").stdout
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}

    def kes(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The package's `kes` client as root, with the test client's certificate, against port 7373."""
        return self.run(
            "env",
            "KES_SERVER=https://127.0.0.1:7373",
            "KES_CLIENT_CERT=/root/client.crt",
            "KES_CLIENT_KEY=/root/client.key",
            "kes",
            *args,
            check=check,
        )


@pytest.fixture(scope="module")
def container(
    packages: dict[str, Path], debian_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """A booted Debian 12 whose apt cache already holds kesd's dependencies from the archive."""
    box = Overlay(debian_root, tmp_path_factory.mktemp("deb-root"))
    dist = packages["deb1"].parent
    try:
        fetch = subprocess.run(
            [
                "systemd-nspawn",
                "--quiet",
                f"--directory={box.path}",
                "--register=no",
                "--keep-unit",
                f"--machine=kesdpkg-fetch-{os.getpid()}",
                f"--bind-ro={dist}:{DIST}",
                "sh",
                "-ec",
                "apt-get update -qq && apt-get install -y -q --download-only "
                + f"{DIST}/{packages['deb1'].name}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if fetch.returncode != 0:
            pytest.skip(f"cannot fetch kesd's dependencies from the Debian archive: {fetch.stderr[-500:]}")
        print("dependencies fetched from the archive:", fetch.stdout.splitlines()[-6:])
        booted = Container(box.path, dist, tmp_path_factory.mktemp("nspawn") / "nspawn.log")
        try:
            state = booted.wait_booted()
            if state not in ("running", "degraded"):
                pytest.skip(f"the container did not boot here ({state!r}): {booted.log.read_text()[-800:]}")
            yield booted
        finally:
            booted.close()
    finally:
        box.close()


def _fail_with(box: Container, exc: AssertionError) -> AssertionError:
    return AssertionError(f"{exc}\n--- diagnostics ---\n{box.diagnostics()}")


POLICY = """  my-app:
    allow:
    - /v1/key/create/my-app-*
    - /v1/key/generate/my-app-*
    - /v1/key/decrypt/my-app-*
    identities:
    - {identity}
"""


def test_deb_1_install_starts_and_serves(container: Container, packages: dict[str, Path]) -> None:
    """apt-get install ./kesd_*.deb: dependencies resolved from the archive, user and directories
    created, a server identity made, the capability set, socket and service enabled and running;
    kesctl status answers; after adding a policy (and reload) an mTLS client creates a key and gets a
    DEK on port 7373; journalctl -u kesd shows structured records."""
    box = container
    try:
        out = box.run("apt-get", "install", "-y", "-q", f"{DIST}/{packages['deb1'].name}").stdout
        print(out[-1500:])
        assert "libcap2-bin" in out  # a dependency that the root did not have
        assert box.active("kesd.socket", "kesd.service") == ["active", "active"]
        assert box.run("systemctl", "is-enabled", "kesd.socket", "kesd.service").stdout.split() == [
            "enabled",
            "enabled",
        ]
        getcap = box.run("getcap", "/usr/bin/kesd").stdout
        print("getcap:", getcap.strip())
        assert "cap_ipc_lock=ep" in getcap
        assert box.run("stat", "-c", "%a %U:%G", "/var/lib/kesd").stdout.split() == ["700", "kesd:kesd"]
        assert box.run("stat", "-c", "%a %U:%G", "/etc/kesd/private.key").stdout.split() == [
            "640",
            "root:kesd",
        ]

        status = json.loads(box.run("kesctl", "status", "--json").stdout)
        print("kesctl status:", {k: status[k] for k in ("version", "mlock", "addresses") if k in status})
        assert status["mlock"] is True
        fields = box.proc_status(box.main_pid())
        assert int(fields["VmLck"].split()[0]) > 8192, fields["VmLck"]
        assert int(fields["CapEff"], 16) == CAP_IPC_LOCK and int(fields["CapAmb"], 16) == 0

        box.sh("cd /root && kes identity new --key client.key --cert client.crt my-app >/dev/null")
        identity = box.run("kes", "identity", "of", "/root/client.crt").stdout.split()[-1]
        box.sh(
            f"printf '%s' '{POLICY.format(identity=identity)}' >/tmp/policy && "
            "sed -i '/^policy:/r /tmp/policy' /etc/kesd/config.yml && "
            "printf 'log:\\n  audit: on\\n' >>/etc/kesd/config.yml"
        )
        box.run("kesd", "--check-config", "/etc/kesd/config.yml")
        box.run("systemctl", "reload", "kesd.service")
        box.kes("key", "create", "my-app-key", "-k")
        dek = json.loads(box.kes("key", "dek", "my-app-key", "-k", "--json").stdout)
        assert dek["plaintext"] and dek["ciphertext"]
        assert box.kes("key", "create", "other-key", "-k", check=False).returncode != 0  # not in the policy
        assert box.run("ls", "/var/lib/kesd/keys").stdout.split() == ["my-app-key"]

        records = [
            json.loads(line)
            for line in box.run("journalctl", "--no-pager", "-o", "json", "-u", "kesd").stdout.splitlines()
        ]
        audit = [r for r in records if r.get("SYSLOG_IDENTIFIER") == "kesd-audit"]
        assert any(r.get("KESD_PATH") == "/v1/key/generate/my-app-key" for r in audit), audit[-3:]
        denied = [r for r in audit if r.get("KESD_STATUS") == "403"]
        assert denied and denied[0]["KESD_IDENTITY"] == identity, audit[-3:]
        serving = [r for r in records if r.get("MESSAGE", "").startswith("kesd is serving on")]
        assert (
            serving and serving[0]["CODE_FILE"].endswith("kesd/daemon.py") and serving[0]["PRIORITY"] == "6"
        )
        print("journalctl -u kesd (audit):", {k: v for k, v in denied[0].items() if k.startswith("KESD_")})
        everything = box.run("journalctl", "--no-pager", "-o", "export").stdout
        assert dek["plaintext"] not in everything
    except AssertionError as exc:
        raise _fail_with(box, exc) from None


MLOCK_AS_USER = """
cd "$(mktemp -d)"
kes identity new --key server.key --cert server.crt --ip 127.0.0.1 localhost >/dev/null
mkdir -m 0700 keys
printf 'address: 127.0.0.1:0\\nadmin:\\n  identity: disabled\\n  socket: %s/admin.sock\\n' "$PWD" >cfg.yml
printf 'tls:\\n  key: server.key\\n  cert: server.crt\\nkeystore:\\n  fs:\\n    path: keys\\n' >>cfg.yml
"$KESD" --mlock --config cfg.yml --log-target stderr 2>log &
pid=$!
for _ in $(seq 300); do grep -q "serving on" log && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
grep -E "^(VmLck|CapEff|CapAmb):" /proc/$pid/status || true
kill $pid 2>/dev/null || true
wait $pid || true
cat log
"""


def test_deb_2_launcher_locks_memory_for_an_unprivileged_user(container: Container) -> None:
    """Outside systemd, an unprivileged user's `kesd --mlock` locks memory through the installed
    launcher (CAP_IPC_LOCK from postinst's setcap); a copy without the capability fails clearly."""
    box = container
    box.run("useradd", "--create-home", "--shell", "/bin/sh", "tester")
    try:
        box.run("cp", "/usr/bin/kesd", "/usr/local/bin/kesd-without-cap")  # cp drops file capabilities
        as_tester = (
            "setpriv",
            "--reuid=tester",
            "--regid=tester",
            "--init-groups",
            "env",
            "HOME=/home/tester",
        )
        out = box.run(*as_tester, "KESD=/usr/bin/kesd", "sh", "-ec", MLOCK_AS_USER).stdout
        print(out)
        fields = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("VmLck", "Cap")))
        assert int(fields["VmLck"].split()[0]) > 8192, out
        assert int(fields["CapEff"], 16) == CAP_IPC_LOCK and int(fields["CapAmb"], 16) == 0, out

        out = box.run(*as_tester, "KESD=/usr/local/bin/kesd-without-cap", "sh", "-ec", MLOCK_AS_USER).stdout
        assert "--mlock: cannot lock memory" in out and "CAP_IPC_LOCK" in out, out
        assert "VmLck" not in out
    finally:
        box.run("userdel", "--remove", "tester", check=False)
        box.run("rm", "-f", "/usr/local/bin/kesd-without-cap", check=False)


def test_deb_3_upgrade_keeps_keys_and_config(container: Container, packages: dict[str, Path]) -> None:
    """Installing the next release restarts kesd with the edited config and the same keys, and sets
    the capability again (dpkg does not keep it); with a dpkg-statoverride the capability is left alone."""
    box = container
    try:
        before = box.main_pid()
        identity = box.run("kes", "identity", "of", "/root/client.crt").stdout.split()[-1]
        box.run("apt-get", "install", "-y", "-q", f"{DIST}/{packages['deb2'].name}")
        assert box.run("dpkg-query", "-W", "-f", "${Version}", "kesd").stdout == f"{UPSTREAM}-2"
        assert box.active("kesd.socket", "kesd.service") == ["active", "active"]
        assert box.main_pid() != before  # restarted on upgrade
        assert "cap_ipc_lock=ep" in box.run("getcap", "/usr/bin/kesd").stdout
        assert identity in box.run("cat", "/etc/kesd/config.yml").stdout  # the edited conffile
        assert box.run("ls", "/var/lib/kesd/keys").stdout.split() == ["my-app-key"]
        dek = json.loads(box.kes("key", "dek", "my-app-key", "-k", "--json").stdout)
        assert dek["plaintext"]

        box.run("dpkg-statoverride", "--add", "root", "root", "0755", "/usr/bin/kesd")
        out = box.run("apt-get", "install", "-y", "-q", "--reinstall", f"{DIST}/{packages['deb2'].name}")
        assert "dpkg-statoverride" in out.stdout + out.stderr
        assert "cap_ipc_lock" not in box.run("getcap", "/usr/bin/kesd").stdout
        box.run("dpkg-statoverride", "--remove", "/usr/bin/kesd")
        box.run("dpkg-reconfigure", "kesd")
        assert "cap_ipc_lock=ep" in box.run("getcap", "/usr/bin/kesd").stdout
    except AssertionError as exc:
        raise _fail_with(box, exc) from None


def test_deb_4_remove_keeps_keys_then_purge_removes_everything(container: Container) -> None:
    """apt-get remove stops kesd and keeps keys, identity and config; apt-get purge removes them."""
    box = container
    try:
        box.run("apt-get", "remove", "-y", "-q", "kesd")
        assert box.active("kesd.socket", "kesd.service") == ["inactive", "inactive"]
        assert box.run("ls", "/var/lib/kesd/keys").stdout.split() == ["my-app-key"]
        assert box.run("ls", "/etc/kesd").stdout.split() == ["config.yml", "private.key", "public.crt"]
        assert box.run("test", "-e", "/usr/bin/kesd", check=False).returncode != 0

        box.run("apt-get", "purge", "-y", "-q", "kesd")
        assert box.run("dpkg-query", "-W", "kesd", check=False).returncode != 0
        leftovers = box.sh(
            "find / -xdev \\( -name '*kesd*' -o -path /var/lib/kesd \\) -not -path '/proc/*' "
            "-not -name .kesd-test-root -not -path '/root/*' -print"
        ).stdout.split()
        assert leftovers == [], leftovers
        assert box.sh("ls /etc/systemd/system/*/kesd.* 2>/dev/null", check=False).stdout == ""
    except AssertionError as exc:
        raise _fail_with(box, exc) from None
