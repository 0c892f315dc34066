"""The admin wire format (pure): length-prefixed JSON frames, versioned requests, the operation table.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (one object). A
request is ``{"v": 1, "op": "<name>", "args": {...}}``; an answer is ``{"v": 1, "ok": true,
"result": {...}}`` or ``{"v": 1, "ok": false, "error": {"status": N, "message": "..."}}``. The full
description is docs/admin-protocol.md. Errors are :class:`kesd.errors.KesError` with an HTTP-like
status, so one table of statuses serves the API, the admin socket and kesctl.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kesd.errors import KesError

VERSION = 1
HEADER = struct.Struct(">I")
MAX_REQUEST = 1 << 20  # bytes of one request frame's JSON
MAX_RESPONSE = 64 << 20  # bytes of one answer frame's JSON (a long key list, the metrics text)

# Statuses used by the protocol itself (operations add the KES ones: 400, 404, 406, 502, ...).
BAD_REQUEST = 400
FORBIDDEN = 403
TOO_LARGE = 413
INTERNAL = 500
BUSY = 503
TIMEOUT = 504


@dataclass(frozen=True)
class Operation:
    """One admin operation: its name, its string arguments and whether it answers with a stream."""

    name: str
    summary: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    stream: bool = False
    target: str = ""  # the argument that names the object acted on, for the audit record
    secret: tuple[str, ...] = ()  # arguments never echoed anywhere (key bytes)


def _table(*ops: Operation) -> Mapping[str, Operation]:
    return MappingProxyType({op.name: op for op in ops})


OPERATIONS: Mapping[str, Operation] = _table(
    Operation("hello", "protocol and server version"),
    Operation("status", "server state: version, uptime, keystore, keys, connections, load, memory"),
    Operation("reload", "re-read the configuration, as SIGHUP does, and report the outcome"),
    Operation("config.check", "validate a configuration file", required=("file",), target="file"),
    Operation("key.ls", "list keys matching a pattern", optional=("pattern",), target="pattern"),
    Operation("key.info", "describe a key", required=("name",), target="name"),
    Operation("key.create", "create a new random key", required=("name",), target="name"),
    Operation(
        "key.import",
        "import 32 key bytes (base64)",
        required=("name", "key"),
        optional=("cipher",),
        target="name",
        secret=("key",),
    ),
    Operation("key.rm", "delete a key", required=("name",), target="name"),
    Operation("policy.ls", "list policies matching a pattern", optional=("pattern",), target="pattern"),
    Operation(
        "policy.show", "a policy's allow and deny rules and identities", required=("name",), target="name"
    ),
    Operation("identity.ls", "list identities matching a pattern", optional=("pattern",), target="pattern"),
    Operation("identity.show", "an identity's role and policy", required=("identity",), target="identity"),
    Operation(
        "log.follow",
        "live tail of the audit or error log",
        required=("stream",),
        stream=True,
        target="stream",
    ),
    Operation("cache.purge", "drop every key from the key cache"),
    Operation("log.level", "set the error log's level", required=("level",), target="level"),
    Operation("metrics", "the Prometheus metrics text"),
)


@dataclass(frozen=True)
class Request:
    """A validated request: the operation and its string arguments."""

    op: Operation
    args: Mapping[str, str]

    @property
    def audit_path(self) -> str:
        """What the audit record names: ``admin:key.rm/my-key`` (never a secret argument)."""
        named = self.op.target and self.op.target not in self.op.secret
        target = self.args.get(self.op.target, "") if named else ""
        return f"admin:{self.op.name}/{target}" if target else f"admin:{self.op.name}"


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame: the length header and the compact JSON of ``message``."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes, limit: int) -> int:
    """The payload length a header announces; 413 if it exceeds ``limit``, 400 if it is zero."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise KesError(f"frame of {length} bytes is larger than the limit of {limit} bytes", TOO_LARGE)
    if length == 0:
        raise KesError("empty frame: a frame holds one JSON object", BAD_REQUEST)
    return length


def decode(payload: bytes) -> dict[str, Any]:
    """The JSON object in a frame's payload; 400 if it is not UTF-8 JSON of an object."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KesError("malformed frame: not UTF-8 JSON", BAD_REQUEST) from None
    if not isinstance(obj, dict):
        raise KesError("malformed frame: the JSON value is not an object", BAD_REQUEST)
    return obj


def make_request(op: str, args: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request message for ``op`` (arguments whose value is None are left out)."""
    return {"v": VERSION, "op": op, "args": {k: v for k, v in (args or {}).items() if v is not None}}


def parse_request(message: Mapping[str, Any]) -> Request:
    """Validate a request message: version, known operation, exactly its string arguments."""
    version = message.get("v")
    if version != VERSION:
        shown = json.dumps(version) if isinstance(version, int | str | None) else "?"
        raise KesError(f"unsupported protocol version {shown} (kesd speaks version {VERSION})", BAD_REQUEST)
    name = message.get("op")
    if not isinstance(name, str):
        raise KesError("malformed request: 'op' must be a string", BAD_REQUEST)
    op = OPERATIONS.get(name)
    if op is None:
        raise KesError(f"unknown operation '{_clip(name)}'", BAD_REQUEST)
    args = message.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise KesError(f"malformed request: 'args' of {name} must be an object", BAD_REQUEST)
    allowed = (*op.required, *op.optional)
    for key, value in args.items():
        if key not in allowed:
            raise KesError(f"unexpected argument '{_clip(key)}' for {name}", BAD_REQUEST)
        if not isinstance(value, str):
            raise KesError(f"argument '{key}' of {name} must be a string", BAD_REQUEST)
    for key in op.required:
        if key not in args:
            raise KesError(f"missing argument '{key}' for {name}", BAD_REQUEST)
    extra = set(message) - {"v", "op", "args"}
    if extra:
        raise KesError(f"unexpected field '{_clip(sorted(extra)[0])}' in request", BAD_REQUEST)
    return Request(op, MappingProxyType(dict(args)))


def ok(result: Mapping[str, Any]) -> dict[str, Any]:
    """A successful answer."""
    return {"v": VERSION, "ok": True, "result": dict(result)}


def failure(status: int, message: str) -> dict[str, Any]:
    """A failed answer with an HTTP-like status and a one-line message."""
    return {"v": VERSION, "ok": False, "error": {"status": status, "message": message}}


def failure_of(err: KesError) -> dict[str, Any]:
    """The failed answer for a typed error."""
    return failure(err.status, err.message)


def line_frame(line: str) -> dict[str, Any]:
    """One line of a stream."""
    return {"v": VERSION, "line": line}


def dropped_frame(total: int) -> dict[str, Any]:
    """How many stream lines the server has dropped so far because the reader was too slow."""
    return {"v": VERSION, "dropped": total}


def end_frame(reason: str) -> dict[str, Any]:
    """The server ends a stream (it is stopping)."""
    return {"v": VERSION, "end": True, "reason": reason}


def result_of(message: Mapping[str, Any]) -> dict[str, Any]:
    """The result of an answer, or the typed error it carries (for clients)."""
    if message.get("ok") is True:
        result = message.get("result", {})
        if not isinstance(result, dict):
            raise KesError("malformed answer from kesd: 'result' is not an object", INTERNAL)
        return result
    error = message.get("error")
    if not isinstance(error, dict):
        raise KesError("malformed answer from kesd: neither a result nor an error", INTERNAL)
    status = error.get("status")
    text = error.get("message")
    raise KesError(
        text if isinstance(text, str) else "unknown error",
        status if isinstance(status, int) else INTERNAL,
    )


def _clip(text: str, limit: int = 64) -> str:
    """A caller-supplied word, shortened and made printable for an error message."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    return shown.encode("unicode_escape").decode("ascii")
