"""`kesd`: the daemon entry point (the same server as `kes server`, with a system config path)."""

from __future__ import annotations

import sys

import click

from kesd import __version__, errors
from kesd.config import load_config
from kesd.daemon import Options, run, startup_message

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
@click.option("--check-config", "check_file", metavar="FILE", help="Validate FILE and exit (0 = valid).")
@click.version_option(__version__, prog_name="kesd")
def main(config_file: str, addr: str | None, mlock: bool, check_file: str | None) -> None:
    """Run the kesd key server (KES-compatible).

    \b
    Examples:
      kesd                                  # reads /etc/kesd/config.yml
      kesd --config ./config.yml --addr 127.0.0.1:7373
      kesd --check-config /etc/kesd/config.yml
    """
    try:
        config = load_config(check_file or config_file).with_overrides(address=addr)
    except errors.ConfigError as exc:
        click.echo(f"Error: {exc.line()}", err=True)
        sys.exit(2)
    for warning in config.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if check_file:
        from kesd.server.app import build_state

        try:
            build_state(config)
        except (errors.StartupError, errors.ConfigError) as exc:
            click.echo(f"Error: {startup_message(config, exc)}", err=True)
            sys.exit(2)
        click.echo(f"{check_file}: configuration is valid")
        return
    sys.exit(run(config, Options(mlock=mlock)))
