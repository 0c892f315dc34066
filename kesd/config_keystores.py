"""What each keystore backend's config section looks like, and the check that exactly one is set (pure).

The ``keystore:`` schema (fields per backend, for :mod:`kesd.yamlreader`), the fields each backend
requires, the backends that need exactly one of several authentication sections, and Vault's extra
rules. Kept apart from kesd.config because it grows with every backend and is data more than logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kesd.config_checks import duration_field
from kesd.quoting import quote as _q
from kesd.yamlreader import Ignored, Reader, Scalar, ScalarList, Spec

_S, _L = Scalar(), ScalarList()
_TLS_FILES = {"key": _S, "cert": _S, "ca": _S}
_CA = {"ca": _S}
_RETRY_E1 = Ignored("a v0.22 (2022) setting the newest KES ignores")

KEYSTORE_SCHEMA: Mapping[str, Spec] = {
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
                "retry": Ignored("the newest KES ignores it"),
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
    "kes": Ignored("the 2023 KES-to-KES keystore is not supported"),
    "generic": Ignored("the 2022 generic KMS-plugin keystore is not supported"),
}
# Keystores named by two levels (``aws: secretsmanager:``): their type is ``aws-secretsmanager``.
_TWO_LEVEL = frozenset({"fortanix", "gemalto", "gcp", "aws", "azure", "entrust"})

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


def check_keystore(sections: Mapping[str, Any], r: Reader) -> tuple[str, Mapping[str, Any]]:
    """The one configured keystore's type and read-only settings: exactly one, its required fields present."""
    found: list[tuple[str, str, Mapping[str, Any]]] = []
    for provider, body in sections.items():
        if provider not in _TWO_LEVEL:
            found.append((provider, f"keystore.{provider}", body))
            continue
        if not body:
            (only,) = KEYSTORE_SCHEMA[provider]  # type: ignore[misc]
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
    return kind, _frozen(settings)


def _require(settings: Mapping[str, Any], fields: tuple[str, ...], where: str, r: Reader) -> None:
    """Refuse a keystore section that lacks one of ``fields`` (dotted paths into the section)."""
    for dotted in fields:
        value: Any = settings
        for part in dotted.split("."):
            value = value.get(part, "") if isinstance(value, Mapping) else ""
        if not value:
            raise r.error(f"no {dotted.rsplit('.', 1)[-1]} specified", f"{where}.{dotted}")


def _check_vault(vault: Mapping[str, Any], where: str, r: Reader) -> None:
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
    if duration_field(ping, f"{where}.status.ping", "invalid ping interval", r) < 0:
        raise r.error(f"invalid ping interval {_q(ping)}: must not be negative", f"{where}.status.ping", ping)


def _frozen(value: Any) -> Any:
    """A read-only deep copy of a plain settings value (dicts become mapping proxies)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value
