"""Audit and error events: one audit event per request, fanned out to stream subscribers and logs.

Every answered request becomes an audit event (time, client IP, identity, path, status, response
time in nanoseconds, as the Go SDK decodes it). Events go to every ``/v1/log/audit`` subscriber as a
JSON line, and to the ``kesd.audit`` logger when ``log.audit`` is on (stdout, or journald with
structured ``KESD_*`` fields). Error-log records (logger ``kesd`` at ERROR and above) go to
``/v1/log/error`` subscribers the same way.

A subscriber that does not keep up never slows the API or grows memory: its queue is bounded, new
events are dropped when it is full, and every drop is counted (``dropped``, exported as a metric).
Events carry names, identities and paths only: never key bytes, plaintexts or DEKs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from kesd import jsonfast

log = logging.getLogger("kesd.audit")

DEFAULT_QUEUE = 1000


class Subscription:
    """One stream subscriber: an async iterator of JSON lines over a bounded queue."""

    def __init__(self, hub: LogHub, max_queue: int) -> None:
        self._hub = hub
        self._queue: collections.deque[bytes] = collections.deque()
        self._max = max_queue
        self._wakeup: asyncio.Event = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def offer(self, line: bytes) -> None:
        """Queue ``line`` or drop it if the subscriber is too far behind."""
        if len(self._queue) >= self._max:
            self.dropped += 1
            self._hub.dropped += 1
            return
        self._queue.append(line)
        self._wakeup.set()

    def pending(self) -> list[bytes]:
        """Take every queued line at once."""
        lines = list(self._queue)
        self._queue.clear()
        self._wakeup.clear()
        return lines

    async def wait(self) -> None:
        """Wait until at least one line is queued (or the subscription is closed)."""
        if not self._queue and not self.closed:
            await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while not self.closed:
            await self.wait()
            for line in self.pending():
                yield line

    def close(self) -> None:
        """Stop receiving events."""
        if not self.closed:
            self.closed = True
            self._hub.subscribers.discard(self)
            self._wakeup.set()


class LogHub:
    """Fan-out of one event stream to its subscribers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Subscription] = set()
        self.events = 0
        self.dropped = 0

    def subscribe(self, max_queue: int = DEFAULT_QUEUE) -> Subscription:
        """A new subscriber that receives the events published from now on."""
        sub = Subscription(self, max_queue)
        self.subscribers.add(sub)
        return sub

    def publish(self, line: bytes) -> None:
        """Hand one JSON line to every subscriber (never blocks)."""
        for sub in self.subscribers:
            sub.offer(line)


AUDIT = LogHub("audit")
ERRORS = LogHub("error")


def subscribe(stream: str, max_queue: int = DEFAULT_QUEUE) -> Subscription:
    """Subscribe to ``"audit"`` or ``"error"`` events."""
    hub = {"audit": AUDIT, "error": ERRORS}.get(stream)
    if hub is None:
        raise ValueError(f"unknown log stream '{stream}' (audit or error)")
    return hub.subscribe(max_queue)


class Auditor:
    """Turns answered requests into audit events; cheap when nobody listens."""

    def __init__(self, *, to_log: bool) -> None:
        self.to_log = to_log

    def record(self, path: str, identity: str, ip: str, status: int, seconds: float) -> None:
        """Publish the audit event of one API request."""
        emit(path, identity, ip, status, seconds, to_log=self.to_log)


def emit(
    path: str,
    identity: str,
    ip: str,
    status: int,
    seconds: float,
    *,
    to_log: bool,
    extra: dict[str, int | str] | None = None,
) -> None:
    """Publish one audit event to stream subscribers and, if ``to_log``, to the ``kesd.audit`` logger.

    ``extra`` adds request fields (the admin socket's ``uid``/``pid``), also as ``KESD_*`` log fields.
    """
    AUDIT.events += 1
    if not AUDIT.subscribers and not to_log:
        return
    nanos = int(seconds * 1e9)
    request: dict[str, int | str] = dict(_request(ip, path, identity))
    if extra:
        request.update(extra)
    event = {"time": _rfc3339(time.time()), "request": request, "response": {"code": status, "time": nanos}}
    line = jsonfast.dumps(event)
    AUDIT.publish(line)
    if to_log:
        fields: dict[str, int | str] = {
            "kesd_identity": identity,
            "kesd_path": path,
            "kesd_status": status,
            "kesd_duration_us": nanos // 1000,
            "kesd_ip": ip,
        }
        if extra:
            fields.update({f"kesd_{k}": v for k, v in extra.items()})
        log.info(line.decode().rstrip("\n"), extra=fields)


def _request(ip: str, path: str, identity: str) -> dict[str, str]:
    request = {}
    if ip:
        request["ip"] = ip
    request["path"] = path
    if identity:
        request["identity"] = identity
    return request


def _rfc3339(ts: float) -> str:
    """RFC 3339 with microseconds, trailing zeros trimmed (Go's format for times)."""
    text = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


class ErrorStreamHandler(logging.Handler):
    """Publishes error-log records to ``/v1/log/error`` subscribers as ``{"message": …}`` lines."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y/%m/%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        ERRORS.events += 1
        if not ERRORS.subscribers:
            return
        try:
            message = self.format(record).rstrip("\n")
        except Exception:
            return
        ERRORS.publish(jsonfast.dumps({"message": message}))


def install_error_stream() -> None:
    """Attach the error-stream handler to the ``kesd`` logger (once)."""
    root = logging.getLogger("kesd")
    if not any(isinstance(h, ErrorStreamHandler) for h in root.handlers):
        root.addHandler(ErrorStreamHandler())


class StdoutAuditHandler(logging.Handler):
    """Writes audit records to stdout as the JSON lines KES prints (the default audit target)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        try:
            sys.stdout.write(record.getMessage() + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def configure_audit_log(enabled: bool) -> None:
    """Route ``kesd.audit`` records to stdout unless a handler (e.g. journald) is already installed."""
    log.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    log.propagate = False
    if enabled and not log.handlers:
        log.addHandler(StdoutAuditHandler())
