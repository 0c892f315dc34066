"""`kesd`: the daemon entry point (the same server as `kes server`, with a system config path).

Made for systemd: readiness and status on ``$NOTIFY_SOCKET``, an activated listening socket,
journald logging, ``SIGHUP`` reloads. Without systemd it runs the same way in a terminal.
"""

from __future__ import annotations

import sys

import click

from kesd import __version__, errors, logsetup
from kesd.config import Config, load_config
from kesd.daemon import Options, check_config, run, startup_failed, startup_message

DEFAULT_CONFIG = "/etc/kesd/config.yml"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    default=DEFAULT_CONFIG,
    show_default=True,
    metavar="FILE",
    help="The server configuration (YAML).",
)
@click.option("--addr", metavar="IP:PORT", help="Listen on IP:PORT instead of the config's address.")
@click.option("--mlock", is_flag=True, help="Lock all memory (needs CAP_IPC_LOCK or a high memlock limit).")
@click.option(
    "--admin-socket",
    metavar="PATH",
    help="kesctl's admin socket (default: the config's admin.socket, /run/kesd/admin.sock); '' = none.",
)
@click.option(
    "--log-target",
    type=click.Choice(logsetup.TARGETS),
    default="auto",
    show_default=True,
    help="journal: native journald records; stderr: plain text; auto: journal when stderr is the journal.",
)
@click.option("--check-config", "check_file", metavar="FILE", help="Validate FILE and exit (0 = valid).")
@click.version_option(__version__, prog_name="kesd")
def main(
    config_file: str,
    addr: str | None,
    mlock: bool,
    admin_socket: str | None,
    log_target: str,
    check_file: str | None,
) -> None:
    """Run the kesd key server (KES-compatible).

    \b
    Examples:
      kesd                                  # reads /etc/kesd/config.yml
      kesd --config ./config.yml --addr 127.0.0.1:7373
      kesd --check-config /etc/kesd/config.yml
    """
    path = check_file or config_file

    def load() -> Config:
        return load_config(path).with_overrides(address=addr)

    try:
        config = load()
    except errors.ConfigError as exc:
        if not check_file:
            logsetup.configure(log_target)
            startup_failed(Config(file=path), exc)
            sys.exit(2)
        click.echo(f"Error: {exc.line()}", err=True)
        sys.exit(2)
    for warning in config.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if check_file:
        try:
            check_config(config)
        except (errors.StartupError, errors.ConfigError) as exc:
            click.echo(f"Error: {startup_message(config, exc)}", err=True)
            sys.exit(2)
        click.echo(f"{check_file}: configuration is valid")
        return
    logsetup.configure(log_target, config.log)
    admin = config.admin_socket if admin_socket is None else admin_socket
    sys.exit(run(config, Options(mlock=mlock, reload_config=load, admin_socket=admin)))


if __name__ == "__main__":
    main()
