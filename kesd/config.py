"""Server configuration: YAML text → validated, frozen dataclasses (pure, except :func:`load_config`).

Reads the 2023 (E2) and the newest KES file layouts (reference §7). Parsing works on the YAML node
tree, never on PyYAML's constructed objects, so every value keeps the text as written (``on``/``off``
stay words, as in Go's yaml.v3), its line number (for ``${ENV}`` errors) and its dotted field path.

Deviations from KES, on purpose: unknown fields, unknown ``api:`` routes and ``skip_auth`` on key
routes are refused (KES ignores or honours them); fields that older KES releases used and the newest
ignores are accepted with a warning (:attr:`Config.warnings`).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeAlias

import yaml

from kesd.errors import ConfigError
from kesd.names import valid_name

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

LOG_LEVELS: Mapping[str, int] = MappingProxyType({"debug": -4, "info": 0, "warn": 4, "error": 8})
LOG_OFF = 9

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
    reader = _Reader(file, env if env is not None else {})
    root = reader.compose(text)
    top = reader.pairs(root, "")
    if "root" in top and "admin" not in top:
        raise reader.error(
            "no admin identity: the pre-2022 'root' field is not supported, use admin.identity",
            "admin.identity",
        )
    raw = reader.read(root, _SCHEMA, "")
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


_UNITS_NS: Mapping[str, int] = MappingProxyType(
    {
        "ns": 1,
        "us": 1_000,
        "\u00b5s": 1_000,
        "\u03bcs": 1_000,
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60_000_000_000,
        "h": 3_600_000_000_000,
    }
)
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")
_MAX_NS = 1 << 63


def parse_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string (``5m0s``, ``1h30m``, ``1.5h``, ``-1s``, ``0``) → seconds."""
    return _duration_ns(text) / 1e9


def _duration_ns(text: str) -> int:
    """Go's duration grammar ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`` → integer nanoseconds."""
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"invalid duration {_q(text)}")
    total = 0
    while rest:
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2) or ""
        if not whole and not frac:
            raise ValueError(f"invalid duration {_q(text)}")
        rest = rest[number.end() :]
        unit = _UNIT.match(rest).group()  # type: ignore[union-attr]
        if not unit:
            raise ValueError(
                f"missing unit in duration {_q(text)}: a bare number is not a duration, "
                "write a unit (ns, us, ms, s, m, h), e.g. 30s or 5m"
            )
        rest = rest[len(unit) :]
        scale_ns = _UNITS_NS.get(unit)
        if scale_ns is None:
            raise ValueError(f"unknown unit {_q(unit)} in duration {_q(text)} (use ns, us, ms, s, m or h)")
        value = int(whole or "0")
        if value > _MAX_NS // scale_ns:
            raise ValueError(f"invalid duration {_q(text)}: out of range")
        value *= scale_ns
        fraction, scale = _leading_fraction(frac)
        if fraction:
            value += int(float(fraction) * (scale_ns / scale))
        total += value
        if total > _MAX_NS:
            raise ValueError(f"invalid duration {_q(text)}: out of range")
    if negative:
        return -total
    if total > _MAX_NS - 1:
        raise ValueError(f"invalid duration {_q(text)}: out of range")
    return total


def _leading_fraction(digits: str) -> tuple[int, float]:
    """Go's ``leadingFraction``: the fraction digits as an integer and 10^(digits used)."""
    value, scale = 0, 1.0
    for digit in digits:
        if value > (_MAX_NS - 1) // 10:
            break
        nxt = value * 10 + int(digit)
        if nxt > _MAX_NS:
            break
        value, scale = nxt, scale * 10
    return value, scale


_LEVEL = re.compile(r"(debug|info|warn|error)([+-][0-9]+)?")
_INT = re.compile(r"[+-]?[0-9]+")


def parse_log_level(text: str) -> int:
    """A ``log.error``/``log.audit`` value → slog level (§7.2).

    ``""``/``on`` → 0 (INFO), ``off`` → 9, ``DEBUG`` −4, ``INFO`` 0, ``WARN`` 4, ``ERROR`` 8, each with an
    optional ``+N``/``-N``; a bare integer is used as is. Case-insensitive.
    """
    word = text.strip().lower()
    if word in ("", "on"):
        return 0
    if word == "off":
        return LOG_OFF
    if _INT.fullmatch(word):
        return int(word)
    match = _LEVEL.fullmatch(word)
    if match is None:
        raise ValueError(
            f"invalid log level {_q(text)}: use on, off, DEBUG, INFO, WARN or ERROR "
            "(optionally +N), or an integer"
        )
    return LOG_LEVELS[match.group(1)] + int(match.group(2) or "0")


def check_address(address: str) -> str | None:
    """Why ``address`` is not ``ip:port`` / ``[ipv6]:port`` / ``:port`` with a port 0-65535, or None."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return "missing port (write ip:port or :port, e.g. 0.0.0.0:7373)"
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        return f"invalid port {_q(port)} (use a number from 0 to 65535)"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"invalid IPv6 address {_q(host)}"
        return None
    if ":" in host:
        return "an IPv6 host must be written in brackets, e.g. [::1]:7373"
    if host:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"host {_q(host)} is not an IP address (host names are not allowed; use an IP or :port)"
    return None


def check_pattern(pattern: str) -> str | None:
    """Why a policy allow/deny pattern is unusable (empty, not a path, malformed Go glob), or None."""
    if not pattern:
        return "empty pattern (it never matches anything)"
    if not pattern.startswith("/"):
        return "pattern must start with '/' (it is matched against URL paths such as /v1/key/create/my-key)"
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                return "malformed glob: trailing '\\'"
            i += 2
        elif char == "[":
            end = _class_end(pattern, i + 1)
            if end is None:
                return "malformed glob: unclosed or invalid character class '[...]'"
            i = end
        else:
            i += 1
    return None


def _class_end(pattern: str, i: int) -> int | None:
    """Index after the ``]`` closing a class whose body starts at ``i``, or None if Go rejects it."""
    n = len(pattern)
    if i < n and pattern[i] == "^":
        i += 1
    ranges = 0
    while True:
        if i >= n:
            return None
        if pattern[i] == "]" and ranges > 0:
            return i + 1
        i = _class_char(pattern, i)
        if i is None:
            return None
        if pattern[i] == "-":
            i = _class_char(pattern, i + 1)
            if i is None:
                return None
        ranges += 1


def _class_char(pattern: str, i: int) -> int | None:
    """Go's ``getEsc``: index after one (possibly escaped) class character, None if malformed."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        return None
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            return None
    i += 1
    return i if i < n else None


# --- stage 1: YAML nodes → plain values, checking shape, unknown fields and ${ENV} ---------------


@dataclass(frozen=True)
class _Scalar:
    """One value; ``subst`` = ``${NAME}`` is replaced from the environment."""

    subst: bool = True


@dataclass(frozen=True)
class _List:
    """A list of values."""

    subst: bool = True


@dataclass(frozen=True)
class _MapOf:
    """A mapping with free keys (policy names, API paths), each value of one shape."""

    value: _Spec


@dataclass(frozen=True)
class _ListOf:
    """A list of mappings of one shape."""

    item: _Spec


@dataclass(frozen=True)
class _Ignored:
    """A field an older KES release used: accepted, dropped, reported as a warning."""

    reason: str


_Spec: TypeAlias = "_Scalar | _List | _MapOf | _ListOf | _Ignored | Mapping[str, _Spec]"

_S, _L = _Scalar(), _List()
_TLS_FILES = {"key": _S, "cert": _S, "ca": _S}
_CA = {"ca": _S}
_RETRY_E1 = _Ignored("a v0.22 (2022) setting the newest KES ignores")

_KEYSTORES: Mapping[str, _Spec] = {
    "fs": {"path": _S},
    "vault": {
        "endpoint": _S,
        "engine": _S,
        "version": _S,
        "namespace": _S,
        "prefix": _S,
        "transit": {"engine": _S, "key": _S},
        "approle": {"namespace": _S, "engine": _S, "id": _S, "secret": _S, "retry": _RETRY_E1},
        "kubernetes": {"namespace": _S, "engine": _S, "role": _S, "jwt": _S, "retry": _RETRY_E1},
        "tls": _TLS_FILES,
        "status": {"ping": _S},
    },
    "fortanix": {"sdkms": {"endpoint": _S, "group_id": _S, "credentials": {"key": _S}, "tls": _CA}},
    "gemalto": {
        "keysecure": {
            "endpoint": _S,
            "credentials": {
                "token": _S,
                "domain": _S,
                "retry": _Ignored("the newest KES ignores it"),
            },
            "tls": _CA,
        }
    },
    "gcp": {
        "secretmanager": {
            "project_id": _S,
            "endpoint": _S,
            "scopes": _L,
            "credentials": {"client_email": _S, "client_id": _S, "private_key_id": _S, "private_key": _S},
        }
    },
    "aws": {
        "secretsmanager": {
            "endpoint": _S,
            "region": _S,
            "kmskey": _S,
            "credentials": {"accesskey": _S, "secretkey": _S, "token": _S},
        }
    },
    "azure": {
        "keyvault": {
            "endpoint": _S,
            "credentials": {"tenant_id": _S, "client_id": _S, "client_secret": _S},
            "managed_identity": {"client_id": _S},
        }
    },
    "entrust": {
        "keycontrol": {
            "endpoint": _S,
            "vault_id": _S,
            "box_id": _S,
            "credentials": {"username": _S, "password": _S},
            "tls": _CA,
        }
    },
    "kes": _Ignored("the 2023 KES-to-KES keystore is not supported"),
    "generic": _Ignored("the 2022 generic KMS-plugin keystore is not supported"),
}
# Keystores named by two levels (``aws: secretsmanager:``): their type is ``aws-secretsmanager``.
_TWO_LEVEL = frozenset({"fortanix", "gemalto", "gcp", "aws", "azure", "entrust"})

_SCHEMA: Mapping[str, _Spec] = {
    "version": _Scalar(subst=False),
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
    "api": _MapOf({"skip_auth": _S, "timeout": _S}),
    "log": {"error": _S, "audit": _S},
    "policy": _MapOf({"allow": _List(subst=False), "deny": _List(subst=False), "identities": _L}),
    "keys": _ListOf({"name": _S}),
    "keystore": _KEYSTORES,
    "mlock": _S,
    "root": _Ignored("the pre-2022 name of admin.identity; admin.identity is used"),
}

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Reader:
    """Walks the YAML node tree of one file, collecting warnings and raising ConfigErrors."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.warnings: list[str] = []
        self._loader: yaml.SafeLoader | None = None

    def error(self, reason: str, field: str, value: object = None) -> ConfigError:
        """A one-line ConfigError for ``field`` of this file."""
        return ConfigError(" ".join(reason.split()), file=self.file, field=field, value=value)

    def warn(self, field: str, reason: str) -> None:
        """Record that ``field`` is accepted but has no effect."""
        self.warnings.append(f"{self.file}: field {field} is ignored ({reason})")

    def compose(self, text: str) -> yaml.Node | None:
        """The document's root node (None for an empty file); YAML syntax errors become ConfigErrors."""
        self._loader = yaml.SafeLoader(text)
        try:
            return self._loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise self.error(f"invalid YAML: {exc.problem}{where}", "") from None
        except yaml.YAMLError as exc:
            raise self.error(f"invalid YAML: {exc}", "") from None

    def read(self, node: yaml.Node | None, spec: _Spec, path: str) -> Any:
        """The plain value of ``node`` shaped by ``spec``: str, tuple, or dict of those."""
        if isinstance(spec, _Scalar):
            return self.scalar(node, path, subst=spec.subst)
        if isinstance(spec, _List):
            subst = spec.subst
            return self.sequence(node, path, lambda n, p: self.scalar(n, p, subst=subst))
        if isinstance(spec, _ListOf):
            item = spec.item
            return self.sequence(node, path, lambda n, p: self.read(n, item, p))
        if isinstance(spec, _MapOf):
            return {k: self.read(v, spec.value, _join(path, k)) for k, v in self.pairs(node, path).items()}
        assert isinstance(spec, Mapping)
        out: dict[str, Any] = {}
        for key, value in self.pairs(node, path).items():
            child = _join(path, key)
            sub = spec.get(key)
            if sub is None:
                raise self.error(_unknown(key, spec), child, key)
            if isinstance(sub, _Ignored):
                self.warn(child, sub.reason)
                continue
            out[key] = self.read(value, sub, child)
        return out

    def pairs(self, node: yaml.Node | None, path: str) -> dict[str, yaml.Node]:
        """A mapping node's entries by key text (merge keys applied); duplicate keys are refused."""
        if node is None or _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(f"expected a section of 'field: value' lines, found {_kind(node)}", path)
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(f"field names must be plain text, found {_kind(key_node)}", path)
            if key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise self.error(
                    f"field defined twice (lines {seen[key_node.value]} and {line})",
                    _join(path, key_node.value),
                )
            seen[key_node.value] = line
        assert self._loader is not None
        try:
            self._loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise self.error(f"invalid YAML merge: {getattr(exc, 'problem', exc)}", path) from None
        return {key.value: value for key, value in node.value}

    def sequence(
        self, node: yaml.Node | None, path: str, item: Callable[[yaml.Node, str], Any]
    ) -> tuple[Any, ...]:
        """A list node's items, each converted by ``item`` with its ``path[i]``."""
        if node is None or _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(f"expected a list ('- value' lines), found {_kind(node)}", path)
        return tuple(item(child, f"{path}[{i}]") for i, child in enumerate(node.value))

    def scalar(self, node: yaml.Node | None, path: str, *, subst: bool) -> str:
        """A single value's text as written (null → ""), with whole-value ``${NAME}`` substitution."""
        if node is None or _is_null(node):
            return ""
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(f"expected a single value, found {_kind(node)}", path)
        text: str = node.value
        stripped = text.strip()
        if subst and stripped.startswith("${") and stripped.endswith("}"):
            name = stripped[2:-1].strip()
            if name not in self.env:
                line = node.start_mark.line + 1
                raise self.error(f"referenced env. variable '{name}' in line '{line}' not found", path, text)
            return self.env[name]
        return text


def _is_null(node: yaml.Node) -> bool:
    """True for a plain ``~``/``null``/empty scalar, which Go decodes as the zero value."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _kind(node: yaml.Node) -> str:
    """How a node reads in an error message (never its text: it may be a misplaced secret)."""
    if isinstance(node, yaml.MappingNode):
        return "a section"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a single value"


def _unknown(key: str, known: Mapping[str, Any]) -> str:
    """The reason for an unknown field, with a "did you mean" hint when a known field is close."""
    names = [name for name, spec in known.items() if not isinstance(spec, _Ignored)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known fields: {', '.join(names)})"
    return f"unknown field {_q(key)}{hint}"


def _join(path: str, key: str) -> str:
    """The dotted path of ``key`` under ``path``."""
    return f"{path}.{key}" if path else key


def _q(value: str) -> str:
    """``value`` quoted for a one-line message: control characters escaped, long values cut."""
    text = value if len(value) <= 100 else value[:100] + "…"
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


# --- stage 2: plain values → dataclasses, with the semantic checks ------------------------------

_BOOLS: Mapping[str, bool] = MappingProxyType(
    {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False, "": False}
)
_HEX_IDENTITY = re.compile(r"[0-9a-fA-F]{64}")


def _build(raw: Mapping[str, Any], r: _Reader) -> Config:
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
    _check_identity_case(admin, "admin.identity", r)
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
        mlock=_bool(raw.get("mlock", ""), "mlock", r),
        admin_socket=admin_section.get("socket", "") or DEFAULT_ADMIN_SOCKET,
        warnings=tuple(r.warnings),
    )


def _build_tls(tls: Mapping[str, Any], admin: str, r: _Reader) -> TLSConfig:
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
        _check_identity(ident, where, r)
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


def _build_cache(expiry: Mapping[str, Any], r: _Reader) -> CacheConfig:
    """The ``cache.expiry`` durations, each ≥ 0."""
    values: dict[str, float] = {}
    for name in ("any", "unused", "offline"):
        where, text = f"cache.expiry.{name}", expiry.get(name, "")
        seconds = _duration(text, where, "invalid cache expiry", r)
        if seconds < 0:
            raise r.error(f"invalid cache expiry {_q(text)}: must not be negative", where, text)
        values[name] = seconds
    return CacheConfig(**values)


def _build_log(log: Mapping[str, Any], r: _Reader) -> LogConfig:
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


def _build_api(api: Mapping[str, Any], r: _Reader) -> Mapping[str, RouteConfig]:
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
        timeout = _duration(text, f"{where}.timeout", "invalid API timeout", r)
        if timeout < 0:
            raise r.error(f"invalid API timeout {_q(text)}: must not be negative", f"{where}.timeout", text)
        skip = _bool(entry.get("skip_auth", ""), f"{where}.skip_auth", r)
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
    policies: Mapping[str, Any], admin: str, proxies: frozenset[str], r: _Reader
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
            _check_identity(ident, where, r)
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


def _build_keys(keys: tuple[Mapping[str, Any], ...], r: _Reader) -> tuple[str, ...]:
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


_REQUIRED: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "fs": ("path",),
        "vault": ("endpoint",),
        "fortanix-sdkms": ("endpoint", "credentials.key"),
        "gemalto-keysecure": ("endpoint", "credentials.token"),
        "gcp-secretmanager": ("project_id",),
        "aws-secretsmanager": ("endpoint", "region"),
        "azure-keyvault": ("endpoint",),
        "entrust-keycontrol": (
            "endpoint",
            "vault_id",
            "box_id",
            "credentials.username",
            "credentials.password",
        ),
    }
)
# Keystores that need exactly one of several authentication sections, with each one's required fields.
_ONE_OF: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "vault": {"approle": ("id", "secret"), "kubernetes": ("jwt",)},
        "azure-keyvault": {
            "credentials": ("tenant_id", "client_id", "client_secret"),
            "managed_identity": ("client_id",),
        },
    }
)


def _memory_keystore(r: _Reader) -> KeystoreConfig:
    """No ``keystore`` section at all: keys live in memory (as KES of 2022), said loudly."""
    r.warnings.append(
        f"{r.file}: no keystore section: keys are kept in memory and lost when the server stops "
        "(set keystore.fs.path to keep them)"
    )
    return KeystoreConfig(type="memory")


def _build_keystore(sections: Mapping[str, Any], r: _Reader) -> KeystoreConfig:
    """Exactly one keystore, with its required fields present."""
    found: list[tuple[str, str, Mapping[str, Any]]] = []
    for provider, body in sections.items():
        if provider not in _TWO_LEVEL:
            found.append((provider, f"keystore.{provider}", body))
            continue
        if not body:
            (only,) = _KEYSTORES[provider]  # type: ignore[misc]
            raise r.error(
                f"no keystore specified (expected keystore.{provider}.{only})", f"keystore.{provider}"
            )
        found.extend(
            (f"{provider}-{sub}", f"keystore.{provider}.{sub}", inner) for sub, inner in body.items()
        )
    if not found:
        raise r.error("no keystore specified (e.g. keystore.fs.path)", "keystore")
    if len(found) > 1:
        raise r.error(
            f"more than once keystore specified: {', '.join(where for _, where, _ in found)} "
            "(exactly one is allowed)",
            "keystore",
        )
    kind, where, settings = found[0]
    _require(settings, _REQUIRED[kind], where, r)
    methods = _ONE_OF.get(kind, {})
    if methods:
        chosen = [m for m in methods if m in settings]
        if len(chosen) != 1:
            raise r.error(f"specify exactly one of {' or '.join(methods)}", where)
        _require(settings[chosen[0]], methods[chosen[0]], f"{where}.{chosen[0]}", r)
    if kind == "vault":
        _check_vault(settings, where, r)
    return KeystoreConfig(type=kind, settings=_frozen(settings))


def _require(settings: Mapping[str, Any], fields: tuple[str, ...], where: str, r: _Reader) -> None:
    """Refuse a keystore section that lacks one of ``fields`` (dotted paths into the section)."""
    for dotted in fields:
        value: Any = settings
        for part in dotted.split("."):
            value = value.get(part, "") if isinstance(value, Mapping) else ""
        if not value:
            raise r.error(f"no {dotted.rsplit('.', 1)[-1]} specified", f"{where}.{dotted}")


def _check_vault(vault: Mapping[str, Any], where: str, r: _Reader) -> None:
    """Vault's extra rules: kv version v1/v2, transit key, TLS key and cert together, ping ≥ 0."""
    version = vault.get("version", "")
    if version not in ("", "v1", "v2"):
        raise r.error(f"invalid K/V engine version {_q(version)}: use v1 or v2", f"{where}.version", version)
    if "transit" in vault:
        _require(vault["transit"], ("key",), f"{where}.transit", r)
    tls = vault.get("tls", {})
    if bool(tls.get("key")) != bool(tls.get("cert")):
        raise r.error("the client key and cert must be specified together", f"{where}.tls")
    ping = vault.get("status", {}).get("ping", "")
    if _duration(ping, f"{where}.status.ping", "invalid ping interval", r) < 0:
        raise r.error(f"invalid ping interval {_q(ping)}: must not be negative", f"{where}.status.ping", ping)


def _duration(text: str, where: str, what: str, r: _Reader) -> float:
    """A duration field in seconds ("" = 0), or a ConfigError naming ``what`` went wrong."""
    if not text.strip():
        return 0.0
    try:
        return parse_duration(text.strip())
    except ValueError as exc:
        raise r.error(f"{what}: {exc}", where, text) from None


def _bool(text: str, where: str, r: _Reader) -> bool:
    """A boolean field: true/false, yes/no, on/off (any case; "" = false)."""
    value = _BOOLS.get(text.strip().lower())
    if value is None:
        raise r.error(f"invalid boolean {_q(text)}: use true or false", where, text)
    return value


def _check_identity(ident: str, where: str, r: _Reader) -> None:
    """Refuse an identity that ``valid_name`` rejects; warn about upper-case hex (it never matches)."""
    if not valid_name(ident):
        raise r.error(
            f"invalid identity {_q(ident)}: use the 64 lower-case hex characters `kes identity of` prints",
            where,
            ident,
        )
    _check_identity_case(ident, where, r)


def _check_identity_case(ident: str, where: str, r: _Reader) -> None:
    """Warn when an identity is upper-case hex: identities are compared exactly, in lower case."""
    if _HEX_IDENTITY.fullmatch(ident) and ident != ident.lower():
        r.warnings.append(
            f"{r.file}: {where}: identity {_q(ident)} has upper-case letters and never matches a "
            "certificate (identities are lower-case hex)"
        )


def _frozen(value: Any) -> Any:
    """A read-only deep copy of a plain settings value (dicts become mapping proxies)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value


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
