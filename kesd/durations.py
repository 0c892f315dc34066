"""Go-style duration strings and slog log levels → numbers (pure).

Config fields such as ``cache.expiry.any`` use Go's ``time.ParseDuration`` grammar and ``log.error``
uses slog level names; both are parsed here, apart from the YAML handling, so that the CLI and the
admin API can parse the same values the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from kesd.quoting import quote as _q

LOG_LEVELS: Mapping[str, int] = MappingProxyType({"debug": -4, "info": 0, "warn": 4, "error": 8})
LOG_OFF = 9

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
