"""`kesctl`: manage a running kesd through its admin socket (root only).

One subcommand per admin operation (docs/admin-protocol.md). Exit codes: 0 ok, 1 kesd answered
with an error, 2 usage error, 3 cannot reach kesd (no socket, not running, not root, refused).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import click
from click.shell_completion import CompletionItem, get_completion_class

from kesd import __version__
from kesd.admin import render
from kesd.admin.client import DEFAULT_SOCKET, SOCKET_ENV, AdminClient, default_socket
from kesd.errors import KesError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
KEY_BYTES = 32
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SHELLS = ("bash", "zsh", "fish")
_JSON = "kesctl.json"


# --- plumbing -------------------------------------------------------------------------------------


def _client(ctx: click.Context) -> AdminClient:
    client = ctx.find_object(AdminClient)
    if client is None:  # completion callbacks run before the group callback
        params = ctx.find_root().params
        client = AdminClient(params.get("socket_path") or default_socket(), timeout=2.0)
    return client


def _fail(message: str, code: int, hint: str = "") -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)
    sys.exit(code)


def _unreachable(path: str, exc: OSError) -> NoReturn:
    """Exit 3 with the likeliest reason the admin socket cannot be used."""
    reasons = {
        errno.ENOENT: (
            "no such socket",
            "is kesd running? (--socket PATH or $KESD_ADMIN_SOCKET if it listens elsewhere)",
        ),
        errno.ECONNREFUSED: ("nothing is listening on it", "is kesd running? (systemctl status kesd)"),
        errno.EACCES: (
            "permission denied",
            "are you root? The admin socket is for root only (sudo kesctl ...)",
        ),
        errno.EPERM: (
            "permission denied",
            "are you root? The admin socket is for root only (sudo kesctl ...)",
        ),
        errno.ENOTSOCK: ("not a socket", "is this kesd's admin socket? (check admin.socket in the config)"),
    }
    reason, hint = reasons.get(
        exc.errno or 0, (exc.strerror or str(exc), "is kesd running, and are you root?")
    )
    _fail(f"cannot connect to kesd's admin socket {path}: {reason}", EXIT_UNREACHABLE, hint)


def _call(ctx: click.Context, op: str, args: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Perform ``op``; on failure print why and exit with the matching code."""
    client = _client(ctx)
    try:
        return client.call(op, args)
    except KesError as err:
        _server_error(err)
    except TimeoutError:
        _fail(f"kesd did not answer within {client.timeout:g}s", EXIT_ERROR)
    except EOFError:
        _fail("kesd closed the connection without answering", EXIT_ERROR)
    except OSError as exc:
        _unreachable(client.path, exc)


def _server_error(err: KesError) -> NoReturn:
    if err.status == 403:
        _fail(err.message, EXIT_UNREACHABLE, "are you root? (sudo kesctl ...)")
    _fail(err.message, EXIT_ERROR)


def _emit(ctx: click.Context, result: Mapping[str, Any], human: Callable[[Mapping[str, Any]], str]) -> None:
    """Print ``result`` as JSON (``--json``) or through its human renderer."""
    if _wants_json(ctx):
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(human(result), nl=False)


def _wants_json(ctx: click.Context) -> bool:
    return bool(ctx.params.get("as_json") or ctx.meta.get(_JSON))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _complete(op: str, field: str, key: str | None = None) -> Callable[..., list[CompletionItem]]:
    """A completion callback that asks kesd for names (silently nothing if it cannot)."""

    def complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        try:
            items = _client(ctx).call(op, {"pattern": "*"})[field]
        except (OSError, KesError, EOFError, KeyError, TypeError):
            return []
        names = [str(item[key]) if key else str(item) for item in items]
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]

    return complete


# --- the command tree -----------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
@click.option(
    "--socket",
    "socket_path",
    envvar=SOCKET_ENV,
    default=DEFAULT_SOCKET,
    show_default=True,
    show_envvar=True,
    metavar="PATH",
    help="kesd's admin socket.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=35.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for an answer.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print results as JSON (also accepted after a command)."
)
@click.version_option(__version__, prog_name="kesctl")
@click.pass_context
def cli(ctx: click.Context, socket_path: str, timeout: float, as_json: bool) -> None:
    """Manage a running kesd through its admin socket.

    The admin socket serves root (and kesd's own user) only: being root on the host is the
    credential, no client certificate is needed. Every operation is recorded in kesd's audit log
    with your uid and pid.

    \b
    Exit codes: 0 ok, 1 kesd reported an error, 2 usage error,
                3 cannot reach kesd (not running, wrong socket, not root).
    \b
    Examples:
      kesctl status
      kesctl reload
      kesctl key create my-key
      kesctl --json key ls
      kesctl log audit --follow
    """
    ctx.obj = AdminClient(socket_path, timeout)
    ctx.meta[_JSON] = as_json


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the server's state.

    Version, uptime, keystore, key count, connections, request rate, cache, memory, memory lock
    and listening addresses.
    """
    _emit(ctx, _call(ctx, "status"), render.status)


@cli.command()
@json_option
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Re-read the configuration, as SIGHUP does.

    On failure the exact configuration error is printed (exit 1) and kesd keeps serving with the
    configuration it had.
    """
    result = _call(ctx, "reload")
    _emit(ctx, result, lambda r: f"Reloaded {r.get('config') or 'the configuration'}\n")


@cli.group("config", context_settings=CONTEXT)
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@click.pass_context
def config_check(ctx: click.Context, file: str, as_json: bool) -> None:
    """Validate FILE as kesd would load it (read by kesd, with its permissions)."""
    result = _call(ctx, "config.check", {"file": os.path.abspath(file)})

    def human(r: Mapping[str, Any]) -> str:
        warnings = "".join(f"Warning: {w}\n" for w in r.get("warnings", []))
        return f"{warnings}{r.get('file', file)}: configuration is valid\n"

    _emit(ctx, result, human)


# --- keys -----------------------------------------------------------------------------------------


@cli.group("key", context_settings=CONTEXT)
def key_group() -> None:
    """List, inspect, create, import and delete keys."""


@key_group.command("ls")
@click.argument("pattern", default="*", required=False)
@json_option
@click.pass_context
def key_ls(ctx: click.Context, pattern: str, as_json: bool) -> None:
    """List keys matching PATTERN (a prefix, optional trailing *; default all)."""
    _emit(ctx, _call(ctx, "key.ls", {"pattern": pattern}), render.key_list)


_key_name = click.argument("name", shell_complete=_complete("key.ls", "keys"))


@key_group.command("info")
@_key_name
@json_option
@click.pass_context
def key_info(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a key's algorithm, creation time and creator."""
    _emit(ctx, _call(ctx, "key.info", {"name": name}), render.key_info)


@key_group.command("create")
@click.argument("name")
@json_option
@click.pass_context
def key_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create a new random key NAME (AES256)."""
    _emit(ctx, _call(ctx, "key.create", {"name": name}), lambda r: f"Created key {r.get('name', name)}\n")


@key_group.command("import")
@click.argument("name")
@click.argument("file", type=click.File("rb"), default="-", required=False)
@click.option(
    "--cipher",
    type=click.Choice(["AES256", "ChaCha20"], case_sensitive=False),
    default="AES256",
    show_default=True,
    help="The cipher the key is for.",
)
@json_option
@click.pass_context
def key_import(ctx: click.Context, name: str, file: Any, cipher: str, as_json: bool) -> None:
    """Import a key NAME from FILE (default: standard input).

    FILE holds the 32 key bytes, raw or base64-encoded. Reading them from a file or a pipe keeps
    them out of the process list and the shell history.
    """
    material = _key_material(file.read(4096))
    args = {"name": name, "key": base64.b64encode(material).decode(), "cipher": cipher}
    _emit(ctx, _call(ctx, "key.import", args), lambda r: f"Imported key {r.get('name', name)}\n")


def _key_material(data: bytes) -> bytes:
    """32 key bytes from raw or base64 input; a usage error (exit 2) otherwise."""
    text = b"".join(data.split())
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    if len(data) == KEY_BYTES:
        return data
    raise click.UsageError(f"the key must be {KEY_BYTES} bytes, raw or base64-encoded")


@key_group.command("rm")
@_key_name
@json_option
@click.pass_context
def key_rm(ctx: click.Context, name: str, as_json: bool) -> None:
    """Delete key NAME. Whatever it encrypted can no longer be decrypted."""
    _emit(ctx, _call(ctx, "key.rm", {"name": name}), lambda r: f"Deleted key {r.get('name', name)}\n")


# --- policies and identities ----------------------------------------------------------------------


@cli.group("policy", context_settings=CONTEXT)
def policy_group() -> None:
    """List and show the policies kesd serves with."""


@policy_group.command("ls")
@click.argument("pattern", default="*", required=False)
@json_option
@click.pass_context
def policy_ls(ctx: click.Context, pattern: str, as_json: bool) -> None:
    """List the policies whose names match PATTERN (default all)."""
    _emit(ctx, _call(ctx, "policy.ls", {"pattern": pattern}), render.policy_list)


@policy_group.command("show")
@click.argument("name", shell_complete=_complete("policy.ls", "policies", "name"))
@json_option
@click.pass_context
def policy_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a policy's allow and deny rules and its identities."""
    _emit(ctx, _call(ctx, "policy.show", {"name": name}), render.policy_show)


@cli.group("identity", context_settings=CONTEXT)
def identity_group() -> None:
    """List and show identities."""


@identity_group.command("ls")
@click.argument("pattern", default="*", required=False)
@json_option
@click.pass_context
def identity_ls(ctx: click.Context, pattern: str, as_json: bool) -> None:
    """List the identities matching PATTERN (default all) with their role."""
    _emit(ctx, _call(ctx, "identity.ls", {"pattern": pattern}), render.identity_list)


@identity_group.command("show")
@click.argument("identity", shell_complete=_complete("identity.ls", "identities", "identity"))
@json_option
@click.pass_context
def identity_show(ctx: click.Context, identity: str, as_json: bool) -> None:
    """Show whether IDENTITY is the admin, or its policy and rules."""
    _emit(ctx, _call(ctx, "identity.show", {"identity": identity}), render.identity_show)


# --- logs, cache, metrics -------------------------------------------------------------------------


@cli.group("log", context_settings=CONTEXT)
def log_group() -> None:
    """Follow kesd's audit or error log live."""


def _follow_command(stream: str, human: Callable[[str], str], summary: str) -> click.Command:
    @click.option("--follow", "-f", is_flag=True, help="Print events as they happen until interrupted.")
    @click.option("--count", "-n", type=click.IntRange(min=1), help="Stop after N events.")
    @json_option
    @click.pass_context
    def follow(ctx: click.Context, follow: bool, count: int | None, as_json: bool) -> None:
        if not follow:
            raise click.UsageError(
                "kesd keeps no log history: use --follow for a live tail (past records: journalctl -u kesd)"
            )
        _follow(ctx, stream, count, (lambda line: line + "\n") if _wants_json(ctx) else human)

    follow.__doc__ = summary
    return click.command(stream)(follow)


def _follow(ctx: click.Context, stream: str, count: int | None, show: Callable[[str], str]) -> None:
    client = _client(ctx)
    events = client.stream("log.follow", {"stream": stream})
    seen = 0
    try:
        next(events)
        click.echo(f"Following kesd's {stream} log (Ctrl-C to stop)", err=True)
        for event in events:
            if event.dropped is not None:
                click.echo(
                    f"kesctl: kesd dropped {event.dropped} events so far (reading too slowly)", err=True
                )
                continue
            click.echo(show(event.line or ""), nl=False)
            seen += 1
            if count is not None and seen >= count:
                return
    except KeyboardInterrupt:
        return
    except KesError as err:
        _server_error(err)
    except EOFError:
        _fail("kesd closed the connection without answering", EXIT_ERROR)
    except TimeoutError:
        _fail(f"kesd did not answer within {client.timeout:g}s", EXIT_ERROR)
    except OSError as exc:
        _unreachable(client.path, exc)
    finally:
        events.close()
    _fail("kesd ended the stream (it is stopping)", EXIT_ERROR)


log_group.add_command(
    _follow_command("audit", render.audit_line, "Show audit events: one per request, admin ones included.")
)
log_group.add_command(_follow_command("error", render.error_line, "Show error-log events."))


@cli.group("cache", context_settings=CONTEXT)
def cache_group() -> None:
    """Manage the in-memory key cache."""


@cache_group.command("purge")
@json_option
@click.pass_context
def cache_purge(ctx: click.Context, as_json: bool) -> None:
    """Drop every cached key; kesd re-reads keys from the keystore on next use."""
    _emit(ctx, _call(ctx, "cache.purge"), lambda r: f"Purged {r.get('purged', 0)} keys from the cache\n")


@cli.command("log-level")
@click.argument(
    "level", shell_complete=lambda *_: [CompletionItem(w) for w in ("DEBUG", "INFO", "WARN", "ERROR", "off")]
)
@json_option
@click.pass_context
def log_level(ctx: click.Context, level: str, as_json: bool) -> None:
    """Set the error log's level.

    LEVEL is DEBUG, INFO, WARN or ERROR (optionally +N/-N), or off. The change lasts until kesd
    restarts or reloads its configuration.
    """
    result = _call(ctx, "log.level", {"level": level})
    _emit(ctx, result, lambda r: f"Error log level: {r.get('previous')} -> {r.get('level')}\n")


@cli.command()
@json_option
@click.pass_context
def metrics(ctx: click.Context, as_json: bool) -> None:
    """Print the Prometheus metrics (as GET /v1/metrics)."""
    _emit(ctx, _call(ctx, "metrics"), lambda r: str(r.get("text", "")))


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  kesctl completion bash > /etc/bash_completion.d/kesctl
    zsh:   kesctl completion zsh > "${fpath[1]}/_kesctl"
    fish:  kesctl completion fish > ~/.config/fish/completions/kesctl.fish
    """
    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "kesctl", "_KESCTL_COMPLETE").source(), nl=False)


main = cli  # the console script's entry point (and what packaging/completions.py reads)


if __name__ == "__main__":
    main(prog_name="kesctl")
