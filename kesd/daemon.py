"""The server's lifecycle: config → hardening → state → keystore → listen → serve → stop.

This is the one place that wires the pure core, the keystore and the HTTP layer together; the
``kes server`` and ``kesd`` commands are thin shells around :func:`run`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from kesd import errors, jsonfast
from kesd.cache import KeyCache
from kesd.config import Config
from kesd.crypto import Cipher, encode_key_version, new_key_version
from kesd.keystore import KeyStore, open_keystore
from kesd.memlock import harden_process, lock_memory
from kesd.server.app import App, State, bind, build_state, serve

log = logging.getLogger("kesd")


@dataclass
class Options:
    """Process settings that do not come from the config file."""

    mlock: bool = False
    loop: str = field(default_factory=lambda: os.environ.get("KESD_LOOP", "auto"))
    banner: Callable[[App, list[str]], None] | None = None
    keystore: KeyStore | None = None


def prepare(config: Config, options: Options) -> tuple[App, object]:
    """Everything that can fail before serving: hardening, mlock, TLS, keystore, socket."""
    harden_process()
    if options.mlock or config.mlock:
        lock_memory()
    state: State = build_state(config)
    keystore = options.keystore or open_keystore(config.keystore.type, dict(config.keystore.settings))
    keystore.status()
    create_declared_keys(keystore, config.keys)
    cache_cfg = config.cache.effective()
    cache = KeyCache(keystore, expiry_any=cache_cfg.any, expiry_unused=cache_cfg.unused)
    sock = bind(config.address)
    app = App(state, keystore, cache)
    host, port = sock.getsockname()[:2]
    app.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return app, sock


def create_declared_keys(keystore: KeyStore, names: tuple[str, ...]) -> None:
    """Create the config's ``keys:`` that do not exist yet (existing keys are kept as they are)."""
    for name in names:
        try:
            keystore.create(name, encode_key_version(new_key_version(Cipher.AES256, "")))
            log.info("created key '%s' declared in the config", name)
        except errors.KeyExists:
            pass
        except errors.KeystoreError as exc:
            raise errors.StartupError(f"keys: cannot create key '{name}': {exc.message}") from None


def startup_message(config: Config, exc: Exception) -> str:
    """One line for a start-up failure, naming the config file when a config field is at fault."""
    text = exc.line() if isinstance(exc, errors.ConfigError) else str(exc)
    if config.file and text.split(".", 1)[0].split(":", 1)[0] in _CONFIG_SECTIONS:
        return f"{config.file}: {text}"
    return text


_CONFIG_SECTIONS = frozenset({"address", "admin", "tls", "policy", "keystore", "cache", "log", "api", "keys"})


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """An event loop: uvloop when installed (or asked for), else asyncio's."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise errors.StartupError("KESD_LOOP=uvloop but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(config: Config, options: Options | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    options = options or Options()
    try:
        app, sock = prepare(config, options)
    except (errors.StartupError, errors.ConfigError) as exc:
        print(f"Error: {startup_message(config, exc)}", file=sys.stderr)
        return 1
    loop = new_loop(options.loop)
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if options.banner is not None:
        options.banner(app, [_describe_loop(loop), f"json={jsonfast.backend()}"])
    try:
        loop.run_until_complete(serve(app, sock, stop))  # type: ignore[arg-type]
    finally:
        loop.close()
    return 0


def _describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
