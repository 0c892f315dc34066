"""Quoting of user-written values for one-line error and warning messages (pure).

Config errors echo the offending value; a value can hold newlines or be very long, so every message
quotes it the same way: control characters escaped, the text cut after 100 characters.
"""

from __future__ import annotations


def quote(value: str) -> str:
    """``value`` quoted for a one-line message: control characters escaped, long values cut."""
    text = value if len(value) <= 100 else value[:100] + "…"
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"
