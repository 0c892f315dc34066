"""The admin socket: a Unix socket that only root (and kesd's own user) may use.

The socket file is created mode 0600 inside a 0700 directory, or taken from systemd when the unit
passes a socket named ``admin``. File modes are only the first fence: every connection's peer is
identified with ``SO_PEERCRED`` and anyone but uid 0 and the daemon's own uid is refused (and
audited). A lock file next to the socket makes a second kesd on the same path fail instead of
stealing it; a socket file left by a crash is replaced. Requests are bounded in size
(:data:`~kesd.admin.protocol.MAX_REQUEST`) and time; malformed input gets an error answer and never
reaches beyond its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import secrets
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from kesd import audit, errors
from kesd.admin import operations
from kesd.admin.protocol import (
    BAD_REQUEST,
    BUSY,
    FORBIDDEN,
    HEADER,
    INTERNAL,
    MAX_REQUEST,
    TIMEOUT,
    TOO_LARGE,
    Request,
    decode,
    dropped_frame,
    encode,
    end_frame,
    failure,
    failure_of,
    frame_length,
    line_frame,
    ok,
    parse_request,
)

if TYPE_CHECKING:
    from kesd.server.app import App

log = logging.getLogger("kesd.admin")

FRAME_TIMEOUT = 5.0  # a whole request frame must arrive within this time
OPERATION_TIMEOUT = 30.0  # an operation that takes longer is answered 504
WRITE_TIMEOUT = 30.0  # a reader that takes longer to accept an answer (or stream lines) is dropped
MAX_CONNECTIONS = 32
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, without the terminating NUL
ACTIVATED_NAME = "admin"  # FileDescriptorName= of the admin socket in kesd.socket
LOG_STREAMS = ("audit", "error")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_UNKNOWN_PATH = "admin:?"
_ELSEWHERE = " (set admin.socket or --admin-socket to another path, or --admin-socket '' for none)"


# --- the socket -----------------------------------------------------------------------------------


class Listener:
    """The listening admin socket and what it takes to release it."""

    def __init__(
        self,
        sock: socket.socket,
        path: str,
        *,
        activated: bool,
        lock_fd: int | None = None,
        inode: int | None = None,
    ) -> None:
        self.sock = sock
        self.path = path
        self.activated = activated
        self._lock_fd = lock_fd
        self._inode = inode

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still ours (never an activated one's)."""
        self.sock.close()
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            self._inode = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock file stays: unlinking it would race a starting kesd
            self._lock_fd = None


def open_listener(path: str | None) -> Listener | None:
    """The admin socket: systemd's socket named ``admin`` if activated, else a new one at ``path``.

    Returns None when neither exists (no admin socket). Raises ``StartupError`` with one clear line
    when the socket cannot be had, e.g. ``admin socket: another kesd is serving /run/kesd/admin.sock``.
    """
    from kesd import systemd

    try:
        sock = systemd.take_listener(ACTIVATED_NAME)
    except OSError as exc:
        raise errors.StartupError(f"admin socket: {exc.strerror or exc}") from None
    if sock is not None:
        if sock.family != socket.AF_UNIX:
            sock.close()
            raise errors.StartupError("admin socket: the activated socket 'admin' is not a Unix socket")
        name = sock.getsockname()
        return Listener(sock, name if isinstance(name, str) and name else (path or ""), activated=True)
    if not path:
        return None
    return _bind(os.path.abspath(path))


def _bind(path: str) -> Listener:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise errors.StartupError(f"admin socket: path '{path}' is longer than {MAX_SOCKET_PATH} bytes")
    directory = os.path.dirname(path)
    _prepare_directory(directory)
    lock_fd = _lock(path)
    try:
        _clear_stale(path)
        sock, inode = _bind_atomically(directory, path)
    except BaseException:
        os.close(lock_fd)
        raise
    return Listener(sock, path, activated=False, lock_fd=lock_fd, inode=inode)


def _prepare_directory(directory: str) -> None:
    """Create the socket's directory mode 0700 if missing; warn if an existing one is open to others."""
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise errors.StartupError(
            f"admin socket: cannot create directory '{directory}': {exc.strerror}{_ELSEWHERE}"
        ) from None
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise errors.StartupError(f"admin socket: '{directory}' is not a directory")
    if st.st_mode & 0o077:
        log.warning(
            "admin socket: directory %s has mode %04o, 0700 is expected (other users are still refused)",
            directory,
            stat.S_IMODE(st.st_mode),
        )


def _lock(path: str) -> int:
    """Hold ``path.lock`` for the daemon's life: one kesd per admin socket path."""
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise errors.StartupError(
            f"admin socket: cannot open lock file '{lock_path}': {exc.strerror}{_ELSEWHERE}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise errors.StartupError(f"admin socket: another kesd is serving {path}") from None
    return fd


def _clear_stale(path: str) -> None:
    """Accept a missing or dead socket file at ``path``; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.StartupError(
            f"admin socket: '{path}' exists and is not a socket (remove it or set admin.socket elsewhere)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("admin socket: replacing the stale socket file %s", path)
        return
    except OSError as exc:
        raise errors.StartupError(
            f"admin socket: cannot probe the existing '{path}': {exc.strerror}"
        ) from None
    finally:
        probe.close()
    raise errors.StartupError(f"admin socket: another kesd is serving {path}")


def _bind_atomically(directory: str, path: str) -> tuple[socket.socket, int]:
    """Bind under a temporary name, make it 0600, then rename it over ``path`` (never looser)."""
    tmp = os.path.join(directory, f".kesd-{secrets.token_hex(4)}")
    if len(os.fsencode(tmp)) > MAX_SOCKET_PATH:
        raise errors.StartupError(f"admin socket: directory '{directory}' is too long for a socket path")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(MAX_CONNECTIONS)
        os.rename(tmp, path)
        inode = os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise errors.StartupError(
            f"admin socket: cannot listen on '{path}': {exc.strerror}{_ELSEWHERE}"
        ) from None
    sock.setblocking(False)
    return sock, inode


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(data)
    return pid, uid, gid


# --- the server -----------------------------------------------------------------------------------


class AdminServer:
    """Serves admin requests on a listener for one app, one connection task per client."""

    def __init__(self, app: App, listener: Listener) -> None:
        self.app = app
        self.listener = listener
        self.own_uid = os.geteuid()
        self.allowed_uids = frozenset({0, self.own_uid})
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._admitted: set[asyncio.Task[Any]] = set()  # connections of allowed peers
        self._busy: set[asyncio.Task[Any]] = set()  # performing an operation right now
        self._samples: deque[tuple[float, int]] = deque(maxlen=11)
        self._sampler: asyncio.TimerHandle | None = None
        self._closing = False

    async def start(self) -> None:
        """Start accepting connections and sampling the request rate."""
        self._server = await asyncio.start_unix_server(self._accept, sock=self.listener.sock)
        self._sample()
        log.info("admin socket listening on %s", self.listener.path)

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, end streams and idle connections, let operations in flight finish (bounded)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._sampler is not None:
            self._sampler.cancel()
        for task in list(self._tasks - self._busy):
            task.cancel()  # idle, or streaming: nothing is lost
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.listener.close()

    # -- figures for status --

    def requests_per_second(self) -> float:
        """API requests per second over the last ten seconds (since start while younger)."""
        now, total = time.monotonic(), self.app.requests_total
        if self._samples and now - self._samples[0][0] >= 0.5:
            then, before = self._samples[0]
            return (total - before) / (now - then)
        uptime = max(now - self.app.started_monotonic, 1e-3)
        return total / uptime

    def admin_connections(self) -> int:
        """Admin connections of allowed peers open right now."""
        return len(self._admitted)

    def _sample(self) -> None:
        self._samples.append((time.monotonic(), self.app.requests_total))
        self._sampler = asyncio.get_running_loop().call_later(1.0, self._sample)

    # -- connections --

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            pass  # the server is closing
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the peer went away or stopped reading
        except Exception:
            log.exception("admin socket: a connection failed")
        finally:
            self._tasks.discard(task)
            self._admitted.discard(task)
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
        except (OSError, AttributeError, struct.error):
            log.warning("admin socket: cannot identify a peer (SO_PEERCRED failed): connection closed")
            return
        task = asyncio.current_task()
        assert task is not None
        if uid not in self.allowed_uids:
            if len(self._tasks) - len(self._admitted) > MAX_CONNECTIONS:
                self._audit(uid, pid, _UNKNOWN_PATH, FORBIDDEN, time.monotonic())
                return  # a flood of refused peers gets no answer, and never starves root's slots
            await self._refuse(reader, writer, uid, pid)
            return
        self._admitted.add(task)
        if len(self._admitted) > MAX_CONNECTIONS:
            started = time.monotonic()
            path = await self._read_path(reader)
            self._audit(uid, pid, path, BUSY, started)
            await self._send(writer, failure(BUSY, f"too many admin connections (at most {MAX_CONNECTIONS})"))
            return
        while not self._closing:
            started = time.monotonic()
            try:
                message = await asyncio.wait_for(_read_frame(reader), FRAME_TIMEOUT)
            except asyncio.IncompleteReadError:
                return  # the client closed the connection
            except TimeoutError:
                await self._send(
                    writer,
                    failure(BAD_REQUEST, f"request timeout: no complete request in {FRAME_TIMEOUT:g}s"),
                )
                return
            except errors.KesError as err:
                self._audit(uid, pid, _UNKNOWN_PATH, err.status, started)
                await self._send(writer, failure_of(err))
                if err.status == TOO_LARGE:
                    return  # the oversized payload is not read: the framing is lost
                continue
            try:
                request = parse_request(message)
            except errors.KesError as err:
                self._audit(uid, pid, _UNKNOWN_PATH, err.status, started)
                await self._send(writer, failure_of(err))
                continue
            if request.op.stream:
                await self._stream(reader, writer, request, uid, pid, started)
                return
            self._busy.add(task)
            try:
                status, answer = await self._perform(request, uid, pid)
                self._audit(uid, pid, request.audit_path, status, started)
                await self._send(writer, answer)
            finally:
                self._busy.discard(task)

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: int, pid: int
    ) -> None:
        """Read the peer's request (to name it in the audit record), then answer 403 and close."""
        started = time.monotonic()
        path = await self._read_path(reader)
        log.warning("admin socket: refused uid %d (pid %d) asking for %s", uid, pid, path)
        self._audit(uid, pid, path, FORBIDDEN, started)
        await self._send(writer, failure(FORBIDDEN, self._refusal(uid)))

    async def _read_path(self, reader: asyncio.StreamReader) -> str:
        """Read the request of a peer that will be turned away; what it asked for, for the audit."""
        with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError, errors.KesError):
            return parse_request(await asyncio.wait_for(_read_frame(reader), FRAME_TIMEOUT)).audit_path
        return _UNKNOWN_PATH

    def _refusal(self, uid: int) -> str:
        if self.own_uid == 0:
            allowed = "root"
        else:
            try:
                name = pwd.getpwuid(self.own_uid).pw_name
            except KeyError:
                name = str(self.own_uid)
            allowed = f"root and kesd's own user {name} (uid {self.own_uid})"
        return f"permission denied: the kesd admin socket serves only {allowed}; you are uid {uid}"

    async def _perform(self, request: Request, uid: int, pid: int) -> tuple[int, dict[str, Any]]:
        ctx = operations.Context(
            app=self.app,
            uid=uid,
            pid=pid,
            socket_path=self.listener.path,
            requests_per_second=self.requests_per_second,
            admin_connections=self.admin_connections,
        )
        try:
            result = await asyncio.wait_for(operations.run(ctx, request), OPERATION_TIMEOUT)
        except errors.KesError as err:
            return err.status, failure_of(err)
        except TimeoutError:
            return TIMEOUT, failure(
                TIMEOUT, f"{request.op.name} did not finish within {OPERATION_TIMEOUT:g}s"
            )
        except Exception:
            log.exception("admin socket: operation %s failed", request.op.name)
            return INTERNAL, failure(INTERNAL, f"{request.op.name} failed: internal error (see kesd's log)")
        return 200, ok(result)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        uid: int,
        pid: int,
        started: float,
    ) -> None:
        """Send log lines as they happen until the client hangs up (or kesd stops)."""
        name = request.args["stream"]
        if name not in LOG_STREAMS:
            self._audit(uid, pid, request.audit_path, BAD_REQUEST, started)
            await self._send(
                writer, failure(BAD_REQUEST, f"unknown log stream '{name[:32]}' (audit or error)")
            )
            return
        self._audit(uid, pid, request.audit_path, 200, started)
        subscription = audit.subscribe(name)
        hangup = asyncio.ensure_future(reader.read(1))  # EOF (or any byte) ends the stream
        waiter: asyncio.Future[None] | None = None
        try:
            await self._send(writer, ok({"stream": name}))
            reported = 0
            while not subscription.closed:
                waiter = asyncio.ensure_future(subscription.wait())
                done, _ = await asyncio.wait({waiter, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if hangup in done:
                    return
                for line in subscription.pending():
                    writer.write(encode(line_frame(line.decode("utf-8", "replace").rstrip("\n"))))
                if subscription.dropped != reported:
                    reported = subscription.dropped
                    writer.write(encode(dropped_frame(reported)))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                writer.write(encode(end_frame("kesd is stopping")))
            raise
        finally:
            subscription.close()
            hangup.cancel()
            if waiter is not None:
                waiter.cancel()

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(encode(message))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    def _audit(self, uid: int, pid: int, path: str, status: int, started: float) -> None:
        """One audit event per admin request, refusals included: to stream subscribers and the audit log."""
        audit.emit(
            path,
            f"unix:uid={uid}",
            "",
            status,
            time.monotonic() - started,
            to_log=True,
            extra={"uid": uid, "pid": pid},
        )


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One request frame's JSON object (``IncompleteReadError`` at EOF, ``KesError`` if malformed)."""
    header = await reader.readexactly(HEADER.size)
    length = frame_length(header, MAX_REQUEST)
    return decode(await reader.readexactly(length))


async def start_admin_server(app: App, listener: Listener | None) -> AdminServer | None:
    """Serve the admin socket for ``app`` (None when there is no listener); close it with ``close()``."""
    if listener is None:
        return None
    server = AdminServer(app, listener)
    await server.start()
    return server


async def with_admin(app: App, listener: Listener | None, main: Coroutine[Any, Any, None]) -> None:
    """Serve the admin socket (if any) while ``main`` runs; close it when ``main`` ends."""
    try:
        admin = await start_admin_server(app, listener)
    except BaseException:
        main.close()
        if listener is not None:
            listener.close()
        raise
    try:
        await main
    finally:
        if admin is not None:
            await admin.close()
