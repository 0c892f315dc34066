"""``kes``: the KES command-line client — keys, policies, identities, status, metrics, logs — and
``kes server``.

Commands, flags, environment variables and printed layouts follow KES's own ``kes`` tool so that
existing scripts and walkthroughs keep working.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import http.client
import importlib
import ipaddress
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kesd import __version__, identity
from kesd.cli import output
from kesd.client import (
    DEFAULT_ENDPOINT,
    APIError,
    Client,
    is_untrusted_certificate,
    parse_audit_event,
    parse_error_event,
)

SERVER_ENV = ["MINIO_KES_SERVER", "KES_SERVER", "MINIO_KMS_KES_ENDPOINT"]
API_KEY_ENV = ["MINIO_KES_API_KEY", "KES_API_KEY", "MINIO_KMS_KES_API_KEY"]
CERT_ENV = ["MINIO_KES_CERT_FILE", "KES_CLIENT_CERT", "MINIO_KES_CLIENT_CERT"]
KEY_ENV = ["MINIO_KES_KEY_FILE", "KES_CLIENT_KEY", "MINIO_KES_CLIENT_KEY"]
CA_ENV = "KES_CA"
TIMEOUT = 30.0
DEFAULT_KEY_FILE = "private.key"
DEFAULT_CERT_FILE = "public.crt"
_API_KEY_TEXT_MIN = 44  # base64 of 33 bytes, without the "kes:v1:" prefix

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


# --- connection settings shared by every command that talks to a server -------------------------


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the server: endpoint(s), credentials, server-certificate checks."""

    server: str
    api_key: str | None = field(default=None, repr=False)
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    insecure: bool = False


def _connection_option_list(short_server: bool) -> list[Callable[..., Any]]:
    """The server/credential flags; ``short_server`` gives ``--server`` its ``-s`` alias."""
    server_names = ("-s", "--server") if short_server else ("--server",)
    return [
        click.option(
            *server_names,
            "server",
            envvar=SERVER_ENV,
            default=DEFAULT_ENDPOINT,
            show_default=True,
            show_envvar=True,
            metavar="HOST[:PORT]",
            help="KES server endpoint(s), comma-separated.",
        ),
        click.option(
            "-a",
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            metavar="KEY",
            help="API key (kes:v1:…) to authenticate with.",
        ),
        click.option(
            "--cert",
            "cert_file",
            envvar=CERT_ENV,
            show_envvar=True,
            metavar="FILE",
            help="Client certificate file (instead of an API key).",
        ),
        click.option(
            "--key",
            "key_file",
            envvar=KEY_ENV,
            show_envvar=True,
            metavar="FILE",
            help="Private key file of the client certificate.",
        ),
        click.option(
            "--ca",
            envvar=CA_ENV,
            show_envvar=True,
            metavar="PATH",
            help="CA certificate file or directory to verify the server with.",
        ),
        click.option("-k", "--insecure", is_flag=True, help="Skip verification of the server's certificate."),
        click.option("-e", "--enclave", metavar="NAME", hidden=True, help="Accepted and ignored."),
    ]


def _with_connection(short_server: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding the connection flags and passing them on as one ``conn`` argument."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(
            *args: Any,
            server: str,
            api_key: str | None,
            cert_file: str | None,
            key_file: str | None,
            ca: str | None,
            insecure: bool,
            enclave: str | None,
            **kwargs: Any,
        ) -> Any:
            del enclave  # accepted for compatibility; a KES server has no enclaves any more
            api_key, cert_file, key_file = _credentials(api_key or None, cert_file or None, key_file or None)
            conn = Connection(server, api_key, cert_file, key_file, ca or None, insecure)
            return command(*args, conn=conn, **kwargs)

        for option in reversed(_connection_option_list(short_server)):
            wrapper = option(wrapper)
        return wrapper

    return decorate


connection_options = _with_connection(short_server=True)
"""Add the server/credential flags (``-s/--server``, ``-a/--api-key``, …) to a command."""

connection_options_long_server = _with_connection(short_server=False)
"""The same flags, but ``--server`` has no ``-s`` alias (``kes status`` uses ``-s`` for ``--short``)."""


def _credentials(
    api_key: str | None, cert: str | None, key: str | None
) -> tuple[str | None, str | None, str | None]:
    """Resolve an API key against a certificate/key pair: a command-line flag beats the environment.

    If both kinds come from the same place they conflict, and the client reports it.
    """
    if not (api_key and (cert or key)):
        return api_key, cert, key
    ctx = click.get_current_context()
    from_flags = {
        name
        for name in ("api_key", "cert_file", "key_file")
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    }
    if "api_key" in from_flags and not from_flags & {"cert_file", "key_file"}:
        return api_key, None, None
    if "api_key" not in from_flags and from_flags & {"cert_file", "key_file"}:
        return None, cert, key
    return api_key, cert, key


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(command)


def color_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Accept KES's ``--color`` flag (output is never colored, so the value does not matter)."""
    return click.option(
        "--color",
        type=click.Choice(["auto", "never", "always"]),
        default="auto",
        hidden=True,
        help="Accepted for compatibility; output is plain.",
    )(command)


@contextlib.contextmanager
def session(conn: Connection) -> Iterator[Client]:
    """A connected :class:`Client`; server and connection failures become one-line CLI errors."""
    client = _open(conn)
    try:
        yield client
    except APIError as err:
        raise click.ClickException(
            err.message.rstrip() or f"server answered with status {err.status}"
        ) from err
    except BrokenPipeError:
        raise  # our output went away (the client wraps its own socket errors): not a server problem
    except ConnectionError as err:
        raise click.ClickException(_connection_failure(err, conn)) from err
    except ValueError as err:  # the client's "the server sent an invalid …"
        raise click.ClickException(str(err)) from err
    finally:
        client.close()


def _open(conn: Connection) -> Client:
    """Build the client for ``conn``, prompting for the password of an encrypted client key."""
    for path in (conn.cert, conn.key):
        if path and not os.path.isfile(path):
            raise click.ClickException(f"cannot read '{path}': no such file")
    password = _key_password(conn.key)
    try:
        return Client(
            conn.server,
            cert=conn.cert,
            key=conn.key,
            api_key=conn.api_key,
            ca=conn.ca,
            insecure=conn.insecure,
            timeout=TIMEOUT,
            password=password,
        )
    except ssl.SSLError as err:
        reason = "wrong password?" if password is not None else "not a matching PEM certificate and key"
        raise click.ClickException(
            f"cannot load the client certificate '{conn.cert}' and key '{conn.key}': {reason}"
        ) from err
    except OSError as err:
        raise click.ClickException(f"cannot read '{err.filename or conn.ca}': {err.strerror}") from err
    except ValueError as err:
        raise click.ClickException(str(err)) from err


def _key_password(path: str | None) -> str | None:
    """Prompt for the password of an encrypted client key file; None for plain (or unreadable) files."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if b"ENCRYPTED" not in data:
        return None
    return click.prompt("Enter password for private key", hide_input=True, err=True)


def _connection_failure(err: ConnectionError, conn: Connection) -> str:
    """Explain a failed connection, with a hint for the two usual TLS problems."""
    if is_untrusted_certificate(err):
        return (
            f"{err}. The server's certificate is not trusted: use -k/--insecure to skip the check, "
            f"or --ca FILE (${CA_ENV}) to trust its issuer"
        )
    # Without a certificate, a server that requires one ends the connection after the handshake:
    # with a TLS alert, or (some servers) with a bare close.
    refused = (ssl.SSLError, http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
    if isinstance(err.__cause__, refused) and not (conn.api_key or conn.cert):
        return (
            f"{err}. The server probably requires a client certificate: use -a/--api-key "
            f"(${API_KEY_ENV[1]}) or ${CERT_ENV[1]} and ${KEY_ENV[1]}"
        )
    return str(err)


def _for_each(names: Sequence[str], action: Callable[[str], None]) -> None:
    """Apply ``action`` to every name, stopping at the first failure (naming the key if several)."""
    for name in names:
        try:
            action(name)
        except APIError as err:
            if len(names) > 1:
                raise APIError(err.status, f"key '{name}': {err.message.rstrip()}") from err
            raise


def _base64_arg(value: str, what: str) -> bytes:
    """Decode a standard-base64 command-line argument, or fail naming what it should have been."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise click.ClickException(f"invalid {what}: not base64") from err


def _emit(text: str) -> None:
    """Print prepared output exactly (it carries its own newlines)."""
    click.echo(text, nl=False)


def _json_unless_terminal(as_json: bool) -> bool:
    """JSON when asked for, or when stdout is not a terminal: what KES's dek/encrypt/decrypt do."""
    return as_json or not sys.stdout.isatty()


# --- kes ----------------------------------------------------------------------------------------


class _Main(click.Group):
    """The top-level group; ``kes server`` is imported on first use (it pulls in the whole server)."""

    lazy: ClassVar[dict[str, str]] = {"server": "kesd.cli.server"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """All command names, the lazy ones included."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The named command, importing a lazy one when it is first asked for."""
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module = importlib.import_module(self.lazy[cmd_name])
            self.add_command(getattr(module, cmd_name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Main, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kes", message="%(prog)s %(version)s")
def main() -> None:
    """Command-line client for KES, the key encryption service.

    \b
    Examples:
      $ kes identity new --ip "127.0.0.1" localhost
      $ export KES_SERVER=https://127.0.0.1:7373 KES_API_KEY=kes:v1:…
      $ kes key create my-key
      $ kes key dek my-key
    """


# --- kes key ------------------------------------------------------------------------------------


@main.group("key", context_settings=CONTEXT)
def key_group() -> None:
    """Create, list and use keys on a KES server.

    \b
    Examples:
      $ kes key create my-key
      $ kes key dek my-key
      $ kes key ls
    """


@key_group.command("create", context_settings=CONTEXT)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@connection_options
def key_create(names: tuple[str, ...], conn: Connection) -> None:
    """Create new cryptographic keys.

    \b
    Examples:
      $ kes key create my-key
      $ kes key create my-key1 my-key2
    """
    with session(conn) as client:
        _for_each(names, client.create_key)


@key_group.command("import", context_settings=CONTEXT)
@click.argument("name")
@click.argument("key", metavar="BASE64KEY")
@connection_options
def key_import(name: str, key: str, conn: Connection) -> None:
    """Import a 32-byte key (base64) under a name.

    \b
    Examples:
      $ kes key import my-key-2 Xlnr/nOgAWE5cA7GAsl3L2goCvmfs6KE0gNgB1T93wE=
    """
    raw = _base64_arg(key, "key")
    with session(conn) as client:
        client.import_key(name, raw)


@key_group.command("info", context_settings=CONTEXT)
@click.argument("name")
@json_option
@color_option
@connection_options
def key_info(name: str, as_json: bool, color: str, conn: Connection) -> None:
    """Show the algorithm, creation date and owner of a key.

    \b
    Examples:
      $ kes key info my-key
      $ kes key info my-key --json
    """
    with session(conn) as client:
        info = client.describe_key(name)
    _emit(output.compact_json(info) if as_json else output.key_info(info))


@key_group.command("ls", context_settings=CONTEXT)
@click.argument("pattern", default="*", required=False)
@json_option
@color_option
@connection_options
def key_ls(pattern: str, as_json: bool, color: str, conn: Connection) -> None:
    """List keys.

    All keys, or those whose name starts with PATTERN (a trailing * is a wildcard).

    \b
    Examples:
      $ kes key ls
      $ kes key ls 'my-key*'
      $ kes key ls --json
    """
    with session(conn) as client:
        names = client.list_keys(pattern)
    _emit(output.key_list_json(names) if as_json else output.key_list(names))


@key_group.command("rm", context_settings=CONTEXT)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@connection_options
def key_rm(names: tuple[str, ...], conn: Connection) -> None:
    """Delete keys.

    \b
    Examples:
      $ kes key rm my-key
      $ kes key rm my-key1 my-key2
    """
    with session(conn) as client:
        _for_each(names, client.delete_key)


@key_group.command("dek", context_settings=CONTEXT)
@click.argument("name")
@click.argument("context", required=False, metavar="[CONTEXT_BASE64]")
@json_option
@connection_options
def key_dek(name: str, context: str | None, as_json: bool, conn: Connection) -> None:
    """Generate a new data encryption key.

    Prints the key (plaintext) and the same key encrypted with NAME (ciphertext): for people on
    a terminal, as JSON when the output goes to a pipe or file (as KES does) or with --json.

    \b
    Examples:
      $ kes key dek my-key
      $ kes key dek my-key --json | jq -r .ciphertext
    """
    associated = _base64_arg(context, "context") if context else None
    with session(conn) as client:
        plaintext, ciphertext = client.generate_key(name, associated)
    if _json_unless_terminal(as_json):
        _emit(output.dek_json(plaintext, ciphertext))
    else:
        _emit(output.dek(plaintext, ciphertext))


@key_group.command("encrypt", context_settings=CONTEXT)
@click.argument("name")
@click.argument("message")
@json_option
@connection_options
def key_encrypt(name: str, message: str, as_json: bool, conn: Connection) -> None:
    """Encrypt a (text) message with a key.

    \b
    Examples:
      $ kes key encrypt my-key "Hello World"
    """
    with session(conn) as client:
        ciphertext = client.encrypt(name, message.encode())
    _emit(
        (output.labelled_json if _json_unless_terminal(as_json) else output.labelled)(
            "ciphertext", ciphertext
        )
    )


@key_group.command("decrypt", context_settings=CONTEXT)
@click.argument("name")
@click.argument("ciphertext", metavar="CIPHERTEXT_BASE64")
@click.argument("context", required=False, metavar="[CONTEXT_BASE64]")
@json_option
@connection_options
def key_decrypt(name: str, ciphertext: str, context: str | None, as_json: bool, conn: Connection) -> None:
    """Decrypt a ciphertext with a key.

    CIPHERTEXT and CONTEXT are base64; the plaintext is printed in base64.

    \b
    Examples:
      $ CIPHERTEXT=$(kes key dek my-key --json | jq -r .ciphertext)
      $ kes key decrypt my-key "$CIPHERTEXT"
    """
    sealed = _base64_arg(ciphertext, "ciphertext")
    associated = _base64_arg(context, "context") if context else None
    with session(conn) as client:
        plaintext = client.decrypt(name, sealed, associated)
    _emit(
        (output.labelled_json if _json_unless_terminal(as_json) else output.labelled)("plaintext", plaintext)
    )


@key_group.command("hmac", context_settings=CONTEXT)
@click.argument("name")
@click.argument("message")
@json_option
@connection_options
def key_hmac(name: str, message: str, as_json: bool, conn: Connection) -> None:
    """Compute the HMAC of a message with a key.

    Prints the HMAC-SHA256 in base64.

    \b
    Examples:
      $ kes key hmac my-key "Hello World"
    """
    with session(conn) as client:
        mac = client.hmac(name, message.encode())
    _emit((output.labelled_json if as_json else output.labelled)("hmac", mac))


# --- kes identity -------------------------------------------------------------------------------


class _IdentityGroup(click.Group):
    """``kes identity X`` with X not a subcommand means ``kes identity of X`` (newest KES)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Route an unknown first word to ``of``."""
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "of", self.commands["of"], list(args)
        return super().resolve_command(ctx, args)


@main.group("identity", cls=_IdentityGroup, invoke_without_command=True, context_settings=CONTEXT)
@click.pass_context
def identity_group(ctx: click.Context) -> None:
    """Create KES identities and compute them.

    Without a command, print a new API key and its identity.

    \b
    Examples:
      $ kes identity
      $ kes identity new --ip "127.0.0.1" localhost
      $ kes identity of client.crt
    """
    if ctx.invoked_subcommand is None:
        private = Ed25519PrivateKey.generate()
        public_id = identity.identity_of_public_key(private.public_key())
        _emit(output.api_key(identity.format_api_key(private), public_id))


def parse_duration(text: str) -> timedelta:
    """A Go-style duration (``720h``, ``1h30m``, ``90s``, ``1.5h``) as a timedelta."""
    value = text.strip()
    if value == "0":
        return timedelta(0)
    pos, seconds = 0, 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            raise ValueError(f"invalid duration '{text}'")
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration '{text}'")
    return timedelta(seconds=seconds)


def _expiry(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    """Click callback: parse ``--expiry`` (must be positive)."""
    try:
        duration = parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    if duration <= timedelta(0):
        raise click.BadParameter("the expiry must be positive")
    return duration


def _split(values: tuple[str, ...]) -> list[str]:
    """Flatten repeatable options that may also hold comma-separated lists (as pflag accepts)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _ips(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """Click callback: validate ``--ip`` values."""
    ips = _split(values)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError as err:
            raise click.BadParameter(f"'{ip}' is not an IP address") from err
    return ips


@identity_group.command("new", context_settings=CONTEXT)
@click.argument("subject", required=False)
@click.option(
    "--key", "key_path", metavar="FILE", help=f"Private key file to write. [default: {DEFAULT_KEY_FILE}]"
)
@click.option(
    "--cert", "cert_path", metavar="FILE", help=f"Certificate file to write. [default: {DEFAULT_CERT_FILE}]"
)
@click.option("--ip", "ips", multiple=True, callback=_ips, metavar="IP", help="Add an IP address SAN.")
@click.option("--dns", "dns", multiple=True, metavar="NAME", help="Add a DNS name SAN.")
@click.option(
    "--expiry",
    default="720h",
    show_default=True,
    callback=_expiry,
    metavar="DURATION",
    help="How long the certificate is valid.",
)
@click.option("--encrypt", is_flag=True, help="Encrypt the private key with a password (prompted).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
def identity_new(
    *,
    subject: str | None,
    key_path: str | None,
    cert_path: str | None,
    ips: list[str],
    dns: tuple[str, ...],
    expiry: timedelta,
    encrypt: bool,
    force: bool,
) -> None:
    """Create a private key and self-signed certificate.

    For a KES server or client. Without --key/--cert the files are private.key and
    public.crt in the current directory. SUBJECT becomes the certificate's common
    name (default: the identity).

    \b
    Examples:
      $ kes identity new --ip "127.0.0.1" localhost
      $ kes identity new --key=client.key --cert=client.crt MyApp
      $ kes identity new --key client.key --cert client.crt --encrypt --expiry 8760h MyApp
    """
    if bool(key_path) != bool(cert_path):
        raise click.UsageError("--key and --cert go together: give both, or neither for the default files")
    key_path = key_path or DEFAULT_KEY_FILE
    cert_path = cert_path or DEFAULT_CERT_FILE
    if os.path.abspath(key_path) == os.path.abspath(cert_path):
        raise click.UsageError("--key and --cert must name different files")
    if not force:
        for path, what in ((key_path, "private key"), (cert_path, "certificate")):
            if os.path.lexists(path):
                raise click.ClickException(
                    f"{what} file '{path}' already exists. Use --force to overwrite it"
                )
    password = None
    if encrypt:
        text = click.prompt(
            "Enter password for private key",
            hide_input=True,
            confirmation_prompt="Confirm password for private key",
            err=True,
        )
        password = text.encode()
    new = identity.new_identity(subject, ips=ips, dns=_split(dns), expiry=expiry, password=password)
    _write(key_path, new.private_key_pem, 0o600, force)
    try:
        _write(cert_path, new.certificate_pem, 0o644, force)
    except click.ClickException:
        with contextlib.suppress(OSError):
            os.unlink(key_path)
        raise
    _emit(output.identity_new(key_path, cert_path, new.identity))


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to a new file with exactly ``mode`` (replacing an existing one only if ``force``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError as err:
        raise click.ClickException(f"'{path}' already exists. Use --force to overwrite it") from err
    except OSError as err:
        raise click.ClickException(f"cannot create '{path}': {err.strerror}") from err
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as err:
        raise click.ClickException(f"cannot write '{path}': {err.strerror}") from err


@identity_group.command("of", context_settings=CONTEXT)
@click.argument("source", metavar="API_KEY|FILE")
def identity_of(source: str) -> None:
    """Compute the identity of a certificate or API key.

    Given an Ed25519 private key file, print its API key as well.

    \b
    Examples:
      $ kes identity of client.crt
      $ kes identity of kes:v1:ACQpoGqx3rHHjT938Hfu5hVVQJHZWSqVI2Xp1KlYxFVw
    """
    if source.startswith("kes:v1:") or not os.path.exists(source):
        _emit(output.identity_of(_identity_of_api_key(source)))
        return
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise click.ClickException(f"cannot read '{source}': {err.strerror}") from err
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            cert = x509.load_pem_x509_certificate(_first_block(data, b"CERTIFICATE"))
        except ValueError as err:
            raise click.ClickException(f"'{source}' holds no valid certificate") from err
        _emit(output.identity_of(identity.identity_of_certificate(cert)))
        return
    if b"PRIVATE KEY-----" in data:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as err:
            raise click.ClickException(f"'{source}' holds no readable, unencrypted private key") from err
        if not isinstance(private, Ed25519PrivateKey):
            raise click.ClickException(f"'{source}' holds no Ed25519 private key (only those have API keys)")
        public_id = identity.identity_of_public_key(private.public_key())
        _emit(output.api_key(identity.format_api_key(private), public_id))
        return
    raise click.ClickException(f"'{source}' holds no PEM certificate")


def _identity_of_api_key(text: str) -> str:
    """The identity of an API key argument, or a CLI error that also covers a missing file."""
    try:
        private = identity.parse_api_key(text)
    except ValueError as err:
        if text.startswith("kes:v1:"):
            raise click.ClickException(str(err)) from err
        # A long argument may be a mistyped API key: do not echo it.
        shown = f"'{text}'" if len(text) < _API_KEY_TEXT_MIN else "the argument"
        raise click.ClickException(f"{shown} is neither a file nor an API key") from err
    return identity.identity_of_public_key(private.public_key())


def _first_block(data: bytes, kind: bytes) -> bytes:
    """The first PEM block of type ``kind`` in ``data`` (a file may also hold other blocks)."""
    begin = b"-----BEGIN " + kind + b"-----"
    end = b"-----END " + kind + b"-----"
    start = data.index(begin)
    stop = data.index(end, start) + len(end)
    return data[start:stop] + b"\n"


# --- kes identity info / ls ---------------------------------------------------------------------


@identity_group.command("info", context_settings=CONTEXT)
@click.argument("identity_arg", required=False, metavar="[IDENTITY]")
@json_option
@color_option
@connection_options
def identity_info(identity_arg: str | None, as_json: bool, color: str, conn: Connection) -> None:
    """Show the policy, role and creator of an identity.

    Without IDENTITY, describe the identity this command authenticates
    with, including its policy's rules.

    \b
    Examples:
      $ kes identity info
      $ kes identity info 3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22
    """
    with session(conn) as client:
        if identity_arg is None:
            own = client.describe_self()
            _emit(output.self_info_json(own) if as_json else output.self_info(own))
            return
        info = client.describe_identity(identity_arg)
    if as_json:
        _emit(output.compact_json({"identity": identity_arg, **info}))
    else:
        _emit(output.identity_info(identity_arg, info))


@identity_group.command("ls", context_settings=CONTEXT)
@click.argument("prefix", default="", required=False)
@json_option
@color_option
@connection_options
def identity_ls(prefix: str, as_json: bool, color: str, conn: Connection) -> None:
    """List identities.

    All identities the server knows, or those starting with PREFIX.

    \b
    Examples:
      $ kes identity ls
      $ kes identity ls 'b804befd*'
    """
    with session(conn) as client:
        names = client.list_identities(prefix)
    _emit(output.name_list_json(names) if as_json else output.name_list("Identity", names))


# --- kes policy ---------------------------------------------------------------------------------


@main.group("policy", context_settings=CONTEXT)
def policy_group() -> None:
    """Inspect the policies of a KES server.

    \b
    Examples:
      $ kes policy ls
      $ kes policy info my-app
      $ kes policy show my-app
    """


@policy_group.command("ls", context_settings=CONTEXT)
@click.argument("pattern", default="*", required=False)
@json_option
@color_option
@connection_options
def policy_ls(pattern: str, as_json: bool, color: str, conn: Connection) -> None:
    """List policies.

    All policies, or those whose name starts with PATTERN (a trailing * is a wildcard).

    \b
    Examples:
      $ kes policy ls
      $ kes policy ls 'my-policy*'
    """
    with session(conn) as client:
        names = client.list_policies(pattern)
    _emit(output.name_list_json(names) if as_json else output.name_list("Policy", names))


@policy_group.command("info", context_settings=CONTEXT)
@click.argument("name")
@json_option
@color_option
@connection_options
def policy_info(name: str, as_json: bool, color: str, conn: Connection) -> None:
    """Show when and by whom a policy was created.

    \b
    Examples:
      $ kes policy info my-app
    """
    with session(conn) as client:
        info = client.describe_policy(name)
    _emit(output.compact_json(info) if as_json else output.policy_info(name, info))


@policy_group.command("show", context_settings=CONTEXT)
@click.argument("name")
@json_option
@connection_options
def policy_show(name: str, as_json: bool, conn: Connection) -> None:
    """Show the allow and deny rules of a policy.

    \b
    Examples:
      $ kes policy show my-app
      $ kes policy show my-app --json
    """
    with session(conn) as client:
        policy = client.read_policy(name)
    _emit(output.policy_show_json(policy) if as_json else output.policy_show(policy))


# --- kes ls -------------------------------------------------------------------------------------


@main.command("ls", context_settings=CONTEXT)
@click.argument("prefix", default="", required=False)
@click.option("-i", "--identity", "identities", is_flag=True, help="List identities instead of keys.")
@click.option("-p", "--policy", "policies", is_flag=True, help="List policies instead of keys.")
@json_option
@connection_options
def ls(prefix: str, identities: bool, policies: bool, as_json: bool, conn: Connection) -> None:
    """List keys, identities (-i) or policies (-p).

    All of them, or those starting with PREFIX.

    \b
    Examples:
      $ kes ls
      $ kes ls -p
      $ kes ls -i --json
    """
    if identities and policies:
        raise click.UsageError("'-p / --policy' and '-i / --identity' must not be used at the same time")
    with session(conn) as client:
        if identities:
            heading, names = "Identity", client.list_identities(prefix)
        elif policies:
            heading, names = "Policy", client.list_policies(prefix)
        else:
            heading, names = "Key", client.list_keys(prefix)
    _emit(output.name_list_json(names) if as_json else output.name_list(heading, names))


# --- kes status ---------------------------------------------------------------------------------


@main.command("status", context_settings=CONTEXT)
@click.option("-s", "--short", is_flag=True, help="Print only the endpoint line.")
@click.option("--api", "show_api", is_flag=True, help="List the server's APIs as well.")
@json_option
@color_option
@connection_options_long_server
def status(short: bool, show_api: bool, as_json: bool, color: str, conn: Connection) -> None:
    """Show the status of a KES server.

    Version, uptime, round-trip latency, OS, CPUs, memory and keystore state;
    with --api, every route with its timeout. With --json, the server's status
    document (or, with --api, its API list).

    \b
    Examples:
      $ kes status
      $ kes status --api
      $ kes status --json
    """
    with session(conn) as client:
        start = time.monotonic()
        info = client.status()
        latency = time.monotonic() - start
        apis = client.api() if show_api else []
        endpoint = client.endpoint
    if as_json:
        _emit(output.compact_json(apis if show_api else info))
        return
    text = output.status(endpoint, info, latency, short=short)
    if show_api:
        text += output.api_table(apis)
    _emit(text)


# --- kes metric ---------------------------------------------------------------------------------

_REDRAW = f"\x1b[{output.METRIC_LINES}F\x1b[J"  # cursor up over the last screen, clear to the end
_HIDE_CURSOR = "\x1b[?25l"
_SHOW_CURSOR = "\x1b[?25h"


def _rate(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """Click callback: parse ``--rate`` as a positive Go-style duration, in seconds."""
    try:
        duration = parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    if duration <= timedelta(0):
        raise click.BadParameter("the rate must be positive")
    return duration.total_seconds()


@contextlib.contextmanager
def _following() -> Iterator[None]:
    """End a following command quietly (status 0) on Ctrl-C or when the reader of its output goes away."""
    try:
        yield
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@main.command("metric", context_settings=CONTEXT)
@click.option(
    "--rate",
    default="5s",
    show_default=True,
    callback=_rate,
    metavar="DURATION",
    help="How often to fetch the metrics.",
)
@click.option("--once", is_flag=True, help="Fetch and print the metrics once, then exit.")
@json_option
@connection_options
def metric(rate: float, once: bool, as_json: bool, conn: Connection) -> None:
    """Watch the metrics of a KES server.

    Requests by outcome and their shares, requests per second, mean latency,
    uptime, memory, CPUs and threads, refreshed every --rate until Ctrl-C.
    With --json, one JSON object per fetch.

    \b
    Examples:
      $ kes metric
      $ kes metric --rate 1s
      $ kes metric --once --json
    """
    redraw = sys.stdout.isatty() and not as_json and not once
    previous: tuple[int, float] | None = None
    try:
        with _following(), session(conn) as client:
            if redraw:
                _emit(_HIDE_CURSOR)
            while True:
                snapshot = client.metrics()
                now = time.monotonic()
                per_second = 0.0
                if previous is not None and now > previous[1]:
                    per_second = max(0, snapshot.requests - previous[0]) / (now - previous[1])
                if as_json:
                    _emit(output.metric_json(snapshot))
                else:
                    _emit(
                        (_REDRAW if redraw and previous is not None else "")
                        + output.metric_view(snapshot, per_second)
                    )
                previous = (snapshot.requests, now)
                if once:
                    return
                time.sleep(max(0.0, rate - (time.monotonic() - now)))
    finally:
        if redraw:
            _emit(_SHOW_CURSOR)


# --- kes log ------------------------------------------------------------------------------------


@main.command("log", context_settings=CONTEXT)
@click.option("--audit", "audit", is_flag=True, help="Follow the audit log (the default).")
@click.option("--error", "error", is_flag=True, help="Follow the error log.")
@json_option
@connection_options
def log(audit: bool, error: bool, as_json: bool, conn: Connection) -> None:
    """Follow the audit or error log of a KES server.

    Prints every event as it happens until Ctrl-C: for the audit log one line
    per request (time, status, identity, client IP, path, response time), for
    the error log each message. With --json, the server's event lines as they are.

    \b
    Examples:
      $ kes log
      $ kes log --error
      $ kes log --json | jq .
    """
    if audit and error:
        raise click.UsageError("cannot display audit and error logs at the same time")
    with _following(), session(conn) as client, client.error_log() if error else client.audit_log() as lines:
        if not (as_json or error):
            _emit(output.AUDIT_HEADER)
        for line in lines:
            if as_json:
                _emit(line.decode("utf-8", errors="replace") + "\n")
            elif error:
                _emit(output.error_line(parse_error_event(line)))
            else:
                _emit(output.audit_line(parse_audit_event(line)))
