"""A small KES client over HTTPS (stdlib ``http.client``), used by the ``kes`` CLI and the tests.

It sends requests the way the newest Go SDK does (methods, escaped path arguments, JSON bodies with
standard base64) and turns error responses into :class:`APIError` with the SDK's parse rules.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import math
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives import serialization

from kesd import __version__, identity

DEFAULT_ENDPOINT = "127.0.0.1:7373"
_MAX_ERROR_BODY = 1 << 20
_MAX_EVENT = 1 << 20  # longest log-stream line read as one (a longer one fails to parse)
_REDIRECTS = (301, 302, 303, 307, 308)
_NDJSON = "application/x-ndjson"
# Characters Go's url.PathEscape leaves alone besides the unreserved ones.
_PATH_SAFE = "$&+,:;=@"
# Errors of a kept-alive connection the server closed while it was idle: resend once on a new one.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class APIError(Exception):
    """An error answer of a KES server: the HTTP status and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r})"


def parse_endpoints(endpoint: str) -> list[str]:
    """Split a (comma-separated) endpoint setting into ``https://host:port`` URLs (§8.1 rules).

    ``http://`` is replaced by ``https://`` and a missing scheme gets ``https://``; blanks are dropped.
    """
    urls = []
    for raw in endpoint.split(","):
        item = raw.strip().rstrip("/")
        if not item:
            continue
        lowered = item.lower()
        if lowered.startswith("http://"):
            item = item[len("http://") :]
        elif lowered.startswith("https://"):
            item = item[len("https://") :]
        urls.append("https://" + item)
    if not urls:
        raise ValueError(f"no server endpoint in {endpoint!r}")
    return urls


def escape_path(arg: str) -> str:
    """Percent-escape one path argument like Go's ``url.PathEscape`` (``*`` → ``%2A``, ``/`` → ``%2F``)."""
    return quote(arg, safe=_PATH_SAFE)


def route(base: str, arg: str | None = None) -> str:
    """Join a route and an escaped argument like the SDK's ``path.Join`` (empty argument: no slash)."""
    if arg is None or arg == "":
        return base
    return f"{base}/{escape_path(arg)}"


def parse_error(status: int, content_type: str, body: bytes) -> APIError:
    """Turn an error response into an :class:`APIError` following the SDK's rules (§2).

    JSON bodies give ``error`` (if non-empty) or ``message``; other bodies are the message as is.
    """
    text = body[:_MAX_ERROR_BODY].decode("utf-8", errors="replace")
    if content_type.startswith("application/json"):
        try:
            doc = json.loads(text)
        except ValueError:
            return APIError(status, text)
        if isinstance(doc, dict):
            error = doc.get("error")
            if isinstance(error, str) and error:
                return APIError(status, error)
            message = doc.get("message")
            return APIError(status, message if isinstance(message, str) else "")
        return APIError(status, text)
    return APIError(status, text)


def b64(data: bytes) -> str:
    """Standard base64 with padding: how Go encodes ``[]byte`` in JSON."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    """Decode a standard-base64 JSON field (``null`` → empty)."""
    if text is None:
        return b""
    if not isinstance(text, str):
        raise ValueError("base64 field is not a string")
    return base64.b64decode(text, validate=True)


def parse_list(content_type: str, body: bytes, field: str, legacy_field: str) -> tuple[list[str], str]:
    """Decode one list page: ``{field: [...], continue_at}`` or an ndjson stream of ``{legacy_field}``.

    Also accepts a bare JSON array of names (2019-2021 policy lists). Returns the names and the
    continuation point ('' = last page). An ndjson ``error`` line raises :class:`APIError`; an
    answer that is none of these raises ``ValueError``.
    """
    if _media_type(content_type) == _NDJSON:
        names = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = _json_value(line, "list")
            if not isinstance(item, dict):
                raise ValueError("the server sent an invalid list entry")
            error = item.get("error")
            if error:
                raise APIError(500, str(error))
            names.append(str(item.get(legacy_field, "")))
        return names, ""
    doc = _json_value(body, "list") if body.strip() else {}
    if isinstance(doc, list):
        return [str(n) for n in doc], ""
    if not isinstance(doc, dict):
        raise ValueError("the server sent an invalid list response")
    return [str(n) for n in doc.get(field) or []], str(doc.get("continue_at") or "")


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower-cased, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def _json_value(data: bytes, what: str) -> Any:
    """Parse JSON from the server, or fail with a ``ValueError`` naming what was expected."""
    try:
        return json.loads(data)
    except ValueError:
        raise ValueError(f"the server sent an invalid {what} response") from None


def rules(value: Any) -> list[str]:
    """Policy patterns from a ``{pattern: {}}`` map (newest) or a list of patterns (2019-2023)."""
    if isinstance(value, dict | list):
        return [str(p) for p in value]
    return []


def normalize_policy(doc: Any) -> dict[str, Any]:
    """A policy read answer as ``{"name"?, "allow": [...], "deny": [...], "created_at"?, "created_by"?}``."""
    if not isinstance(doc, dict):
        raise ValueError("the server sent an invalid policy")
    policy: dict[str, Any] = {k: doc[k] for k in ("name", "created_at", "created_by") if doc.get(k)}
    policy["allow"] = rules(doc.get("allow"))
    policy["deny"] = rules(doc.get("deny"))
    return policy


def normalize_self(doc: Any) -> dict[str, Any]:
    """A self-describe answer of any KES era in the newest SDK's flat shape (reference §1.3, §1.4).

    Result: ``identity``, ``admin`` (bool), ``policy`` (name, '' if none), ``allow``/``deny``
    (pattern lists) and, when known, ``created_at``/``created_by``.
    """
    if not isinstance(doc, dict):
        raise ValueError("the server sent an invalid identity description")
    nested = doc.get("policy") if isinstance(doc.get("policy"), dict) else {}
    name = doc.get("policy") if isinstance(doc.get("policy"), str) else ""
    name = name or doc.get("policy_name") or nested.get("name") or ""
    flat: dict[str, Any] = {
        "identity": str(doc.get("identity") or ""),
        "admin": bool(doc.get("admin")),
        "policy": str(name),
        "allow": rules(doc.get("allow") if "allow" in doc else nested.get("allow")),
        "deny": rules(doc.get("deny") if "deny" in doc else nested.get("deny")),
    }
    for key in ("created_at", "created_by"):
        if doc.get(key):
            flat[key] = doc[key]
    return flat


# --- log streams ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One line of the audit stream: when, who, from where, which path, status and duration (ns)."""

    time: str
    path: str
    identity: str
    ip: str
    status: int
    duration_ns: int


def parse_audit_event(line: bytes | str) -> AuditEvent:
    """Decode one audit-stream line (reference §1.3); ``response.time`` is nanoseconds as the SDK reads it."""
    doc = _json_value(line.encode() if isinstance(line, str) else line, "audit event")
    if not isinstance(doc, dict):
        raise ValueError("the server sent an invalid audit event")
    request = doc.get("request") if isinstance(doc.get("request"), dict) else {}
    response = doc.get("response") if isinstance(doc.get("response"), dict) else {}
    return AuditEvent(
        time=str(doc.get("time") or ""),
        path=str(request.get("path") or ""),
        identity=str(request.get("identity") or ""),
        ip=str(request.get("ip") or ""),
        status=_int(response.get("code")),
        duration_ns=_int(response.get("time")),
    )


def parse_error_event(line: bytes | str) -> str:
    """The message of one error-stream line ``{"message": …}``."""
    doc = _json_value(line.encode() if isinstance(line, str) else line, "error event")
    if not isinstance(doc, dict):
        raise ValueError("the server sent an invalid error event")
    return str(doc.get("message") or "")


def _int(value: Any) -> int:
    """An integer JSON field (bools and non-numbers count as 0, floats are truncated)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


# --- metrics -------------------------------------------------------------------------------------

# (field, family) pairs of the single-sample families; the SDK's Metric struct in this order.
_GAUGES = (
    ("request_active", "kes_http_request_active"),
    ("audit_events", "kes_log_audit_events"),
    ("error_events", "kes_log_error_events"),
    ("uptime", "kes_system_up_time"),
    ("cpus", "kes_system_num_cpu"),
    ("usable_cpus", "kes_system_num_cpu_used"),
    ("threads", "kes_system_num_threads"),
    ("heap_alloc", "kes_system_mem_heap_used"),
    ("heap_objects", "kes_system_mem_heap_objects"),
    ("stack_alloc", "kes_system_mem_stack_used"),
)
_REQUESTS = (
    ("request_ok", "kes_http_request_success"),
    ("request_err", "kes_http_request_error"),
    ("request_fail", "kes_http_request_failure"),
)
_LATENCY = "kes_http_response_time"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LE = re.compile(r'le="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Metrics:
    """A snapshot of the server's metrics (``/v1/metrics``); absent families count as zero."""

    request_ok: int = 0
    request_err: int = 0
    request_fail: int = 0
    request_active: int = 0
    audit_events: int = 0
    error_events: int = 0
    # Histogram buckets: upper bound in seconds -> cumulative count (+Inf left out).
    latency: dict[float, int] = dataclasses.field(default_factory=dict)
    latency_sum: float | None = None  # seconds, from the histogram's _sum
    latency_count: int | None = None
    uptime: float = 0.0  # seconds
    cpus: int = 0
    usable_cpus: int = 0
    threads: int = 0
    heap_alloc: int = 0
    heap_objects: int = 0
    stack_alloc: int = 0

    @property
    def requests(self) -> int:
        """All counted requests: 2xx + 4xx + 5xx."""
        return self.request_ok + self.request_err + self.request_fail

    def average_latency(self) -> float | None:
        """Mean response time in seconds: exact from ``_sum/_count``, else estimated from the buckets."""
        if self.latency_count:
            return (self.latency_sum or 0.0) / self.latency_count
        total, previous, weighted = 0, 0, 0.0
        for bound in sorted(self.latency):
            count = self.latency[bound]
            weighted += bound * max(0, count - previous)
            total, previous = count, count
        return weighted / total if total else None


def parse_metrics(text: str) -> Metrics:
    """Read the KES families out of a Prometheus text exposition (reference §1.3, vectors/metrics.json).

    Counters may carry a ``_total`` suffix; labelled request counters are summed over their labels;
    unknown families and malformed lines are ignored.
    """
    values: dict[str, float] = {}
    buckets: dict[float, int] = {}
    summed = {family: 0.0 for _, family in _REQUESTS}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        base = name.removesuffix("_total")
        if base in summed:
            summed[base] += value
        elif name == _LATENCY + "_bucket":
            le = _LE.search(labels or "")
            if le is not None and le.group(1) not in ("+Inf", "Inf"):
                try:
                    buckets[float(le.group(1))] = int(value)
                except ValueError:
                    continue
        else:
            values.setdefault(base, value)
    fields: dict[str, Any] = {attr: int(summed[family]) for attr, family in _REQUESTS}
    for attr, family in _GAUGES:
        if family in values:
            fields[attr] = values[family] if attr == "uptime" else int(values[family])
    if _LATENCY + "_sum" in values:
        fields["latency_sum"] = values[_LATENCY + "_sum"]
    if _LATENCY + "_count" in values:
        fields["latency_count"] = int(values[_LATENCY + "_count"])
    return Metrics(latency=buckets, **fields)


class Client:
    """A KES client holding one kept-alive HTTPS connection to the first reachable endpoint.

    Authentication: a client certificate/key file pair, or an API key (from which a self-signed
    client certificate is made in memory), or nothing (only ``/version`` may then answer).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        cert: str | None = None,
        key: str | None = None,
        api_key: str | None = None,
        ca: str | None = None,
        insecure: bool = False,
        timeout: float = 15.0,
        password: bytes | str | None = None,
    ) -> None:
        if api_key and (cert or key):
            raise ValueError("an API key and a client certificate/key are mutually exclusive")
        if bool(cert) != bool(key):
            raise ValueError("a client certificate needs its private key and vice versa")
        self.endpoints = parse_endpoints(endpoint)
        self.timeout = timeout
        self._context = _ssl_context(
            cert=cert, key=key, api_key=api_key, ca=ca, insecure=insecure, password=password
        )
        self._conn: http.client.HTTPSConnection | None = None
        self._current = 0

    # --- connection handling -----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint in use (or to be tried first)."""
        return self.endpoints[self._current]

    def close(self) -> None:
        """Close the kept-alive connection, if any."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> http.client.HTTPSConnection:
        """Open a TLS connection to the first endpoint that accepts one, starting at the current one."""
        failures: list[tuple[str, OSError]] = []
        order = self.endpoints[self._current :] + self.endpoints[: self._current]
        for url in order:
            parts = urlsplit(url)
            host = parts.hostname or ""
            try:
                port = parts.port or 443
            except ValueError as err:
                raise ValueError(f"invalid server endpoint '{url}'") from err
            conn = http.client.HTTPSConnection(host, port, context=self._context, timeout=self.timeout)
            try:
                conn.connect()
            except OSError as err:
                conn.close()
                failures.append((url, err))
                continue
            self._current = self.endpoints.index(url)
            return conn
        url, cause = _most_telling(failures)
        raise ConnectionError(f"cannot connect to {url}: {_reason(cause)}") from cause

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send one request on the kept-alive connection and read the whole answer.

        A connection that the server closed while it sat idle is replaced once.
        """
        for attempt in range(2):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except _STALE as err:
                self.close()
                if fresh or attempt:
                    raise ConnectionError(f"connection to {self.endpoint} failed: {_reason(err)}") from err
                continue
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise ConnectionError(f"request to {self.endpoint} failed: {_reason(err)}") from err
            if resp.will_close:
                self.close()
            return resp, data
        raise AssertionError("unreachable")

    def request(
        self, method: str, path: str, body: bytes | None = None, *, content_type: str | None = None
    ) -> tuple[int, str, bytes]:
        """Send a request (following one redirect) and return status, content type and body.

        Raises :class:`APIError` for status ≥ 400 and ``ConnectionError`` when no server answers.
        """
        headers = {"User-Agent": f"kesd-client/{__version__}"}
        if body is not None:
            headers["Content-Length"] = str(len(body))
            if content_type:
                headers["Content-Type"] = content_type
        for hop in range(2):
            resp, data = self._exchange(method, path, body, headers)
            ctype = resp.getheader("Content-Type", "") or ""
            location = resp.getheader("Location")
            if resp.status in _REDIRECTS and location:
                if hop:
                    break
                target = urlsplit(location)
                path = target.path + (f"?{target.query}" if target.query else "")
                continue
            if resp.status >= 400:
                raise parse_error(resp.status, ctype, data)
            return resp.status, ctype, data
        raise APIError(resp.status, "too many redirects")

    def _json(self, method: str, path: str, doc: dict[str, Any] | None = None) -> Any:
        """A request with an optional JSON body whose answer is JSON."""
        body = None if doc is None else json.dumps(doc, separators=(",", ":")).encode()
        _, _, data = self.request(method, path, body, content_type="application/json")
        return _json_value(data, "JSON") if data.strip() else None

    def _object(self, path: str, what: str) -> dict[str, Any]:
        """A GET whose answer must be one JSON object."""
        doc = self._json("GET", path)
        if not isinstance(doc, dict):
            raise ValueError(f"the server sent an invalid {what}")
        return doc

    def _list(self, base: str, prefix: str, field: str, legacy_field: str) -> list[str]:
        """Collect all pages of a listing the way the SDK's ``ListIter`` walks them."""
        names: list[str] = []
        seen: set[str] = set()
        arg = prefix
        while True:
            _, ctype, data = self.request("GET", route(base, arg))
            page, continue_at = parse_list(ctype, data, field, legacy_field)
            if not page:
                break
            names.extend(page)
            if not continue_at or continue_at in seen:
                break
            seen.add(continue_at)
            arg = continue_at
        return names

    # --- API ---------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's version string (``GET /version``)."""
        return str(self._object("/version", "version").get("version", ""))

    def status(self) -> dict[str, Any]:
        """The server status document (``GET /v1/status``)."""
        return self._object("/v1/status", "status")

    def api(self) -> list[dict[str, Any]]:
        """The server's route table (``GET /v1/api``)."""
        doc = self._json("GET", "/v1/api")
        if not isinstance(doc, list) or not all(isinstance(item, dict) for item in doc):
            raise ValueError("the server sent an invalid API list")
        return doc

    def ready(self) -> bool:
        """True if the server answers ``GET /v1/ready`` with 200."""
        try:
            status, _, _ = self.request("GET", "/v1/ready")
        except APIError:
            return False
        return status == 200

    def create_key(self, name: str) -> None:
        """Create a new secret key ``name``."""
        self.request("POST", route("/v1/key/create", name))

    def import_key(self, name: str, key: bytes, cipher: str = "AES256") -> None:
        """Import 32 key bytes as secret key ``name``."""
        self._json("POST", route("/v1/key/import", name), {"key": b64(key), "cipher": cipher})

    def describe_key(self, name: str) -> dict[str, Any]:
        """Name, algorithm, creation time and creator of a key."""
        return self._object(route("/v1/key/describe", name), "key description")

    def list_keys(self, pattern: str = "*") -> list[str]:
        """The names of all keys matching ``pattern`` (a prefix, ``*`` = all)."""
        return self._list("/v1/key/list", pattern, "names", "name")

    def delete_key(self, name: str) -> None:
        """Delete the key ``name``."""
        self.request("DELETE", route("/v1/key/delete", name))

    def generate_key(self, name: str, context: bytes | None = None) -> tuple[bytes, bytes]:
        """A new data encryption key: (plaintext, ciphertext sealed by key ``name``)."""
        doc = {"context": b64(context)} if context else {}
        answer = self._json("POST", route("/v1/key/generate", name), doc) or {}
        return unb64(answer.get("plaintext")), unb64(answer.get("ciphertext"))

    def encrypt(self, name: str, plaintext: bytes, context: bytes | None = None) -> bytes:
        """Encrypt ``plaintext`` with key ``name``; returns the ciphertext."""
        doc: dict[str, Any] = {"plaintext": b64(plaintext)}
        if context:
            doc["context"] = b64(context)
        answer = self._json("POST", route("/v1/key/encrypt", name), doc) or {}
        return unb64(answer.get("ciphertext"))

    def decrypt(self, name: str, ciphertext: bytes, context: bytes | None = None) -> bytes:
        """Decrypt ``ciphertext`` with key ``name``; returns the plaintext."""
        doc: dict[str, Any] = {"ciphertext": b64(ciphertext)}
        if context:
            doc["context"] = b64(context)
        answer = self._json("POST", route("/v1/key/decrypt", name), doc) or {}
        return unb64(answer.get("plaintext"))

    def hmac(self, name: str, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under key ``name`` (PUT, no Content-Type, like the SDK)."""
        body = json.dumps({"message": b64(message)}, separators=(",", ":")).encode()
        _, _, data = self.request("PUT", route("/v1/key/hmac", name), body)
        answer = _json_value(data, "HMAC")
        return unb64(answer.get("hmac") if isinstance(answer, dict) else None)

    def list_policies(self, pattern: str = "*") -> list[str]:
        """The names of all policies matching ``pattern``."""
        return self._list("/v1/policy/list", pattern, "names", "name")

    def describe_policy(self, name: str) -> dict[str, Any]:
        """Creation time and creator of a policy."""
        return self._object(route("/v1/policy/describe", name), "policy description")

    def read_policy(self, name: str) -> dict[str, Any]:
        """A policy's allow and deny patterns (as lists) and, if sent, its name and creation details."""
        return normalize_policy(self._json("GET", route("/v1/policy/read", name)))

    def list_identities(self, pattern: str = "*") -> list[str]:
        """All identities matching ``pattern``."""
        return self._list("/v1/identity/list", pattern, "identities", "identity")

    def describe_identity(self, identity: str) -> dict[str, Any]:
        """Policy, role and creation details of an identity."""
        return self._object(route("/v1/identity/describe", identity), "identity description")

    def describe_self(self) -> dict[str, Any]:
        """What the server knows about the caller's identity (flat shape, see :func:`normalize_self`)."""
        return normalize_self(self._json("GET", "/v1/identity/self/describe"))

    def metrics(self) -> Metrics:
        """The server's metrics (``GET /v1/metrics``, Prometheus text)."""
        _, _, data = self.request("GET", "/v1/metrics")
        return parse_metrics(data.decode("utf-8", errors="replace"))

    def audit_log(self) -> Stream:
        """Follow ``/v1/log/audit``: an open :class:`Stream` of raw ndjson event lines."""
        return self.stream("/v1/log/audit")

    def error_log(self) -> Stream:
        """Follow ``/v1/log/error``: an open :class:`Stream` of raw ndjson event lines."""
        return self.stream("/v1/log/error")

    def stream(self, path: str) -> Stream:
        """GET ``path`` on a connection of its own and return the open answer as a :class:`Stream`.

        The status is checked at once: an error answer raises :class:`APIError`.
        """
        conn = self._connect()
        try:
            conn.request("GET", path, headers={"User-Agent": f"kesd-client/{__version__}"})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise parse_error(resp.status, resp.getheader("Content-Type", "") or "", resp.read())
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise ConnectionError(f"request to {self.endpoint} failed: {_reason(err)}") from err
        except APIError:
            conn.close()
            raise
        if conn.sock is not None:
            conn.sock.settimeout(None)  # events may be minutes apart
        return Stream(conn, resp, self.endpoint)


class Stream:
    """An endless ndjson answer (a log stream): iterate for its lines, close to hang up."""

    def __init__(
        self, conn: http.client.HTTPSConnection, resp: http.client.HTTPResponse, endpoint: str
    ) -> None:
        self._conn = conn
        self._resp = resp
        self._endpoint = endpoint

    def __iter__(self) -> Iterator[bytes]:
        """Each non-empty line (without its line break) as it arrives, until the server ends the stream."""
        while True:
            try:
                line = self._resp.readline(_MAX_EVENT)
            except (OSError, http.client.HTTPException) as err:
                raise ConnectionError(f"log stream from {self._endpoint} broke: {_reason(err)}") from err
            if not line:
                return
            if line.strip():
                yield line.rstrip(b"\r\n")

    def close(self) -> None:
        """Hang up."""
        self._conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- TLS ---------------------------------------------------------------------------------------


def _ssl_context(
    *,
    cert: str | None,
    key: str | None,
    api_key: str | None,
    ca: str | None,
    insecure: bool,
    password: bytes | str | None,
) -> ssl.SSLContext:
    """The client TLS context: server verification (or not) plus the client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        try:
            if os.path.isdir(ca):
                ctx.load_verify_locations(capath=ca)
            else:
                ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as err:
            raise ValueError(f"'{ca}' holds no usable CA certificates") from err
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key, password=password)
    elif api_key:
        _load_api_key(ctx, api_key)
    return ctx


def _load_api_key(ctx: ssl.SSLContext, api_key: str) -> None:
    """Make the API key's self-signed client certificate and load it (via a 0600 file removed at once)."""
    private = identity.parse_api_key(api_key)
    certificate = identity.self_signed_client_cert(private)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    with _private_file(pem) as path:
        ctx.load_cert_chain(path)


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A file only we can read (in ``$XDG_RUNTIME_DIR`` if set) holding ``data``; removed on exit."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    directory = runtime if runtime and os.path.isdir(runtime) else None
    fd, path = tempfile.mkstemp(prefix="kes-", suffix=".pem", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- error text --------------------------------------------------------------------------------


def _most_telling(failures: list[tuple[str, OSError]]) -> tuple[str, OSError]:
    """Of several endpoint failures, the one to report: a certificate problem first, else the first."""
    for url, err in failures:
        if isinstance(err, ssl.SSLCertVerificationError):
            return url, err
    return failures[0]


def _reason(err: BaseException) -> str:
    """A short human reason for a connection failure."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return err.verify_message or "certificate verify failed"
    if isinstance(err, ssl.SSLEOFError):
        return "the server closed the TLS connection"
    if isinstance(err, ssl.SSLError):
        return (err.reason or str(err)).replace("_", " ").lower()
    if isinstance(err, socket.gaierror):
        return "unknown host"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, http.client.RemoteDisconnected):
        return "server closed the connection"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def is_untrusted_certificate(err: BaseException) -> bool:
    """True if ``err`` (or its cause) is a failed verification of the server's certificate."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__
    return False
