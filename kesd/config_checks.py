"""Checks of single config values: addresses, policy patterns, durations, booleans, identities (pure).

:func:`check_address` and :func:`check_pattern` return the reason a value is unusable (or None), so
the config parser and the ``--addr`` override word their own errors around them; the ``*_field`` and
``check_identity*`` helpers raise (or warn) through a :class:`~kesd.yamlreader.Reader`, naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType

from kesd.durations import parse_duration
from kesd.names import valid_name
from kesd.quoting import quote as _q
from kesd.yamlreader import Reader


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


# --- fields read through a Reader: the error names the file and field ------------------------------

_BOOLS: Mapping[str, bool] = MappingProxyType(
    {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False, "": False}
)
_HEX_IDENTITY = re.compile(r"[0-9a-fA-F]{64}")


def duration_field(text: str, where: str, what: str, r: Reader) -> float:
    """A duration field in seconds ("" = 0), or a ConfigError naming ``what`` went wrong."""
    if not text.strip():
        return 0.0
    try:
        return parse_duration(text.strip())
    except ValueError as exc:
        raise r.error(f"{what}: {exc}", where, text) from None


def bool_field(text: str, where: str, r: Reader) -> bool:
    """A boolean field: true/false, yes/no, on/off (any case; "" = false)."""
    value = _BOOLS.get(text.strip().lower())
    if value is None:
        raise r.error(f"invalid boolean {_q(text)}: use true or false", where, text)
    return value


def check_identity(ident: str, where: str, r: Reader) -> None:
    """Refuse an identity that ``valid_name`` rejects; warn about upper-case hex (it never matches)."""
    if not valid_name(ident):
        raise r.error(
            f"invalid identity {_q(ident)}: use the 64 lower-case hex characters `kes identity of` prints",
            where,
            ident,
        )
    check_identity_case(ident, where, r)


def check_identity_case(ident: str, where: str, r: Reader) -> None:
    """Warn when an identity is upper-case hex: identities are compared exactly, in lower case."""
    if _HEX_IDENTITY.fullmatch(ident) and ident != ident.lower():
        r.warnings.append(
            f"{r.file}: {where}: identity {_q(ident)} has upper-case letters and never matches a "
            "certificate (identities are lower-case hex)"
        )
