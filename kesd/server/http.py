"""HTTP/1.1 over one TLS connection: an ``asyncio.Protocol`` driving httptools.

This is the hot path, deliberately below any web framework (shared/design.md measures a framework
at 4× the cost). Per request: parse, route, authorize, call the handler; a handler that answers
synchronously is written at once, a coroutine becomes a task. Requests on one connection are
answered in order: while a task runs, further pipelined requests wait in a backlog and reading
pauses.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections import deque
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import httptools

from kesd import errors
from kesd.server import handlers
from kesd.server.proxy import forwarded_identity
from kesd.server.request import JSON, TEXT, Request, Response, Stream
from kesd.server.routes import CERT, NONE
from kesd.server.tls import peer_identity

if TYPE_CHECKING:
    from kesd.server.app import App

log = logging.getLogger("kesd.http")

MAX_HEADER_BYTES = 64 * 1024
READ_HEADER_TIMEOUT = 5.0
STREAM_BUFFER_LIMIT = 256 * 1024
IDLE_TIMEOUT = 90.0

_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Request Entity Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}


class _Clock:
    """The ``Date`` header, formatted once per second rather than per response."""

    second = 0
    header = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.header = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.header


def _status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    return line if line is not None else f"HTTP/1.1 {code} Status\r\n".encode()


def error_response(err: errors.KesError) -> Response:
    """The KES JSON error response for a typed error."""
    extra = b""
    if isinstance(err, errors.MethodNotAllowed):
        extra = b"Accept: " + err.expected.encode() + b"\r\n"
    return (err.status, JSON + extra, errors.error_body(err))


class _Pending:
    """A parsed request waiting for its turn on the connection, and what serving it learned."""

    __slots__ = (
        "body",
        "forwarded",
        "forwarded_for",
        "identity",
        "ip",
        "keep_alive",
        "method",
        "path",
        "start",
        "url",
    )

    def __init__(
        self,
        method: str,
        url: bytes,
        body: bytes,
        keep_alive: bool,
        forwarded: list[bytes] | None,
        forwarded_for: bytes,
    ) -> None:
        self.method = method
        self.url = url
        self.body = body
        self.keep_alive = keep_alive
        self.forwarded = forwarded
        self.forwarded_for = forwarded_for
        self.identity = ""
        self.ip = ""
        self.path = ""
        self.start = 0.0


class HTTPConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.identity = ""
        self.identity_error: errors.KesError | None = None
        self.ip = ""
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_bytes = 0
        self._in_headers = False
        self._in_message = False
        self._expect_continue = False
        self._proxy_header = b""
        self.is_proxy = False
        self._forwarded: list[bytes] = []
        self._forwarded_for = b""
        self._stream: Any = None
        self._busy = False
        self._closing = False
        self._backlog: deque[_Pending] = deque()
        self.last_activity = 0.0
        self.header_started = 0.0
        self.requests_in_flight = 0

    # --- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        self.identity, self.identity_error = peer_identity(transport.get_extra_info("ssl_object"))
        proxy = self.app.state.proxy
        if proxy is not None and self.identity in proxy.identities:
            self.is_proxy = True
            self._proxy_header = proxy.header
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.last_activity = self.app.loop.time()
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.app.connections.discard(self)
        if self._stream is not None:
            self._stream.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.app.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_and_close(400, TEXT, b"upgrades are not supported\n")
        except httptools.HttpParserError:
            self._send_and_close(400, TEXT, b"400 Bad Request\n")

    def _send_and_close(self, status: int, headers: bytes, body: bytes) -> None:
        """Answer a request that could not be parsed (audited like every other) and hang up."""
        path = unquote(self._url.partition(b"?")[0].decode("utf-8", "replace"))
        self.app.record(path, self.identity, self.ip, status, 0.0)
        if not self._closing:
            self.transport.write(
                _status_line(status)
                + headers
                + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )
        self._close()

    def check_timeouts(self, now: float) -> None:
        """Close the connection if a header is too slow or it has been idle too long (called ~1/s)."""
        if self._busy or self._closing:
            return
        if self._in_headers:
            expired = now - self.header_started > READ_HEADER_TIMEOUT
        else:
            expired = now - self.last_activity > IDLE_TIMEOUT
        if expired:
            self._close()

    def close_if_idle(self) -> bool:
        """Close now if no request is being served (graceful shutdown); True if closed."""
        if self._stream is not None:
            self._close()
            return True
        if self._busy or self._in_message:
            return False
        self._close()
        return True

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_size = 0
        self._header_bytes = 0
        self._in_headers = True
        self._in_message = True
        if self.is_proxy:
            self._forwarded = []
            self._forwarded_for = b""
        self.header_started = self.last_activity

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif self._proxy_header and self.is_proxy:
            lower = name.lower()
            if lower == self._proxy_header:
                self._forwarded.append(value)
            elif lower == b"x-forwarded-for":
                self._forwarded_for = value

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._expect_continue:
            # curl waits a second for this before sending bodies over 1 KiB (Go answers it too).
            self._expect_continue = False
            if not self._busy:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        # Keep at most 1 MB + 1 byte: enough for every route's limit and to detect overflow.
        if self._body_size <= 1_000_000:
            self._body.append(body)
        self._body_size += len(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        body = b"".join(self._body) if self._body else b""
        self._body = []
        request = _Pending(
            self.parser.get_method().decode(),
            self._url,
            body,
            self.parser.should_keep_alive(),
            self._forwarded if self.is_proxy else None,
            self._forwarded_for,
        )
        if self._busy:
            self._backlog.append(request)
            self.transport.pause_reading()
            return
        self._serve(request)

    # --- serving ------------------------------------------------------------------------------

    def _serve(self, pending: _Pending) -> None:
        """Route, authorize and answer one request; start a task if the handler is asynchronous."""
        app = self.app
        state = app.state
        pending.start = time.perf_counter()
        pending.identity, pending.ip = self.identity, self.ip
        raw_path, _, query = pending.url.partition(b"?")
        path = pending.path = unquote(raw_path.decode("utf-8", "surrogateescape"), errors="surrogateescape")
        try:
            if not path.startswith("/"):
                raise errors.KesError("invalid request path", 400)
            clean = _clean_path(path)
            if clean != path:
                return self._finish(pending, _redirect(clean, query))
            found = state.router.match(path)
            if found is None:
                if state.router.is_subtree_root(path):
                    return self._finish(pending, _redirect(path + "/", query))
                return self._finish(pending, handlers.not_found())
            route, arg = found
            if not route.accepts(pending.method):
                raise errors.MethodNotAllowed(pending.method, route.method)
            identity_error = self.identity_error
            if pending.forwarded is not None:
                pending.identity, pending.ip, identity_error = forwarded_identity(
                    state.proxy, pending.forwarded, pending.forwarded_for, self.ip
                )
            if route.auth != NONE and not route.skip_auth:
                if identity_error is not None:
                    raise identity_error
                if route.auth != CERT:
                    state.authorizer.authorize(pending.identity, path)
            if len(pending.body) > route.max_body:
                raise route.body_error
            req = Request(app, state, pending.method, path, arg, pending.body, pending.identity, pending.ip)
            result = route.handler(req)
        except errors.KesError as err:
            return self._finish(pending, error_response(err))
        except Exception:
            log.exception("internal error serving %s", path)
            return self._finish(pending, error_response(errors.InternalError()))
        if type(result) is tuple:
            return self._finish(pending, result)
        if isinstance(result, Stream):
            return self._start_stream(pending, result)
        self._busy = True
        self.requests_in_flight += 1
        task = app.loop.create_task(result)  # type: ignore[arg-type]
        timer = app.loop.call_later(route.timeout, self._timed_out, task, path) if route.timeout > 0 else None
        task.add_done_callback(lambda t: self._task_done(t, pending, timer))
        return None

    def _task_done(
        self, task: asyncio.Task[Response], pending: _Pending, timer: asyncio.TimerHandle | None
    ) -> None:
        if timer is not None:
            timer.cancel()
        self.requests_in_flight -= 1
        self._busy = False
        if task.cancelled():
            self._account(pending, 503)
            self._close()
            return
        exc = task.exception()
        if exc is None:
            response = task.result()
        elif isinstance(exc, errors.KesError):
            response = error_response(exc)
        else:
            log.error("internal error serving %s", pending.path, exc_info=exc)
            response = error_response(errors.InternalError())
        self._finish(pending, response)
        while self._backlog and not self._busy and not self._closing:
            self._serve(self._backlog.popleft())
        if not self._backlog and not self._closing:
            self.transport.resume_reading()

    def _timed_out(self, task: asyncio.Task[Response], path: str) -> None:
        """The route's timeout passed: like KES's write deadline, cut the connection."""
        log.warning("request %s timed out; closing the connection", path)
        task.cancel()

    def _account(self, pending: _Pending, status: int) -> None:
        """Metrics and the request's one audit event."""
        self.app.record(
            pending.path, pending.identity, pending.ip, status, time.perf_counter() - pending.start
        )

    def _finish(self, pending: _Pending, response: Response) -> None:
        """Write the response, account for it, and close if the client asked to."""
        status, headers, body = response
        self._account(pending, status)
        if self._closing:
            return
        self.transport.write(
            _status_line(status)
            + _Clock.date()
            + headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + (b"\r\n\r\n" if pending.keep_alive else b"\r\nConnection: close\r\n\r\n")
            + body
        )
        if not pending.keep_alive:
            self._close()

    # --- log streams --------------------------------------------------------------------------

    def _start_stream(self, pending: _Pending, stream: Stream) -> None:
        """Answer 200 and then send every event as one chunk until the client goes away."""
        self._account(pending, 200)
        if self._closing:
            stream.subscription.close()
            return
        self._busy = True
        self.requests_in_flight += 1
        self._stream = stream.subscription
        self.transport.write(
            _status_line(200)
            + _Clock.date()
            + b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.app.loop.create_task(self._pump(stream.subscription))

    async def _pump(self, subscription: Any) -> None:
        """Copy lines to the client; while its socket buffer is full, the subscription drops them."""
        try:
            while not self._closing:
                await subscription.wait()
                if self._closing:
                    break
                if self.transport.get_write_buffer_size() > STREAM_BUFFER_LIMIT:
                    await asyncio.sleep(0.05)  # leave lines queued; the bounded queue drops the excess
                    continue
                lines = subscription.pending()
                if lines:
                    data = b"".join(lines)
                    self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        finally:
            subscription.close()
            self.requests_in_flight -= 1

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.close()


def _clean_path(path: str) -> str:
    """The canonical form of ``path`` (Go's ``path.Clean``, keeping a trailing slash)."""
    if "//" not in path and "/." not in path:
        return path
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def _redirect(location: str, query: bytes) -> Response:
    """A 301 to the canonical path, keeping the query (what Go's ServeMux does)."""
    target = quote(location, safe="/!$&'()*+,;=:@-._~", errors="surrogateescape").encode()
    if query:
        target += b"?" + query
    body = b'<a href="' + target + b'">Moved Permanently</a>.\n\n'
    return (301, b"Location: " + target + b"\r\n" + TEXT, body)
