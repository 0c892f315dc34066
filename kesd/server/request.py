"""What a handler receives and returns: the parsed request and a (status, headers, body) response."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kesd.server.app import App, State

# (status, extra header lines as bytes, body). Content-Length is added by the protocol.
Response = tuple[int, bytes, bytes]

JSON = b"Content-Type: application/json\r\n"
NDJSON = b"Content-Type: application/x-ndjson\r\n"
TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"

EMPTY_OK: Response = (200, b"", b"")


class Request:
    """One HTTP request after routing: decoded path, route argument, body and caller identity."""

    __slots__ = ("app", "arg", "body", "identity", "ip", "method", "path", "state")

    def __init__(
        self, app: App, state: State, method: str, path: str, arg: str, body: bytes, identity: str, ip: str
    ) -> None:
        self.app = app
        self.state = state
        self.method = method
        self.path = path
        self.arg = arg
        self.body = body
        self.identity = identity
        self.ip = ip


def json_response(body: bytes, status: int = 200) -> Response:
    """A JSON response from already-encoded bytes."""
    return (status, JSON, body)


class Stream:
    """A handler's answer for the log routes: stream this subscription's lines until disconnect."""

    __slots__ = ("subscription",)

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
