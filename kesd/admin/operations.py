"""What each admin request does inside the daemon: status, reload, keys, policies, identities, ...

Key operations go through the same handlers as the KES API (``kesd.server.handlers``), so names,
errors and the key cache behave exactly as for an API client with admin rights. Every function
returns a JSON-able dict and raises the typed errors of ``kesd.errors``; secrets never appear in a
result or a message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kesd import __version__, errors, jsonfast
from kesd.admin.protocol import BAD_REQUEST, VERSION, Request
from kesd.names import list_prefix, valid_name, valid_pattern
from kesd.server import handlers
from kesd.server.request import Request as ApiRequest

if TYPE_CHECKING:
    from kesd.server.app import App

# Who created a key through the admin socket: no TLS identity did (the audit record names the uid).
ADMIN_CREATOR = ""


@dataclass(frozen=True)
class Context:
    """One admin request's surroundings: the app, the peer and the admin server's own figures."""

    app: App
    uid: int
    pid: int
    socket_path: str
    requests_per_second: Callable[[], float]
    admin_connections: Callable[[], int]


Operation = Callable[[Context, Mapping[str, str]], Awaitable[dict[str, Any]]]


async def run(ctx: Context, request: Request) -> dict[str, Any]:
    """Perform one (non-stream) request; raises ``KesError`` for anything the caller should see."""
    operation = OPERATIONS[request.op.name]
    return await operation(ctx, request.args)


# --- server ---------------------------------------------------------------------------------------


async def hello(ctx: Context, _args: Mapping[str, str]) -> dict[str, Any]:
    """The protocol version this server speaks and its software version."""
    from kesd.admin.protocol import OPERATIONS as TABLE

    return {"protocol": VERSION, "version": __version__, "operations": sorted(TABLE)}


async def status(ctx: Context, _args: Mapping[str, str]) -> dict[str, Any]:
    """Version, uptime, keystore, key count, connections, load, cache, memory, mlock, addresses."""
    from kesd.memlock import memory_locked

    app = ctx.app
    keystore: dict[str, Any] = {"kind": app.keystore.describe(), "reachable": True}
    start = time.monotonic()
    try:
        await app.cache.run(app.keystore.status)
        keystore["latency_ms"] = round((time.monotonic() - start) * 1000, 3)
        keys: int | None = len(await app.cache.run(app.keystore.list, ""))  # type: ignore[arg-type]
    except errors.KesError as exc:
        keystore.update(reachable=False, error=exc.message)
        keys = None
    memory = app.process.memory_info()
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": app.started_at,
        "uptime": round(time.monotonic() - app.started_monotonic, 3),
        "config": app.state.config.file,
        "keystore": keystore,
        "keys": keys,
        "connections": len(app.connections),
        "admin_connections": ctx.admin_connections(),
        "requests": app.requests_total,
        "requests_per_second": round(ctx.requests_per_second(), 2),
        "cache": {"keys": len(app.cache), "hits": app.cache.hits, "misses": app.cache.misses},
        "memory": {"rss": memory.rss, "vms": memory.vms},
        "mlock": memory_locked(),
        "addresses": {"api": app.address, "admin": ctx.socket_path},
        "log_level": logging.getLevelName(logging.getLogger("kesd").getEffectiveLevel()),
    }


async def reload(ctx: Context, _args: Mapping[str, str]) -> dict[str, Any]:
    """Re-read the configuration exactly as SIGHUP does; the error line comes back on failure."""
    from kesd.daemon import reload as reload_daemon

    failure = await reload_daemon(ctx.app)
    if failure is not None:
        raise errors.KesError(failure, BAD_REQUEST)
    return {"reloaded": True, "config": ctx.app.state.config.file}


async def config_check(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Validate a config file as ``kesd --check-config`` does (parse, TLS files, policies, keystore)."""
    from kesd.config import load_config
    from kesd.daemon import check_config, startup_message

    path = args["file"]
    if not os.path.isabs(path):
        raise errors.KesError(f"config file '{path}' must be an absolute path", BAD_REQUEST)

    def check() -> list[str]:
        config = load_config(path)
        try:
            check_config(config)
        except (errors.StartupError, errors.ConfigError) as exc:
            raise errors.KesError(startup_message(config, exc), BAD_REQUEST) from None
        return list(config.warnings)

    try:
        warnings = await ctx.app.cache.run(check)
    except errors.ConfigError as exc:
        raise errors.KesError(exc.line(), BAD_REQUEST) from None
    return {"file": path, "valid": True, "warnings": warnings}


# --- keys (through the API handlers) --------------------------------------------------------------


def _api(ctx: Context, method: str, path: str, arg: str, body: bytes = b"") -> ApiRequest:
    """An API request as the admin socket's caller would make it (no TLS identity, no IP)."""
    return ApiRequest(ctx.app, ctx.app.state, method, path + arg, arg, body, ADMIN_CREATOR, "")


async def _call(handler: Callable[[ApiRequest], Any], req: ApiRequest) -> bytes:
    """Run an API handler (sync or async) and return its 2xx body; errors propagate typed."""
    response = handler(req)
    if not isinstance(response, tuple):
        response = await response
    status_code, _headers, body = response
    if status_code >= 300:
        raise errors.KesError(_message(body), status_code)
    return body


def _message(body: bytes) -> str:
    try:
        return str(jsonfast.loads(body).get("message", "request failed"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip() or "request failed"


async def key_ls(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Names of the keys matching a pattern (``*`` = all)."""
    pattern = args.get("pattern", "*")
    body = await _call(handlers.list_keys, _api(ctx, "GET", "/v1/key/list/", pattern))
    return {"keys": [jsonfast.loads(line)["name"] for line in body.splitlines() if line.strip()]}


async def key_info(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Name, algorithm, creation time and creator of a key."""
    body = await _call(handlers.describe_key, _api(ctx, "GET", "/v1/key/describe/", args["name"]))
    return dict(jsonfast.loads(body))


async def key_create(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Create a new random AES256 key."""
    await _call(handlers.create_key, _api(ctx, "PUT", "/v1/key/create/", args["name"]))
    return {"name": args["name"], "created": True}


async def key_import(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Import 32 key bytes given in base64 (``cipher`` AES256 or ChaCha20, default AES256)."""
    body = jsonfast.dumps({"key": args["key"], "cipher": args.get("cipher", "AES256")})
    await _call(handlers.import_key, _api(ctx, "PUT", "/v1/key/import/", args["name"], body))
    return {"name": args["name"], "imported": True}


async def key_rm(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Delete a key from the keystore and the cache."""
    await _call(handlers.delete_key, _api(ctx, "DELETE", "/v1/key/delete/", args["name"]))
    return {"name": args["name"], "deleted": True}


# --- policies and identities (from the serving configuration) -----------------------------------


def _prefix(pattern: str) -> str:
    if not valid_pattern(pattern):
        raise errors.InvalidListPattern(pattern)
    return list_prefix(pattern)


async def policy_ls(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Policies matching a pattern, with the number of rules and identities of each."""
    prefix = _prefix(args.get("pattern", "*"))
    policies = ctx.app.state.config.policies
    rows = [
        {
            "name": p.name,
            "allow": len(p.allow),
            "deny": len(p.deny),
            "identities": len(p.identities),
        }
        for name, p in sorted(policies.items())
        if name.startswith(prefix)
    ]
    return {"policies": rows}


async def policy_show(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """A policy's allow and deny patterns and the identities assigned to it."""
    name = args["name"]
    if not valid_name(name):
        raise errors.InvalidPolicyName(name)
    policy = ctx.app.state.config.policies.get(name)
    if policy is None:
        raise errors.PolicyNotFound
    return {
        "name": policy.name,
        "allow": list(policy.allow),
        "deny": list(policy.deny),
        "identities": list(policy.identities),
    }


async def identity_ls(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Identities matching a pattern: the admin and every identity a policy names."""
    prefix = _prefix(args.get("pattern", "*"))
    config = ctx.app.state.config
    rows: list[dict[str, Any]] = []
    if config.admin and config.admin.startswith(prefix):
        rows.append({"identity": config.admin, "admin": True, "policy": None})
    for policy in config.policies.values():
        rows.extend(
            {"identity": ident, "admin": False, "policy": policy.name}
            for ident in policy.identities
            if ident.startswith(prefix)
        )
    rows.sort(key=lambda r: r["identity"])
    return {"identities": rows}


async def identity_show(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Whether an identity is the admin, and otherwise its policy and that policy's rules."""
    identity = args["identity"]
    if not valid_name(identity):
        raise errors.InvalidIdentity(identity)
    config = ctx.app.state.config
    if identity == config.admin:
        return {"identity": identity, "admin": True, "policy": None, "allow": [], "deny": []}
    name = ctx.app.state.authorizer.policy_of(identity)
    if name is None:
        raise errors.IdentityNotFound
    policy = config.policies[name]
    return {
        "identity": identity,
        "admin": False,
        "policy": name,
        "allow": list(policy.allow),
        "deny": list(policy.deny),
    }


# --- runtime controls -----------------------------------------------------------------------------


async def cache_purge(ctx: Context, _args: Mapping[str, str]) -> dict[str, Any]:
    """Drop every cached key (they are re-read from the keystore on next use)."""
    return {"purged": ctx.app.cache.purge()}


async def log_level(ctx: Context, args: Mapping[str, str]) -> dict[str, Any]:
    """Set the error log's minimum level (``log.error`` syntax); a reload restores the config's."""
    from kesd.config import parse_log_level
    from kesd.logsetup import python_level

    try:
        level = python_level(parse_log_level(args["level"]))
    except ValueError as exc:
        raise errors.KesError(str(exc), BAD_REQUEST) from None
    logger = logging.getLogger("kesd")
    previous = logging.getLevelName(logger.getEffectiveLevel())
    audit_logger = logging.getLogger("kesd.audit")
    if audit_logger.level == logging.NOTSET:
        # The audit log has its own switch (log.audit): never let this change silence it.
        audit_logger.setLevel(audit_logger.getEffectiveLevel())
    logger.setLevel(level)
    return {"previous": previous, "level": _level_name(level)}


def _level_name(level: int) -> str:
    return "OFF" if level > logging.CRITICAL else logging.getLevelName(level)


async def metrics(ctx: Context, _args: Mapping[str, str]) -> dict[str, Any]:
    """The Prometheus text the API's /v1/metrics serves."""
    from kesd import metrics as kesd_metrics

    return {"text": kesd_metrics.render(ctx.app).decode()}


OPERATIONS: Mapping[str, Operation] = {
    "hello": hello,
    "status": status,
    "reload": reload,
    "config.check": config_check,
    "key.ls": key_ls,
    "key.info": key_info,
    "key.create": key_create,
    "key.import": key_import,
    "key.rm": key_rm,
    "policy.ls": policy_ls,
    "policy.show": policy_show,
    "identity.ls": identity_ls,
    "identity.show": identity_show,
    "cache.purge": cache_purge,
    "log.level": log_level,
    "metrics": metrics,
}
