"""systemd integration without libsystemd: readiness notification, socket activation, watchdog, journald.

Everything here speaks the documented wire protocols directly (``sd_notify(3)``,
``sd_listen_fds(3)``, the journal's native protocol), so kesd needs no ``python3-systemd``. Each
feature is inert when systemd did not ask for it: no ``$NOTIFY_SOCKET`` means :func:`notify` sends
nothing, no ``$LISTEN_FDS`` for this process means no activated sockets.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping

SD_LISTEN_FDS_START = 3
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "kesd"
AUDIT_LOGGER = "kesd.audit"
AUDIT_IDENTIFIER = "kesd-audit"
FIELD_PREFIX = "kesd_"

_ACTIVATION_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# --- sd_notify ------------------------------------------------------------------------------------


def _notify_address(value: str) -> str | bytes | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: addresses and relative paths are not for a system daemon


class Notifier:
    """Sends ``sd_notify`` datagrams to the service manager (a no-op without ``$NOTIFY_SOCKET``)."""

    def __init__(self, address: str | None = None) -> None:
        value = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self.address = _notify_address(value) if value else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when a service manager listens for notifications."""
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send ``NAME=value`` lines (``notify(READY=1, STATUS="…")``); False if not sent."""
        if self.address is None or not fields:
            return False
        message = "".join(f"{name}={_one_line(value)}\n" for name, value in fields.items())
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message.encode(), self.address)
            except OSError:
                return False
        return True

    def close(self) -> None:
        """Release the datagram socket."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(value: object) -> str:
    """A notification value must not break the ``NAME=value\\n`` framing."""
    return str(value).replace("\n", " ")


_notifier: Notifier | None = None


def notifier() -> Notifier:
    """The process's notifier, reading ``$NOTIFY_SOCKET`` once."""
    global _notifier  # noqa: PLW0603 - one per process, created lazily
    if _notifier is None:
        _notifier = Notifier()
    return _notifier


def notify(**fields: object) -> bool:
    """Send ``sd_notify`` fields through the process's notifier (silent without ``$NOTIFY_SOCKET``)."""
    return notifier().notify(**fields)


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, as ``MONOTONIC_USEC=`` wants it with ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# --- watchdog -------------------------------------------------------------------------------------


def watchdog_seconds(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set for this process (``WatchdogSec=``), or None."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


# --- socket activation ----------------------------------------------------------------------------


def parse_listen_env(env: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The (fd, name) pairs that ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` pass to ``pid``.

    Empty when the variables are absent, malformed or meant for another process. Unnamed fds are
    called ``unknown``, as ``sd_listen_fds_with_names(3)`` does.
    """
    listen_pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not listen_pid.isdigit() or int(listen_pid) != pid or not count.isdigit():
        return []
    n = int(count)
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    if len(names) != n:
        names = ["unknown"] * n
    return [(SD_LISTEN_FDS_START + i, names[i] or "unknown") for i in range(n)]


_activated: dict[str, list[socket.socket]] | None = None
_activated_lock = threading.Lock()


def listen_fds() -> dict[str, list[socket.socket]]:
    """The sockets systemd passed to this process, by ``FileDescriptorName=`` (name → sockets).

    The first call takes them from the environment (checking ``LISTEN_PID``), marks them
    close-on-exec and unsets the variables so children do not inherit them; later calls return the
    same socket objects. Use :func:`take_listener` to claim one for serving.
    """
    global _activated  # noqa: PLW0603 - the environment can be consumed only once
    with _activated_lock:
        if _activated is None:
            _activated = {}
            for fd, name in parse_listen_env(os.environ, os.getpid()):
                try:
                    os.set_inheritable(fd, False)
                    sock = socket.socket(fileno=fd)
                except OSError:
                    continue  # not a socket (e.g. a stored fd): not ours to serve on
                _activated.setdefault(name, []).append(sock)
            for var in _ACTIVATION_VARS:
                os.environ.pop(var, None)
        return {name: list(socks) for name, socks in _activated.items()}


def take_listener(name: str) -> socket.socket | None:
    """Claim the activated listening socket called ``name`` (non-blocking), or None if there is none.

    A socket can be claimed once; an activated socket that is not a listening stream socket is
    refused with :class:`OSError` so that a wrong unit file fails loudly.
    """
    listen_fds()
    with _activated_lock:
        assert _activated is not None
        socks = _activated.get(name)
        if not socks:
            return None
        sock = socks.pop(0)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise OSError(errno.EINVAL, f"activated socket '{name}' is not a listening stream socket")
    sock.setblocking(False)
    return sock


# --- journald -------------------------------------------------------------------------------------

# logging levels → syslog priorities (journal PRIORITY=).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a ``logging`` level (CRITICAL→2 … DEBUG→7)."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def journal_field_name(attribute: str) -> str | None:
    """``kesd_status`` → ``KESD_STATUS``; None for names that are not valid journal fields."""
    name = attribute.upper()
    if not name or len(name) > 64 or name[0] == "_" or name[0].isdigit():
        return None
    if not all(c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in name):
        return None
    return name


def encode_entry(fields: list[tuple[str, str | bytes]]) -> bytes:
    """One journal entry in the native protocol (values with newlines get the binary framing)."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace") if isinstance(value, str) else value
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """A ``logging`` handler that writes native journal entries to journald.

    Each record carries ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER`` (``kesd``, or
    ``kesd-audit`` for the audit logger), ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, ``LOGGER`` and
    every record attribute named ``kesd_*`` as a ``KESD_*`` field, so ``journalctl KESD_STATUS=403``
    finds audit events. Entries too large for one datagram travel in a sealed memfd.
    """

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.setFormatter(logging.Formatter("%(message)s"))

    def fields(self, record: logging.LogRecord) -> list[tuple[str, str | bytes]]:
        """The journal fields of one record."""
        ident = AUDIT_IDENTIFIER if record.name == AUDIT_LOGGER else self.identifier
        out: list[tuple[str, str | bytes]] = [
            ("MESSAGE", self.format(record)),
            ("PRIORITY", str(priority(record.levelno))),
            ("SYSLOG_IDENTIFIER", ident),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", str(record.lineno)),
            ("CODE_FUNC", record.funcName),
            ("LOGGER", record.name),
        ]
        if record.threadName and record.threadName != "MainThread":
            out.append(("THREAD_NAME", record.threadName))
        for attribute, value in record.__dict__.items():
            if attribute.startswith(FIELD_PREFIX) and value is not None:
                name = journal_field_name(attribute)
                if name is not None:
                    out.append((name, str(value)))
        return out

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record; never raises into the logging caller."""
        try:
            self.send(encode_entry(self.fields(record)))
        except Exception:  # a log handler reports through handleError, never raises
            self.handleError(record)

    def send(self, entry: bytes) -> None:
        """Send an encoded entry as one datagram, or through a sealed memfd when it is too large."""
        try:
            self._sock.sendto(entry, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(entry)

    def _send_memfd(self, entry: bytes) -> None:
        fd = os.memfd_create("kesd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, entry)
            with contextlib.suppress(OSError):
                import fcntl

                seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            fds = array.array("i", [fd])
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the socket along with the handler."""
        try:
            self._sock.close()
        finally:
            super().close()


def journal_available(path: str = JOURNAL_SOCKET) -> bool:
    """True when a journald socket accepts datagrams at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """True when stderr is the journal stream systemd connected (``$JOURNAL_STREAM`` = its dev:inode)."""
    env = os.environ if env is None else env
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)
