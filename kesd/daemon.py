"""The server's lifecycle: config → hardening → state → keystore → listen → serve → stop.

This is the one place that wires the pure core, the keystore and the HTTP layer together; the
``kes server`` and ``kesd`` commands are thin shells around :func:`run`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from kesd import errors, jsonfast, systemd
from kesd.admin.server import open_listener, with_admin
from kesd.audit import configure_audit_log
from kesd.cache import KeyCache
from kesd.config import Config, load_config
from kesd.crypto import Cipher, encode_key_version, new_key_version
from kesd.keystore import KeyStore, open_keystore
from kesd.logsetup import apply_levels
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
    reload_config: Callable[[], Config] | None = None  # re-reads the config on reload (None: its file)
    admin_socket: str | None = None  # the admin socket's path (None: only one systemd passes)


def prepare(config: Config, options: Options) -> tuple[App, socket.socket]:
    """Everything that can fail before serving: hardening, mlock, TLS, keystore, socket."""
    harden_process()
    if options.mlock or config.mlock:
        lock_memory()
    state: State = build_state(config)
    keystore = options.keystore or open_keystore(config.keystore.type, dict(config.keystore.settings))
    try:
        keystore.status()
    except errors.KesError as exc:
        raise errors.StartupError(f"keystore: {keystore.describe()} is not usable: {exc.message}") from None
    create_declared_keys(keystore, config.keys)
    cache_cfg = config.cache.effective()
    cache = KeyCache(
        keystore, expiry_any=cache_cfg.any, expiry_unused=cache_cfg.unused, expiry_offline=cache_cfg.offline
    )
    sock = listener(config.address)
    app = App(state, keystore, cache)
    follow_tls(app, state.tls)
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
    """Run the server until SIGTERM/SIGINT; returns the process exit code.

    Under systemd it reports readiness, status, reloads and stopping on ``$NOTIFY_SOCKET`` and
    pings the watchdog; ``SIGHUP`` reloads the configuration (see :func:`reload`).
    """
    options = options or Options()
    try:
        app, sock = prepare(config, options)
        admin = open_listener(options.admin_socket)
        loop = new_loop(options.loop)
    except (errors.StartupError, errors.ConfigError) as exc:
        return startup_failed(config, exc)
    except Exception as exc:  # a bug: the traceback goes to stderr, systemd still learns why
        systemd.notify(STATUS=f"start-up failed: {type(exc).__name__}: {exc}", ERRNO=_errno_of(exc))
        raise
    asyncio.set_event_loop(loop)
    runtime = Runtime(app, config, options)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.shutdown)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_soon)
    if options.banner is not None:
        options.banner(app, [_describe_loop(loop), f"json={jsonfast.backend()}"])
    try:
        loop.run_until_complete(with_admin(app, admin, runtime.main(sock)))
    except (OSError, errors.StartupError) as exc:
        return startup_failed(config, exc)
    finally:
        runtime.close()
        loop.close()
    return 0


def startup_failed(config: Config, exc: Exception) -> int:
    """Report a start-up failure on stderr, in the log and to systemd (``STATUS=``, ``ERRNO=``); 1."""
    line = startup_message(config, exc)
    if any(isinstance(h, systemd.JournalHandler) for h in log.handlers):
        log.error("start-up failed: %s", line)
    else:
        print(f"Error: {line}", file=sys.stderr)
    systemd.notify(STATUS=f"start-up failed: {line}", ERRNO=_errno_of(exc))
    return 1


def _errno_of(exc: BaseException) -> int:
    """The errno behind a start-up failure (the OSError it came from; EINVAL for a bad config)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    if "CAP_IPC_LOCK" in str(exc):
        return errno.EPERM
    return errno.EINVAL


def _describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


# --- systemd: activated socket, TLS follow-up, readiness, status, watchdog, reload -------------------

TLS_SOCKET_NAME = "tls"  # FileDescriptorName= of the API socket in kesd.socket
STATUS_INTERVAL = 5.0  # seconds between STATUS= updates
KEY_COUNT_INTERVAL = 30.0  # seconds between key counts (a keystore listing, in a worker thread)


def listener(address: str) -> socket.socket:
    """The API's listening socket: the one systemd passed (named ``tls``), else ``address`` bound here.

    A single activated socket with another name (not ``admin``) is taken too, so that a socket unit
    without ``FileDescriptorName=`` still works.
    """
    try:
        sock = systemd.take_listener(TLS_SOCKET_NAME)
        if sock is None:
            passed = systemd.listen_fds()
            others = [name for name, socks in passed.items() if socks and name != "admin"]
            if len(others) == 1 and len(passed[others[0]]) == 1:
                sock = systemd.take_listener(others[0])
    except OSError as exc:
        raise errors.StartupError(f"socket activation: {exc.strerror or exc}") from None
    if sock is None:
        return bind(address)
    log.info("serving on the socket passed by systemd (%s)", _format_address(sock.getsockname()))
    return sock


def _format_address(name: object) -> str:
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(name)


def follow_tls(app: App, ctx: ssl.SSLContext) -> None:
    """Make every new handshake on ``ctx`` use the TLS context of ``app``'s current state.

    The listener's context is fixed when serving starts; this hook (run for every ClientHello,
    with or without SNI) switches the connection to the context a reload installed.
    """

    def use_current(ssl_obj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
        current = app.state.tls
        if ssl_obj.context is not current:
            ssl_obj.context = current

    ctx.sni_callback = use_current


def check_config(config: Config) -> None:
    """Validate what start-up would use without serving: TLS files and self-test, keystore section."""
    build_state(config)
    kind = config.keystore.type
    if kind == "fs":
        path = os.path.abspath(config.keystore.path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise errors.StartupError(f"keystore.fs.path: '{config.keystore.path}' is not a directory")
        if not os.path.exists(path) and not os.path.isdir(os.path.dirname(path)):
            raise errors.StartupError(
                f"keystore.fs.path: the parent of '{config.keystore.path}' does not exist"
            )
    elif kind != "memory":
        open_keystore(kind, dict(config.keystore.settings))


_RUNTIMES: weakref.WeakKeyDictionary[App, Runtime] = weakref.WeakKeyDictionary()


async def reload(app: App) -> str | None:
    """Re-read the config, policies and TLS files and swap them in; None, or the one-line error.

    On error the old configuration keeps serving. Used by ``SIGHUP`` and the admin socket.
    """
    runtime = _RUNTIMES.get(app)
    if runtime is None:
        return "reload: the server is not running"
    return await runtime.reload()


class Runtime:
    """The running daemon's systemd side: readiness, STATUS= lines, the watchdog, reload and stop."""

    def __init__(self, app: App, config: Config, options: Options) -> None:
        self.app = app
        self.config = config
        self.options = options
        self.notifier = systemd.notifier()
        self.stop = asyncio.Event()
        self.keys: int | None = None
        self._counting = False
        self._last_count = -KEY_COUNT_INTERVAL
        self._last_requests = 0
        self._last_time = 0.0
        self._reload_lock = asyncio.Lock()
        self._timers: dict[str, asyncio.TimerHandle] = {}  # "status", "watchdog": the next tick
        self._tasks: set[asyncio.Task[object]] = set()
        _RUNTIMES[app] = self

    async def main(self, sock: socket.socket) -> None:
        """Serve until stopped, saying READY=1 once the server accepts connections."""
        server = asyncio.ensure_future(serve(self.app, sock, self.stop))
        for _ in range(3):  # let serve() register the listener (the socket itself already listens)
            await asyncio.sleep(0)
            if server.done():
                break
        if not server.done():
            self._ready()
        await server

    def _ready(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_requests, self._last_time = self.app.requests_total, loop.time()
        log.info("kesd is serving on %s", self.app.address)
        self.notifier.notify(READY=1, STATUS=f"ready on {self.app.address}")
        if self.notifier.enabled:
            self._count_keys()
            self._timers["status"] = loop.call_later(STATUS_INTERVAL, self._status_tick)
            watchdog = systemd.watchdog_seconds()
            if watchdog is not None:
                self._watchdog_tick(watchdog / 2)

    def status_line(self, rate: float | None = None) -> str:
        """What the server is doing, for ``STATUS=`` (e.g. ``serving 12 keys, 340 req/s``)."""
        if self.keys is None:
            return "serving" if rate is None else f"serving {rate:.0f} req/s"
        keys = f"serving {self.keys} key{'s' * (self.keys != 1)}"
        return keys if rate is None else f"{keys}, {rate:.0f} req/s"

    def _status_tick(self) -> None:
        loop = asyncio.get_running_loop()
        now, total = loop.time(), self.app.requests_total
        rate = (total - self._last_requests) / max(now - self._last_time, 1e-3)
        self._last_requests, self._last_time = total, now
        if not self._reload_lock.locked():
            self.notifier.notify(STATUS=self.status_line(rate))
        if now - self._last_count >= KEY_COUNT_INTERVAL:
            self._count_keys()
        self._timers["status"] = loop.call_later(STATUS_INTERVAL, self._status_tick)

    def _count_keys(self) -> None:
        """Count the keystore's keys in a worker thread (never on the loop), at most one at a time."""
        if self._counting:
            return
        loop = asyncio.get_running_loop()
        self._counting, self._last_count = True, loop.time()
        future = loop.run_in_executor(None, lambda: len(self.app.keystore.list("")))

        def done(fut: asyncio.Future[int]) -> None:
            self._counting = False
            if not fut.cancelled() and fut.exception() is None:
                self.keys = fut.result()

        future.add_done_callback(done)

    def _watchdog_tick(self, interval: float) -> None:
        """Ping the watchdog from the loop itself: a stuck loop stops the pings and systemd restarts us."""
        self.notifier.notify(WATCHDOG=1)
        self._timers["watchdog"] = asyncio.get_running_loop().call_later(
            interval, self._watchdog_tick, interval
        )

    def shutdown(self) -> None:
        """SIGTERM/SIGINT: stop accepting, finish the requests in flight, then exit 0."""
        if self.stop.is_set():
            return
        log.info("stopping: finishing the requests in flight")
        self.notifier.notify(STOPPING=1, STATUS="stopping: finishing the requests in flight")
        self.stop.set()

    def reload_soon(self) -> None:
        """SIGHUP: reload in a task (the signal handler must not block)."""
        task: asyncio.Task[object] = asyncio.ensure_future(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> str | None:
        """Build a new state from the re-read config and swap it in; the one-line error if that fails."""
        async with self._reload_lock:
            self.notifier.notify(
                RELOADING=1, MONOTONIC_USEC=systemd.monotonic_usec(), STATUS="reloading the configuration"
            )
            loop = asyncio.get_running_loop()
            try:
                config, state = await loop.run_in_executor(None, self._load)
            except (errors.ConfigError, errors.StartupError, OSError) as exc:
                line = startup_message(self.config, exc)
                log.error("reload failed, still serving the previous configuration: %s", line)
                self.notifier.notify(
                    READY=1, STATUS=f"reload failed, serving the previous configuration: {line}"
                )
                return line
            for warning in config.warnings:
                log.warning("%s", warning)
            for name in _restart_only_changes(self.config, config):
                log.warning("reload: a change to %s takes effect at the next restart", name)
            follow_tls(self.app, state.tls)
            self.app.state = state
            self.config = config
            apply_levels(config.log)
            configure_audit_log(config.log.audit_console)
            self.app.auditor.to_log = config.log.audit_console
            try:
                await loop.run_in_executor(None, create_declared_keys, self.app.keystore, config.keys)
            except errors.StartupError as exc:
                log.error("reload: %s", exc)
            log.info("configuration reloaded from %s", config.file)
            self.notifier.notify(READY=1, STATUS=self.status_line())
            return None

    def _load(self) -> tuple[Config, State]:
        """Read the config again (worker thread) and build its state; raises on any problem."""
        if self.options.reload_config is not None:
            config = self.options.reload_config()
        else:
            config = load_config(self.config.file)
        return config, build_state(config)

    def close(self) -> None:
        """Cancel the timers (the loop is about to close)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        _RUNTIMES.pop(self.app, None)


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    """The config fields that a reload cannot apply (they are fixed once the server runs)."""
    fields = ("address", "keystore", "cache", "mlock", "admin_socket")
    changed = [name for name in fields if getattr(old, name) != getattr(new, name)]
    if (old.client_auth != new.client_auth) and "tls.auth" not in changed:
        changed.append("whether a client certificate is optional (api.*.skip_auth)")
    return changed
