"""What the ``kes`` command prints: human layouts (as KES prints them) and JSON forms (pure).

Every function returns the complete text including its final newline, so the CLI only echoes it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

_TIME = re.compile(r"^(\d{4,})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})")
_LABEL = 11  # width KES pads its "Name"/"Algorithm"/… labels to


def b64(data: bytes) -> str:
    """Standard base64 with padding, the encoding KES uses for binary values."""
    return base64.b64encode(data).decode("ascii")


def compact_json(value: Any) -> str:
    """One line of JSON without spaces, like Go's encoder, plus a newline."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n"


def identity_new(key_path: str, cert_path: str, identity: str) -> str:
    """The report of ``kes identity new``: where the key and certificate went and their identity."""
    return f"\n  Private key:  {key_path}\n  Certificate:  {cert_path}\n  Identity:     {identity}\n"


def identity_of(identity: str) -> str:
    """The report of ``kes identity of``: the identity of a certificate or API key."""
    return f"\n  Identity:  {identity}\n"


def api_key(api_key_text: str, identity: str) -> str:
    """A (new or recovered) API key and its identity."""
    return f"\n  API key:   {api_key_text}\n  Identity:  {identity}\n"


def dek(plaintext: bytes, ciphertext: bytes) -> str:
    """A new data encryption key in the brace layout ``kes key dek`` prints."""
    return f"{{\n  plaintext : {b64(plaintext)}\n  ciphertext: {b64(ciphertext)}\n}}\n"


def dek_json(plaintext: bytes, ciphertext: bytes) -> str:
    """A new data encryption key as ``{"plaintext":…,"ciphertext":…}``."""
    return compact_json({"plaintext": b64(plaintext), "ciphertext": b64(ciphertext)})


def labelled(label: str, data: bytes) -> str:
    """One binary result as KES shows it on a terminal: a blank line, then ``label: <base64>``."""
    return f"\n{label}: {b64(data)}\n"


def labelled_json(label: str, data: bytes) -> str:
    """One binary result as ``{"label":"<base64>"}``."""
    return compact_json({label: b64(data)})


def clock(timestamp: Any) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD hh:mm:ss`` in the zone it was written in ('' if unreadable)."""
    match = _TIME.match(timestamp) if isinstance(timestamp, str) else None
    if match is None:
        return ""
    year, month, day, hour, minute, second = match.groups()
    return f"{year}-{month}-{day} {hour}:{minute}:{second}"


def key_info(info: Mapping[str, Any]) -> str:
    """``kes key info``: name, algorithm, creation date and creator, one labelled line each."""
    rows = [
        ("Name", str(info.get("name", ""))),
        ("Algorithm", str(info.get("algorithm", ""))),
        ("Date", clock(info.get("created_at"))),
        ("Owner", str(info.get("created_by", ""))),
    ]
    return "".join(f"{label:<{_LABEL}} {value}\n" for label, value in rows)


def key_list(names: Iterable[str]) -> str:
    """``kes key ls``: a ``Key`` heading and one name per line (nothing at all when empty)."""
    names = sorted(names)
    if not names:
        return ""
    return "Key\n" + "".join(f"{name}\n" for name in names)


def key_list_json(names: Iterable[str]) -> str:
    """``kes key ls --json``: a JSON array of the sorted names."""
    return compact_json(sorted(names))
