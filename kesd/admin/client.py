"""A blocking client of the admin socket, as kesctl uses it (one connection per call).

Connection problems raise ``OSError`` (the caller turns them into exit code 3 and a hint); answers
that carry an error raise :class:`kesd.errors.KesError` with the server's status and message.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from kesd.admin.protocol import HEADER, MAX_RESPONSE, decode, encode, frame_length, make_request, result_of
from kesd.errors import KesError

DEFAULT_SOCKET = "/run/kesd/admin.sock"
SOCKET_ENV = "KESD_ADMIN_SOCKET"
DEFAULT_TIMEOUT = 35.0  # a little more than the server's operation timeout


def default_socket() -> str:
    """``$KESD_ADMIN_SOCKET`` or ``/run/kesd/admin.sock``."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class StreamEvent:
    """One item of a stream: a line, or a count of lines the server had to drop."""

    __slots__ = ("dropped", "line")

    def __init__(self, line: str | None = None, dropped: int | None = None) -> None:
        self.line = line
        self.dropped = dropped


class AdminClient:
    """Calls admin operations on the socket at ``path``."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, op: str, args: Mapping[str, str | None] | None = None) -> dict[str, Any]:
        """Perform ``op`` and return its result (``KesError`` for an error answer)."""
        with self._connect() as sock:
            _send(sock, encode(make_request(op, args)))  # type: ignore[arg-type]
            return result_of(_read(sock))

    def stream(self, op: str, args: Mapping[str, str | None] | None = None) -> Iterator[StreamEvent]:
        """Start a stream operation and yield its events until the server ends it."""
        with self._connect() as sock:
            _send(sock, encode(make_request(op, args)))  # type: ignore[arg-type]
            result_of(_read(sock))
            sock.settimeout(None)
            yield StreamEvent()  # the stream is established
            while True:
                try:
                    frame = _read(sock)
                except EOFError:
                    return
                if frame.get("end"):
                    return
                if isinstance(frame.get("line"), str):
                    yield StreamEvent(line=frame["line"])
                elif isinstance(frame.get("dropped"), int):
                    yield StreamEvent(dropped=frame["dropped"])

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock


def _send(sock: socket.socket, data: bytes) -> None:
    """Send a request; if kesd already hung up, its answer (a refusal) may still be waiting to be read."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def _read(sock: socket.socket) -> dict[str, Any]:
    """One frame from the server (``EOFError`` if the connection ends first)."""
    header = _exactly(sock, HEADER.size)
    try:
        length = frame_length(header, MAX_RESPONSE)
        return decode(_exactly(sock, length))
    except KesError as err:
        raise KesError(f"malformed answer from kesd: {err.message}", 500) from None


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError("kesd closed the connection")
        chunks += chunk
    return bytes(chunks)
