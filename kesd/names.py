"""Validation of key, policy and identity names and of list prefixes (pure).

KES's newest ``validName`` forbids a leading or trailing ``-`` and the name ``_``; the 2023 servers
allowed both. A key directory written in 2023 may hold such names, so kesd accepts a name that
either era accepted (docs/compatibility.md): refusing it would strand existing keys.
"""

from __future__ import annotations

import re

MAX_NAME_BYTES = 80

_ALPHABET = re.compile(r"[0-9A-Za-z_-]+")


def valid_name(name: str) -> bool:
    """True if ``name`` may be used as a key, policy or identity name in a path or config."""
    return 0 < len(name.encode()) <= MAX_NAME_BYTES and _ALPHABET.fullmatch(name) is not None


def valid_name_newest(name: str) -> bool:
    """The newest KES rule: :func:`valid_name` without a leading/trailing ``-`` and not ``_``."""
    return valid_name(name) and not name.startswith("-") and not name.endswith("-") and name != "_"


def valid_pattern(pattern: str) -> bool:
    """True for a list argument: empty, ``*``, or a name-alphabet prefix with one optional final ``*``."""
    if pattern in ("", "*"):
        return True
    stem = pattern[:-1] if pattern.endswith("*") else pattern
    return stem != "_" and 0 < len(stem.encode()) <= MAX_NAME_BYTES and _ALPHABET.fullmatch(stem) is not None


def list_prefix(pattern: str) -> str:
    """The literal prefix a list argument stands for: ``*``/empty → all, one trailing ``*`` dropped."""
    return pattern[:-1] if pattern.endswith("*") else pattern
