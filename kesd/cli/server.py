"""`kes server`: run a KES server from a config file, or a throw-away development server (--dev)."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import click

from kesd import __version__, errors, logsetup
from kesd.config import DEFAULT_ADMIN_SOCKET, Config, KeystoreConfig, load_config, parse_config
from kesd.daemon import Options, run
from kesd.memlock import memory_locked
from kesd.server.app import App

DEV_ADDRESS = "127.0.0.1:7373"


@click.command("server", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_file", metavar="FILE", help="Read the server configuration from FILE (YAML)."
)
@click.option("--addr", metavar="IP:PORT", help="Listen on IP:PORT instead of the config's address.")
@click.option(
    "--auth",
    type=click.Choice(["on", "off"], case_sensitive=False),
    help="on: verify client certificates against the system roots and tls.ca; off: require any certificate.",
)
@click.option("--key", "key_file", metavar="FILE", help="TLS private key (overrides tls.key).")
@click.option("--cert", "cert_file", metavar="FILE", help="TLS certificate (overrides tls.cert).")
@click.option("--mlock", is_flag=True, help="Lock all memory so that keys are never swapped to disk.")
@click.option(
    "--admin-socket",
    metavar="PATH",
    help="Serve kesctl on this Unix socket (default: admin.socket if the config sets one, else none).",
)
@click.option("--dev", is_flag=True, help="Start a development server: no files needed, keys in memory.")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Where --dev writes its certificates (default $XDG_STATE_HOME/kesd/dev).",
)
def server(
    config_file: str | None,
    addr: str | None,
    auth: str | None,
    key_file: str | None,
    cert_file: str | None,
    mlock: bool,
    admin_socket: str | None,
    dev: bool,
    state_dir: str | None,
) -> None:
    """Start a KES server.

    \b
    Examples:
      kes server --config config.yml --auth off
      kes server --config config.yml --addr 127.0.0.1:7373 --mlock
      kes server --dev                      # everything generated, in-memory keys
    """
    if dev == bool(config_file):
        raise click.UsageError("give either --config FILE or --dev")
    try:
        if dev:
            config, notes = _dev_config(addr or DEV_ADDRESS, state_dir)
        else:
            config = load_config(config_file or "")
            notes = _no_notes
        config = _with_flags(config, addr, auth, key_file, cert_file)
    except errors.ConfigError as exc:
        click.echo(f"Error: {exc.line()}", err=True)
        sys.exit(2)
    except errors.StartupError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    for warning in getattr(config, "warnings", ()):
        click.echo(f"Warning: {warning}", err=True)

    def banner(app: App, runtime: list[str]) -> None:
        click.echo(_banner(app, config, runtime))
        for line in notes(app.address):
            click.echo(line)
        click.echo("\n=> Server is up and running")
        sys.stdout.flush()

    def reload_config() -> Config:
        """SIGHUP re-reads the same file with the same command-line overrides."""
        if dev:
            raise errors.ConfigError("a development server has no config file to reload", file="(--dev)")
        return _with_flags(load_config(config_file or ""), addr, auth, key_file, cert_file)

    admin = _admin_socket(admin_socket, config)
    options = Options(mlock=mlock, banner=banner, admin_socket=admin, reload_config=reload_config)
    logsetup.configure("auto", config.log)  # errors and warnings to stderr (or journald under systemd)
    sys.exit(run(config, options))


def _with_flags(
    config: Config, addr: str | None, auth: str | None, key_file: str | None, cert_file: str | None
) -> Config:
    """The config with the --addr, --auth, --key and --cert values applied."""
    config = config.with_overrides(address=addr, auth=auth)
    if key_file or cert_file:
        tls = dataclasses.replace(
            config.tls, key=key_file or config.tls.key, cert=cert_file or config.tls.cert
        )
        config = dataclasses.replace(config, tls=tls)
    return config


def _admin_socket(flag: str | None, config: Config) -> str | None:
    """`kes server` opens an admin socket only when asked: --admin-socket, or a non-default admin.socket."""
    if flag is not None:
        return flag or None
    return config.admin_socket if config.admin_socket != DEFAULT_ADMIN_SOCKET else None


def _banner(app: App, config: Config, runtime: list[str]) -> str:
    """The start-up summary, in the spirit of KES's."""
    host, _, port = app.address.rpartition(":")
    urls = [f"https://{h}:{port}" for h in _addresses(host)]
    admin = config.admin if _is_identity(config.admin) else f"{config.admin} (no admin: not an identity)"
    rows = [
        ("Version", f"kesd {__version__}"),
        ("Runtime", f"python {platform.python_version()} {' '.join(runtime)}"),
        ("License", "Apache-2.0"),
        ("KMS", app.keystore.describe()),
        ("API", urls[0]),
        *(("", u) for u in urls[1:]),
        ("Admin", admin),
        (
            "TLS",
            f"client certificates: {'verified' if config.tls.auth == 'on' else 'required, not verified'}",
        ),
        ("MLock", "enabled" if memory_locked() else "disabled"),
    ]
    body = "\n".join(f"{k:<12}{v}" for k, v in rows)
    return body


def _addresses(host: str) -> list[str]:
    """The addresses a wildcard listener is reachable on (loopback first)."""
    if host not in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104
        return [host]
    found = ["127.0.0.1"]
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addr = str(info[4][0])
            if addr not in found:
                found.append(addr)
    except OSError:
        pass
    return found


def _is_identity(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _state_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "kesd" / "dev"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` created with ``mode`` from the start."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _no_notes(_address: str) -> list[str]:
    return []


def _kes_program() -> str:
    """How to invoke the kes client that belongs to this installation."""
    beside = os.path.join(os.path.dirname(sys.executable), "kes")
    return beside if shutil.which("kes") != beside and os.path.exists(beside) else "kes"


def _dev_config(address: str, state_dir: str | None) -> tuple[Config, Callable[[str], list[str]]]:
    """A fresh server certificate and admin identity in the state dir, and an in-memory keystore."""
    from kesd.identity import new_identity, new_server_identity

    directory = _state_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    host = address.rpartition(":")[0] or "127.0.0.1"
    hosts = sorted({"127.0.0.1", "localhost", *_addresses(host)})
    server_key, server_cert = new_server_identity(hosts)
    admin = new_identity("kesd-dev-admin")
    _write(directory / "server.key", server_key, 0o600)
    _write(directory / "server.crt", server_cert, 0o644)
    _write(directory / "admin.key", admin.private_key_pem, 0o600)
    _write(directory / "admin.crt", admin.certificate_pem, 0o644)
    text = (
        f"address: {address}\n"
        f"admin:\n  identity: {admin.identity}\n"
        f"tls:\n  key: {directory / 'server.key'}\n  cert: {directory / 'server.crt'}\n"
        "keystore:\n  fs:\n    path: unused-in-dev-mode\n"
    )
    config = parse_config(text, file="(--dev)")
    config = dataclasses.replace(
        config, keystore=KeystoreConfig(type="memory", settings=MappingProxyType({}))
    )
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
    kes = _kes_program()

    def notes(bound: str) -> list[str]:
        port = bound.rpartition(":")[2]
        return [
            "",
            "Development mode: a fresh server certificate and admin identity; keys live in memory only.",
            f"  Admin identity: {admin.identity}",
            f"  Admin API key:  {admin.api_key}",
            f"  Files:          {directory}",
            "",
            "Use it from another shell:",
            f"  export KES_SERVER=https://{url_host}:{port}",
            f"  export KES_CLIENT_CERT={directory / 'admin.crt'} KES_CLIENT_KEY={directory / 'admin.key'}",
            f"  {kes} key create my-key -k",
            f"  {kes} key dek my-key -k",
        ]

    return config, notes
