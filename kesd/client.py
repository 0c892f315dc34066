"""A small KES client over HTTPS (stdlib ``http.client``), used by the ``kes`` CLI and the tests.

It sends requests the way the newest Go SDK does (methods, escaped path arguments, JSON bodies with
standard base64) and turns error responses into :class:`APIError` with the SDK's parse rules.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
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

    Returns the names and the continuation point ('' = last page). An ndjson ``error`` line raises.
    """
    if content_type == _NDJSON:
        names = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            error = item.get("error")
            if error:
                raise APIError(500, str(error))
            names.append(str(item.get(legacy_field, "")))
        return names, ""
    doc = json.loads(body) if body.strip() else {}
    return [str(n) for n in doc.get(field) or []], str(doc.get("continue_at") or "")


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
        return json.loads(data) if data.strip() else None

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
        doc = self._json("GET", "/version")
        return str((doc or {}).get("version", ""))

    def status(self) -> dict[str, Any]:
        """The server status document (``GET /v1/status``)."""
        return self._json("GET", "/v1/status") or {}

    def api(self) -> list[dict[str, Any]]:
        """The server's route table (``GET /v1/api``)."""
        return self._json("GET", "/v1/api") or []

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
        return self._json("GET", route("/v1/key/describe", name)) or {}

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
        return unb64(json.loads(data).get("hmac"))

    def list_policies(self, pattern: str = "*") -> list[str]:
        """The names of all policies matching ``pattern``."""
        return self._list("/v1/policy/list", pattern, "names", "name")

    def describe_policy(self, name: str) -> dict[str, Any]:
        """Creation time and creator of a policy."""
        return self._json("GET", route("/v1/policy/describe", name)) or {}

    def read_policy(self, name: str) -> dict[str, Any]:
        """A policy's allow and deny rules."""
        return self._json("GET", route("/v1/policy/read", name)) or {}

    def list_identities(self, pattern: str = "*") -> list[str]:
        """All identities matching ``pattern``."""
        return self._list("/v1/identity/list", pattern, "identities", "identity")

    def describe_identity(self, identity: str) -> dict[str, Any]:
        """Policy, role and creation details of an identity."""
        return self._json("GET", route("/v1/identity/describe", identity)) or {}

    def describe_self(self) -> dict[str, Any]:
        """What the server knows about the caller's own identity."""
        return self._json("GET", "/v1/identity/self/describe") or {}


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
