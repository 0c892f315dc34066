"""The API handlers: request in, response out (reference §1.3).

Handlers for the cryptographic routes answer synchronously when the key is cached (the hot path:
no task, no await) and return a coroutine only on a cache miss or for keystore I/O. They raise the
typed errors of ``kesd.errors``; the protocol layer turns them into KES responses.
"""

from __future__ import annotations

import asyncio
import binascii
import os
import platform
import time
from collections.abc import Coroutine
from typing import Any

from kesd import __version__, audit, errors, jsonfast
from kesd.crypto import (
    Cipher,
    KeyVersion,
    b64decode_std,
    encode_key_version,
    format_time,
    import_key_version,
    new_key_version,
    parse_cipher,
)
from kesd.names import list_prefix, valid_name, valid_pattern
from kesd.server.request import EMPTY_OK, JSON, NDJSON, TEXT, Request, Response, Stream, json_response

_b64 = binascii.b2a_base64

# Describe answers the long algorithm names: every SDK generation parses them (reference §1.6).
_DESCRIBE_ALGORITHM = {Cipher.AES256: "AES256-GCM_SHA256", Cipher.CHACHA20: "XCHACHA20-POLY1305"}
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm", "ppc64le": "ppc64le"}


# --- helpers ------------------------------------------------------------------------------------


def _key_name(name: str) -> str:
    if not valid_name(name):
        raise errors.InvalidKeyName(name)
    return name


def _body(req: Request, error: type[errors.KesError] = errors.InvalidRequestBody) -> dict[str, Any]:
    """The JSON object in the request body ({} when empty)."""
    if not req.body:
        return {}
    try:
        obj = jsonfast.loads(req.body)
    except ValueError:
        raise error from None
    if not isinstance(obj, dict):
        raise error
    return obj


def _bytes_field(
    obj: dict[str, Any], field: str, error: type[errors.KesError] = errors.InvalidRequestBody
) -> bytes:
    """A base64 ``[]byte`` field as Go decodes it: absent/null → empty, padding required."""
    value = obj.get(field)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise error
    try:
        return b64decode_std(value)
    except ValueError:
        raise error from None


def _context(req: Request) -> bytes | None:
    """The optional ``context`` (associated data) of a generate/encrypt/decrypt body."""
    body = req.body
    if not body or body == b"{}":
        return None
    return _bytes_field(_body(req), "context") or None


def _run(fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Run a blocking keystore call in a worker thread."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _cached_or_load(req: Request, then: Any) -> Response | Coroutine[Any, Any, Response]:
    """Call ``then(key, req)`` at once if the key is cached, else after loading it."""
    key = req.app.cache.peek(req.arg)
    if key is not None:
        return then(key, req)
    return _load_then(req, then)


async def _load_then(req: Request, then: Any) -> Response:
    key = await req.app.cache.get(_key_name(req.arg))
    return then(key, req)


# --- server routes ------------------------------------------------------------------------------


def version(req: Request) -> Response:
    """GET /version."""
    return json_response(jsonfast.dumps({"version": __version__, "commit": ""}))


async def ready(req: Request) -> Response:
    """GET /v1/ready: 200 once the keystore answers."""
    await _run(req.app.keystore.status)
    return EMPTY_OK


async def status(req: Request) -> Response:
    """GET /v1/status: server and keystore state (uptime in seconds, latency in ms)."""
    app = req.app
    info: dict[str, Any] = {
        "version": __version__,
        "os": platform.system().lower(),
        "arch": _GO_ARCH.get(platform.machine(), platform.machine()),
        "uptime": round(time.monotonic() - app.started_monotonic),
        "num_cpu": os.cpu_count() or 1,
        "num_cpu_used": len(os.sched_getaffinity(0)),
    }
    info.update(app.memory_figures())
    start = time.monotonic()
    try:
        await _run(app.keystore.status)
    except (errors.KeystoreUnreachable, errors.KeystoreUnavailable):
        # Both flags: the SDK rejects "unreachable" without "unavailable" (reference §10.2).
        info["keystore_unavailable"] = True
        info["keystore_unreachable"] = True
    else:
        info["keystore_latency"] = max(1, round((time.monotonic() - start) * 1000))
    return json_response(jsonfast.dumps(info))


def metrics(req: Request) -> Response:
    """GET /v1/metrics: Prometheus text."""
    return (200, b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", req.app.metrics_text())


def api(req: Request) -> Response:
    """GET /v1/api: the route table as configured."""
    return json_response(jsonfast.dumps(req.state.router.describe()))


# --- keys ---------------------------------------------------------------------------------------


async def create_key(req: Request) -> Response:
    """PUT /v1/key/create/<name>: a new random AES256 key (created_by = caller)."""
    name = _key_name(req.arg)
    key = new_key_version(Cipher.AES256, req.identity)
    await _run(req.app.keystore.create, name, encode_key_version(key))
    req.app.cache.put(name, key)
    return EMPTY_OK


async def import_key(req: Request) -> Response:
    """PUT /v1/key/import/<name>: ``{"key","cipher"}`` (or the 2022 ``{"bytes","algorithm"}``)."""
    name = _key_name(req.arg)
    body = _body(req, errors.InvalidImportBody)
    field = "key" if "key" in body else "bytes"
    material = _bytes_field(body, field, errors.InvalidImportBody)
    cipher_text = body.get("cipher", body.get("algorithm"))
    if cipher_text is None:
        cipher_text = "AES256"  # what the SDK sends for the zero value; 2022 clients send none
    if not isinstance(cipher_text, str):
        raise errors.InvalidImportBody
    try:
        cipher = parse_cipher(cipher_text)
    except ValueError:
        raise errors.UnsupportedAlgorithm(cipher_text) from None
    if len(material) != 32:
        raise errors.InvalidKeySize(cipher_text)
    key = import_key_version(cipher, material, req.identity)
    await _run(req.app.keystore.create, name, encode_key_version(key))
    req.app.cache.put(name, key)
    return EMPTY_OK


async def describe_key(req: Request) -> Response:
    """GET /v1/key/describe/<name>."""
    name = _key_name(req.arg)
    key = await req.app.cache.get(name)
    info: dict[str, Any] = {
        "name": name,
        "algorithm": _DESCRIBE_ALGORITHM[key.secret.cipher],
        "created_at": format_time(key.created_at),
    }
    if key.created_by:
        info["created_by"] = key.created_by
    return json_response(jsonfast.dumps(info))


async def list_keys(req: Request) -> Response:
    """GET /v1/key/list/<prefix>: every matching name, as ndjson (understood by all SDKs)."""
    if not valid_pattern(req.arg):
        raise errors.InvalidListPattern(req.arg)
    names = await _run(req.app.keystore.list, list_prefix(req.arg))
    return (200, NDJSON, b"".join(jsonfast.dumps({"name": n}) for n in names))


async def delete_key(req: Request) -> Response:
    """DELETE /v1/key/delete/<name>."""
    name = _key_name(req.arg)
    try:
        await _run(req.app.keystore.delete, name)
    finally:
        req.app.cache.forget(name)
    return EMPTY_OK


def generate(req: Request) -> Response | Coroutine[Any, Any, Response]:
    """PUT /v1/key/generate/<name>: a fresh 32-byte DEK and its ciphertext."""
    return _cached_or_load(req, _generate)


def _generate(key: KeyVersion, req: Request) -> Response:
    plaintext, ciphertext = key.secret.generate(_context(req))
    return (
        200,
        JSON,
        b'{"plaintext":"'
        + _b64(plaintext, newline=False)
        + b'","ciphertext":"'
        + _b64(ciphertext, newline=False)
        + b'"}\n',
    )


def encrypt(req: Request) -> Response | Coroutine[Any, Any, Response]:
    """PUT /v1/key/encrypt/<name>: seal a small plaintext."""
    return _cached_or_load(req, _encrypt)


def _encrypt(key: KeyVersion, req: Request) -> Response:
    body = _body(req)
    ciphertext = key.secret.encrypt(_bytes_field(body, "plaintext"), _bytes_field(body, "context") or None)
    return (200, JSON, b'{"ciphertext":"' + _b64(ciphertext, newline=False) + b'"}\n')


def decrypt(req: Request) -> Response | Coroutine[Any, Any, Response]:
    """PUT /v1/key/decrypt/<name>: open a ciphertext of any KES era."""
    return _cached_or_load(req, _decrypt)


def _decrypt(key: KeyVersion, req: Request) -> Response:
    body = _body(req)
    plaintext = key.secret.decrypt(
        _bytes_field(body, "ciphertext"), _bytes_field(body, "context") or None, generic=key.generic
    )
    return (200, JSON, b'{"plaintext":"' + _b64(plaintext, newline=False) + b'"}\n')


def hmac(req: Request) -> Response | Coroutine[Any, Any, Response]:
    """PUT /v1/key/hmac/<name>: HMAC-SHA256 with the key's HMAC key."""
    return _cached_or_load(req, _hmac)


def _hmac(key: KeyVersion, req: Request) -> Response:
    mac = key.hmac(_bytes_field(_body(req), "message"))
    return (200, JSON, b'{"hmac":"' + _b64(mac, newline=False) + b'"}\n')


# --- policies and identities --------------------------------------------------------------------


def _policy(req: Request) -> Any:
    if not valid_name(req.arg):
        raise errors.InvalidPolicyName(req.arg)
    policy = req.state.config.policies.get(req.arg)
    if policy is None:
        raise errors.PolicyNotFound
    return policy


def describe_policy(req: Request) -> Response:
    """GET /v1/policy/describe/<name>: policies are as old as the server (reference §4.9)."""
    policy = _policy(req)
    return json_response(
        jsonfast.dumps(
            {"name": policy.name, "created_at": req.app.started_at, "created_by": req.state.config.admin}
        )
    )


def read_policy(req: Request) -> Response:
    """GET /v1/policy/read/<name>: allow/deny as ``{pattern: {}}`` maps (newest shape)."""
    policy = _policy(req)
    info: dict[str, Any] = {"name": policy.name}
    if policy.allow:
        info["allow"] = {p: {} for p in policy.allow}
    if policy.deny:
        info["deny"] = {p: {} for p in policy.deny}
    info["created_at"] = req.app.started_at
    info["created_by"] = req.state.config.admin
    return json_response(jsonfast.dumps(info))


def list_policies(req: Request) -> Response:
    """GET /v1/policy/list/<prefix>: ndjson lines ``{"name","created_at","created_by"}``."""
    if not valid_pattern(req.arg):
        raise errors.InvalidListPattern(req.arg)
    prefix = list_prefix(req.arg)
    admin, started = req.state.config.admin, req.app.started_at
    names = sorted(n for n in req.state.config.policies if n.startswith(prefix))
    lines = (jsonfast.dumps({"name": n, "created_at": started, "created_by": admin}) for n in names)
    return (200, NDJSON, b"".join(lines))


def describe_identity(req: Request) -> Response:
    """GET /v1/identity/describe/<identity>."""
    identity = req.arg
    if not valid_name(identity):
        raise errors.InvalidIdentity(identity)
    state, started = req.state, req.app.started_at
    if identity == state.config.admin:
        return json_response(jsonfast.dumps({"admin": True, "created_at": started}))
    policy = state.authorizer.policy_of(identity)
    if policy is None:
        raise errors.IdentityNotFound
    return json_response(
        jsonfast.dumps({"policy": policy, "created_at": started, "created_by": state.config.admin})
    )


def describe_self(req: Request) -> Response:
    """GET /v1/identity/self/describe: the caller's own identity and policy (the SDK's flat shape)."""
    state, started = req.state, req.app.started_at
    info: dict[str, Any] = {"identity": req.identity}
    if req.identity == state.config.admin:
        info.update(admin=True, created_at=started)
        return json_response(jsonfast.dumps(info))
    name = state.authorizer.policy_of(req.identity)
    if name is None:
        raise errors.IdentityNotFound
    policy = state.config.policies[name]
    info.update(created_at=started, created_by=state.config.admin, policy=name)
    if policy.allow:
        info["allow"] = {p: {} for p in policy.allow}
    if policy.deny:
        info["deny"] = {p: {} for p in policy.deny}
    return json_response(jsonfast.dumps(info))


def list_identities(req: Request) -> Response:
    """GET /v1/identity/list/<prefix>: ndjson, the admin included (as KES does)."""
    if not valid_pattern(req.arg):
        raise errors.InvalidListPattern(req.arg)
    prefix = list_prefix(req.arg)
    state, started = req.state, req.app.started_at
    admin = state.config.admin
    rows = []
    if admin.startswith(prefix):
        rows.append({"identity": admin, "admin": True, "created_at": started})
    for policy in state.config.policies.values():
        rows.extend(
            {"identity": i, "policy": policy.name, "created_at": started, "created_by": admin}
            for i in policy.identities
            if i.startswith(prefix)
        )
    rows.sort(key=lambda r: r["identity"])
    return (200, NDJSON, b"".join(jsonfast.dumps(r) for r in rows))


# --- log streams -------------------------------------------------------------------------------


def audit_log(_req: Request) -> Stream:
    """GET /v1/log/audit: one JSON line per request from now on."""
    return Stream(audit.subscribe("audit"))


def error_log(_req: Request) -> Stream:
    """GET /v1/log/error: one ``{"message"}`` line per error-log record from now on."""
    return Stream(audit.subscribe("error"))


def not_found(_req: Request | None = None) -> Response:
    """Go's default 404 for unknown paths."""
    return (404, TEXT, b"404 page not found\n")
