"""Server configuration: YAML text → validated, frozen dataclasses (pure, except :func:`load_config`).

This module holds the dataclasses, the config file's schema and the checks of what the values mean;
the YAML reading is :mod:`kesd.yamlreader`, durations and log levels :mod:`kesd.durations`, single-value
checks :mod:`kesd.config_checks` and the keystore table :mod:`kesd.config_keystores`.

Reads the 2023 (E2) and the newest KES file layouts (reference §7). Parsing works on the YAML node
tree, never on PyYAML's constructed objects, so every value keeps the text as written (``on``/``off``
stay words, as in Go's yaml.v3), its line number (for ``${ENV}`` errors) and its dotted field path.

Deviations from KES, on purpose: unknown fields, unknown ``api:`` routes and ``skip_auth`` on key
routes are refused (KES ignores or honours them); fields that older KES releases used and the newest
ignores are accepted with a warning (:attr:`Config.warnings`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from kesd.config_checks import (
    bool_field,
    check_address,
    check_identity,
    check_identity_case,
    check_pattern,
    duration_field,
)
from kesd.config_keystores import KEYSTORE_SCHEMA, check_keystore
from kesd.durations import LOG_LEVELS, LOG_OFF, parse_duration, parse_log_level
from kesd.errors import ConfigError
from kesd.names import valid_name
from kesd.quoting import quote as _q
from kesd.yamlreader import Ignored, ListOf, MapOf, Reader, Scalar, ScalarList, Spec

__all__ = [
    "API_PATHS",
    "CLIENT_AUTH_REQUEST",
    "CLIENT_AUTH_REQUIRE_AND_VERIFY",
    "CLIENT_AUTH_REQUIRE_ANY",
    "CLIENT_AUTH_VERIFY_IF_GIVEN",
    "DEFAULT_ADDRESS",
    "DEFAULT_ADMIN_SOCKET",
    "DEFAULT_CACHE_ANY",
    "DEFAULT_CACHE_UNUSED",
    "LOG_LEVELS",
    "LOG_OFF",
    "SCHEMA",
    "SKIP_AUTH_PATHS",
    "CacheConfig",
    "Config",
    "KeystoreConfig",
    "LogConfig",
    "Policy",
    "RouteConfig",
    "TLSConfig",
    "check_address",
    "check_pattern",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_log_level",
]

DEFAULT_ADDRESS = "0.0.0.0:7373"
DEFAULT_ADMIN_SOCKET = "/run/kesd/admin.sock"
DEFAULT_CACHE_ANY = 300.0
DEFAULT_CACHE_UNUSED = 30.0

# The route paths of the newest KES (reference §1.2): the only keys an ``api:`` section may use.
API_PATHS: tuple[str, ...] = (
    "/version",
    "/v1/ready",
    "/v1/status",
    "/v1/metrics",
    "/v1/api",
    "/v1/key/create/",
    "/v1/key/import/",
    "/v1/key/describe/",
    "/v1/key/list/",
    "/v1/key/delete/",
    "/v1/key/generate/",
    "/v1/key/encrypt/",
    "/v1/key/decrypt/",
    "/v1/key/hmac/",
    "/v1/policy/describe/",
    "/v1/policy/read/",
    "/v1/policy/list/",
    "/v1/identity/describe/",
    "/v1/identity/self/describe",
    "/v1/identity/list/",
    "/v1/log/error",
    "/v1/log/audit",
)
# Routes where ``skip_auth`` is allowed: none of them reveals or uses key material.
SKIP_AUTH_PATHS: frozenset[str] = frozenset({"/version", "/v1/ready", "/v1/status", "/v1/metrics", "/v1/api"})
# Routes of 2022-2023 servers that a config written then may still name: accepted with a warning.
_LEGACY_API_PATHS: Mapping[str, str] = MappingProxyType(
    {"/v1/key/bulk/decrypt/": "the bulk decrypt API was removed from KES in 2023"}
)

CLIENT_AUTH_REQUIRE_ANY = "require_any_client_cert"
CLIENT_AUTH_REQUIRE_AND_VERIFY = "require_and_verify_client_cert"
CLIENT_AUTH_REQUEST = "request_client_cert"
CLIENT_AUTH_VERIFY_IF_GIVEN = "verify_client_cert_if_given"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    """The shared empty read-only mapping (a dataclass default)."""
    return _EMPTY


# --- the configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    """The ``tls`` section: server key pair, client-certificate policy and TLS proxies."""

    key: str = ""
    cert: str = ""
    password: str = field(default="", repr=False)
    ca: str = ""
    auth: str = "off"
    proxy_identities: tuple[str, ...] = ()
    proxy_cert_header: str = ""

    @property
    def client_auth(self) -> str:
        """The handshake's client-certificate mode: always required, chain-verified only if auth is on."""
        return CLIENT_AUTH_REQUIRE_AND_VERIFY if self.auth == "on" else CLIENT_AUTH_REQUIRE_ANY


@dataclass(frozen=True)
class CacheConfig:
    """The ``cache.expiry`` section in seconds, as written (0 = not set)."""

    any: float = 0.0
    unused: float = 0.0
    offline: float = 0.0

    def effective(self) -> CacheConfig:
        """The values to run with: an unset ``any`` is 5 minutes, an unset ``unused`` 30 seconds.

        This is the documented (and E2) behaviour. The newest KES instead sets ``any`` to 30 s when
        ``unused`` is unset and leaves ``unused`` off (reference §7.2, a bug); kesd does not copy that.
        """
        return CacheConfig(
            any=self.any or DEFAULT_CACHE_ANY,
            unused=self.unused or DEFAULT_CACHE_UNUSED,
            offline=self.offline,
        )


@dataclass(frozen=True)
class RouteConfig:
    """One ``api.<path>`` entry: skip the policy check, and a timeout override (0 = route default)."""

    skip_auth: bool = False
    timeout: float = 0.0


@dataclass(frozen=True)
class Policy:
    """A named policy: allow and deny path patterns and the identities it applies to."""

    name: str
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    """Minimum levels of the error log and the audit log (slog integers; 9 = off)."""

    error_level: int = 0
    audit_level: int = 0
    # Audit events go to the console only when `log.audit` is set (on or a level), as in the 2023 KES.
    audit_console: bool = False


_SECRET_SETTINGS = frozenset(
    {"password", "secret", "secretkey", "token", "client_secret", "private_key", "jwt"}
)


@dataclass(frozen=True)
class KeystoreConfig:
    """The one configured keystore: its type (``fs``, ``vault``, ``aws-secretsmanager``, …) and settings.

    ``settings`` is the section as written (read-only, nested), e.g. ``{"path": "./keys"}`` for ``fs``.
    ``memory`` (no settings) is what dev mode uses; a config file must name a real keystore.
    """

    type: str = "memory"
    settings: Mapping[str, Any] = field(default_factory=_empty)

    @property
    def path(self) -> str:
        """The key directory of an ``fs`` keystore (empty for other types)."""
        return str(self.settings.get("path", "")) if self.type == "fs" else ""

    def __repr__(self) -> str:
        return f"KeystoreConfig(type={self.type!r}, settings={_masked(self.settings)!r})"


@dataclass(frozen=True)
class Config:
    """A whole, validated server configuration; relative paths stay as written (resolved by the server)."""

    file: str = ""
    version: str = ""
    address: str = DEFAULT_ADDRESS
    admin: str = ""
    tls: TLSConfig = field(default_factory=TLSConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    api: Mapping[str, RouteConfig] = field(default_factory=_empty)
    policies: Mapping[str, Policy] = field(default_factory=_empty)
    keys: tuple[str, ...] = ()
    keystore: KeystoreConfig = field(default_factory=KeystoreConfig)
    mlock: bool = False
    admin_socket: str = DEFAULT_ADMIN_SOCKET
    warnings: tuple[str, ...] = ()

    @property
    def client_auth(self) -> str:
        """The handshake mode KES uses: any ``skip_auth`` route makes the client certificate optional."""
        if any(route.skip_auth for route in self.api.values()):
            return CLIENT_AUTH_VERIFY_IF_GIVEN if self.tls.auth == "on" else CLIENT_AUTH_REQUEST
        return self.tls.client_auth

    @property
    def identities(self) -> Mapping[str, str]:
        """Identity → name of the one policy assigned to it."""
        return MappingProxyType({ident: p.name for p in self.policies.values() for ident in p.identities})

    def with_overrides(self, *, address: str | None = None, auth: str | None = None) -> Config:
        """This config with the ``--addr`` / ``--auth`` command-line values applied (validated)."""
        changes: dict[str, Any] = {}
        if address is not None:
            reason = check_address(address)
            if reason:
                raise ConfigError(f"invalid address {_q(address)}: {reason}", field="--addr", value=address)
            changes["address"] = address
        if auth is not None:
            mode = auth.strip().lower()
            if mode not in ("on", "off"):
                raise ConfigError(f"invalid auth {_q(auth)}: use on or off", field="--auth", value=auth)
            changes["tls"] = replace(self.tls, auth=mode)
        return replace(self, **changes)


# --- public helpers ------------------------------------------------------------------------------


def parse_config(text: str, *, file: str = "config.yml", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate a config file's text; ``env`` serves ``${NAME}`` values (none if omitted)."""
    reader = Reader(file, env if env is not None else {})
    root = reader.compose(text)
    top = reader.pairs(root, "")
    if "root" in top and "admin" not in top:
        raise reader.error(
            "no admin identity: the pre-2022 'root' field is not supported, use admin.identity",
            "admin.identity",
        )
    raw = reader.read(root, SCHEMA, "")
    return _build(raw, reader)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a config file, with ``${NAME}`` values taken from the process environment."""
    name = os.fsdecode(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError("config file does not exist", file=name) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=name) from None
    return parse_config(text, file=name, env=os.environ)


# --- the file's schema (read by kesd.yamlreader) ------------------------------------------------

_S, _L = Scalar(), ScalarList()

SCHEMA: Mapping[str, Spec] = {
    "version": Scalar(subst=False),
    "address": _S,
    "admin": {"identity": _S, "socket": _S},
    "tls": {
        "key": _S,
        "cert": _S,
        "password": _S,
        "auth": _S,
        "ca": _S,
        "proxy": {"identities": _L, "header": {"cert": _S}},
    },
    "cache": {"expiry": {"any": _S, "unused": _S, "offline": _S}},
    "api": MapOf({"skip_auth": _S, "timeout": _S}),
    "log": {"error": _S, "audit": _S},
    "policy": MapOf({"allow": ScalarList(subst=False), "deny": ScalarList(subst=False), "identities": _L}),
    "keys": ListOf({"name": _S}),
    "keystore": KEYSTORE_SCHEMA,
    "mlock": _S,
    "root": Ignored("the pre-2022 name of admin.identity; admin.identity is used"),
}


# --- stage 2: plain values → dataclasses, with the semantic checks ------------------------------


def _build(raw: Mapping[str, Any], r: Reader) -> Config:
    """Check the plain values of a whole file and assemble the Config."""
    version = raw.get("version", "")
    if version not in ("", "v1"):
        raise r.error(f"invalid server config version {_q(version)} (only v1 exists)", "version", version)
    admin_section = raw.get("admin", {})
    admin = admin_section.get("identity", "")
    if not admin:
        raise r.error(
            "no admin identity (set admin.identity; a non-hex value such as 'disabled' disables the admin)",
            "admin.identity",
            admin,
        )
    check_identity_case(admin, "admin.identity", r)
    address = raw.get("address", "") or DEFAULT_ADDRESS
    reason = check_address(address)
    if reason:
        raise r.error(f"invalid address {_q(address)}: {reason}", "address", address)
    tls = _build_tls(raw.get("tls", {}), admin, r)
    policies = _build_policies(raw.get("policy", {}), admin, frozenset(tls.proxy_identities), r)
    return Config(
        file=r.file,
        version=version,
        address=address,
        admin=admin,
        tls=tls,
        cache=_build_cache(raw.get("cache", {}).get("expiry", {}), r),
        log=_build_log(raw.get("log", {}), r),
        api=_build_api(raw.get("api", {}), r),
        policies=policies,
        keys=_build_keys(raw.get("keys", ()), r),
        keystore=_build_keystore(raw["keystore"], r) if "keystore" in raw else _memory_keystore(r),
        mlock=bool_field(raw.get("mlock", ""), "mlock", r),
        admin_socket=admin_section.get("socket", "") or DEFAULT_ADMIN_SOCKET,
        warnings=tuple(r.warnings),
    )


def _build_tls(tls: Mapping[str, Any], admin: str, r: Reader) -> TLSConfig:
    """The ``tls`` section: key and cert required, auth on/off, proxies neither admin nor invalid."""
    if not tls.get("key"):
        raise r.error("no TLS private key specified", "tls.key", tls.get("key"))
    if not tls.get("cert"):
        raise r.error("no TLS certificate specified", "tls.cert", tls.get("cert"))
    auth = tls.get("auth", "")
    mode = auth.strip().lower() or "off"
    if mode not in ("on", "off"):
        raise r.error(f"invalid auth {_q(auth)}: use on or off", "tls.auth", auth)
    proxy = tls.get("proxy", {})
    proxies: tuple[str, ...] = proxy.get("identities", ())
    for i, ident in enumerate(proxies):
        where = f"tls.proxy.identities[{i}]"
        check_identity(ident, where, r)
        if ident == admin:
            raise r.error(f"identity {_q(ident)} is already admin", where, ident)
    return TLSConfig(
        key=tls["key"],
        cert=tls["cert"],
        password=tls.get("password", ""),
        ca=tls.get("ca", ""),
        auth=mode,
        proxy_identities=proxies,
        proxy_cert_header=proxy.get("header", {}).get("cert", ""),
    )


def _build_cache(expiry: Mapping[str, Any], r: Reader) -> CacheConfig:
    """The ``cache.expiry`` durations, each ≥ 0."""
    values: dict[str, float] = {}
    for name in ("any", "unused", "offline"):
        where, text = f"cache.expiry.{name}", expiry.get(name, "")
        seconds = duration_field(text, where, "invalid cache expiry", r)
        if seconds < 0:
            raise r.error(f"invalid cache expiry {_q(text)}: must not be negative", where, text)
        values[name] = seconds
    return CacheConfig(**values)


def _build_log(log: Mapping[str, Any], r: Reader) -> LogConfig:
    """The ``log`` levels (E2 ``on``/``off`` and the newest level names)."""
    levels: dict[str, int] = {}
    for name in ("error", "audit"):
        text = log.get(name, "")
        try:
            levels[name] = parse_log_level(text)
        except ValueError as exc:
            raise r.error(str(exc), f"log.{name}", text) from None
    audit_text = str(log.get("audit", "")).strip()
    return LogConfig(
        error_level=levels["error"],
        audit_level=levels["audit"],
        audit_console=bool(audit_text) and levels["audit"] <= parse_log_level("INFO"),
    )


def _build_api(api: Mapping[str, Any], r: Reader) -> Mapping[str, RouteConfig]:
    """The ``api`` overrides: known routes only, timeouts ≥ 0, skip_auth only on public routes."""
    routes: dict[str, RouteConfig] = {}
    for path, entry in api.items():
        where = f"api.{path}"
        if path in _LEGACY_API_PATHS:
            r.warn(where, _LEGACY_API_PATHS[path])
            continue
        if path not in API_PATHS:
            raise r.error(_unknown_route(path), where, path)
        text = entry.get("timeout", "")
        timeout = duration_field(text, f"{where}.timeout", "invalid API timeout", r)
        if timeout < 0:
            raise r.error(f"invalid API timeout {_q(text)}: must not be negative", f"{where}.timeout", text)
        skip = bool_field(entry.get("skip_auth", ""), f"{where}.skip_auth", r)
        if skip and path not in SKIP_AUTH_PATHS:
            raise r.error(
                f"skip_auth is not allowed for {path}: it would let any client call it without a policy "
                f"check (disabling authorization for key, policy and identity operations); it is only "
                f"allowed for {', '.join(sorted(SKIP_AUTH_PATHS))}",
                f"{where}.skip_auth",
                entry.get("skip_auth"),
            )
        routes[path] = RouteConfig(skip_auth=skip, timeout=timeout)
    return MappingProxyType(routes)


def _unknown_route(path: str) -> str:
    """The reason for an ``api`` key that is not a route path, with the closest route as a hint."""
    close = difflib.get_close_matches(path, API_PATHS, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see the route table: e.g. /v1/status)"
    return f"unknown API route {_q(path)}{hint}"


def _build_policies(
    policies: Mapping[str, Any], admin: str, proxies: frozenset[str], r: Reader
) -> Mapping[str, Policy]:
    """The ``policy`` section: valid names and patterns; each identity in at most one policy."""
    owners: dict[str, str] = {}
    built: dict[str, Policy] = {}
    for name, body in policies.items():
        if not valid_name(name):
            raise r.error(
                f"invalid policy name {_q(name)}: use 1-80 characters from A-Z a-z 0-9 _ -",
                f"policy.{name}",
                name,
            )
        for kind in ("allow", "deny"):
            for i, pattern in enumerate(body.get(kind, ())):
                reason = check_pattern(pattern)
                if reason:
                    where = f"policy.{name}.{kind}[{i}]"
                    raise r.error(f"invalid pattern {_q(pattern)}: {reason}", where, pattern)
        identities: tuple[str, ...] = body.get("identities", ())
        for i, ident in enumerate(identities):
            where = f"policy.{name}.identities[{i}]"
            check_identity(ident, where, r)
            if ident == admin:
                raise r.error(f"identity {_q(ident)} is already admin", where, ident)
            if ident in proxies:
                raise r.error(f"identity {_q(ident)} is already a TLS proxy", where, ident)
            if ident in owners:
                raise r.error(
                    f"cannot assign policy '{name}' to {_q(ident)}: identity already has a policy "
                    f"('{owners[ident]}')",
                    where,
                    ident,
                )
            owners[ident] = name
        built[name] = Policy(name, body.get("allow", ()), body.get("deny", ()), identities)
    return MappingProxyType(built)


def _build_keys(keys: tuple[Mapping[str, Any], ...], r: Reader) -> tuple[str, ...]:
    """The ``keys`` to create at start-up: valid, distinct names."""
    names: list[str] = []
    for i, entry in enumerate(keys):
        where, name = f"keys[{i}].name", entry.get("name", "")
        if not name:
            raise r.error("no key name specified", where, name)
        if not valid_name(name):
            raise r.error(
                f"invalid key name {_q(name)}: use 1-80 characters from A-Z a-z 0-9 _ -", where, name
            )
        if name in names:
            raise r.error(f"key {_q(name)} is defined multiple times", where, name)
        names.append(name)
    return tuple(names)


def _memory_keystore(r: Reader) -> KeystoreConfig:
    """No ``keystore`` section at all: keys live in memory (as KES of 2022), said loudly."""
    r.warnings.append(
        f"{r.file}: no keystore section: keys are kept in memory and lost when the server stops "
        "(set keystore.fs.path to keep them)"
    )
    return KeystoreConfig(type="memory")


def _build_keystore(sections: Mapping[str, Any], r: Reader) -> KeystoreConfig:
    """Exactly one keystore, with its required fields present."""
    kind, settings = check_keystore(sections, r)
    return KeystoreConfig(type=kind, settings=settings)


def _masked(settings: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    """Keystore settings for a repr: credentials and other secrets replaced by ``***``."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out[key] = _masked(value, key)
        elif key in _SECRET_SETTINGS or parent == "credentials":
            out[key] = "***"
        else:
            out[key] = value
    return out
