"""What kesctl prints for each operation's result: labelled rows and tables (pure).

Every function takes the JSON result the admin socket answered and returns the complete text,
final newline included; ``--json`` output does not go through here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

_LABEL = 16


def rows(pairs: Sequence[tuple[str, str]]) -> str:
    """``Label           value`` lines."""
    return "".join(f"{label:<{_LABEL}}{value}".rstrip() + "\n" for label, value in pairs)


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the header line is printed even for an empty body."""
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [header, *body]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in lines
    )


def size(n: Any) -> str:
    """Bytes in binary units: ``48.2 MiB``."""
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def duration(seconds: Any) -> str:
    """``3d 4h 5m 6s`` (leading zero units left out)."""
    if not isinstance(seconds, int | float):
        return "-"
    total = int(seconds)
    parts = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= length or parts:
            parts.append(f"{total // length}{unit}")
            total %= length
    parts.append(f"{total}s")
    return " ".join(parts)


def status(result: Mapping[str, Any]) -> str:
    """``kesctl status``."""
    store = result.get("keystore") or {}
    if store.get("reachable"):
        store_text = f"{store.get('kind', '?')} (reachable, {store.get('latency_ms', 0):.1f} ms)"
    else:
        store_text = f"{store.get('kind', '?')} (NOT reachable: {store.get('error', 'unknown error')})"
    cache = result.get("cache") or {}
    memory = result.get("memory") or {}
    addresses = result.get("addresses") or {}
    keys = result.get("keys")
    return rows(
        [
            ("Version", f"kesd {result.get('version', '?')} (pid {result.get('pid', '?')})"),
            ("Uptime", f"{duration(result.get('uptime'))} (since {result.get('started_at', '?')})"),
            ("Config", str(result.get("config") or "-")),
            ("Keystore", store_text),
            ("Keys", "-" if keys is None else str(keys)),
            (
                "Connections",
                f"{result.get('connections', 0)} API, {result.get('admin_connections', 0)} admin",
            ),
            (
                "Requests",
                f"{result.get('requests', 0)} total, "
                f"{result.get('requests_per_second', 0.0):.1f}/s (last 10s)",
            ),
            (
                "Cache",
                f"{cache.get('keys', 0)} keys ({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses)",
            ),
            ("Memory", f"{size(memory.get('rss'))} resident, {size(memory.get('vms'))} virtual"),
            ("Memory lock", "locked (mlock)" if result.get("mlock") else "not locked"),
            ("API address", str(addresses.get("api", "-"))),
            ("Admin socket", str(addresses.get("admin", "-"))),
            ("Log level", str(result.get("log_level", "-"))),
        ]
    )


def key_list(result: Mapping[str, Any]) -> str:
    """``kesctl key ls``: a ``Key`` heading and one name per line."""
    return table(["Key"], [[str(n)] for n in result.get("keys", [])])


def key_info(result: Mapping[str, Any]) -> str:
    """``kesctl key info``."""
    return rows(
        [
            ("Name", str(result.get("name", ""))),
            ("Algorithm", str(result.get("algorithm", ""))),
            ("Created", str(result.get("created_at", ""))),
            ("Created by", str(result.get("created_by", "") or "-")),
        ]
    )


def policy_list(result: Mapping[str, Any]) -> str:
    """``kesctl policy ls``: name and the number of allow/deny rules and identities."""
    body = [
        [str(p.get("name", "")), str(p.get("allow", 0)), str(p.get("deny", 0)), str(p.get("identities", 0))]
        for p in result.get("policies", [])
    ]
    return table(["Policy", "Allow", "Deny", "Identities"], body)


def _listing(label: str, items: Sequence[Any]) -> list[tuple[str, str]]:
    if not items:
        return [(label, "-")]
    return [(label if i == 0 else "", str(item)) for i, item in enumerate(items)]


def policy_show(result: Mapping[str, Any]) -> str:
    """``kesctl policy show``: the rules, one per line, and the identities."""
    return rows(
        [
            ("Policy", str(result.get("name", ""))),
            *_listing("Allow", result.get("allow", [])),
            *_listing("Deny", result.get("deny", [])),
            *_listing("Identities", result.get("identities", [])),
        ]
    )


def identity_list(result: Mapping[str, Any]) -> str:
    """``kesctl identity ls``: identity and its role (admin or a policy)."""
    body = [
        [str(i.get("identity", "")), "admin" if i.get("admin") else f"policy {i.get('policy', '')}"]
        for i in result.get("identities", [])
    ]
    return table(["Identity", "Role"], body)


def identity_show(result: Mapping[str, Any]) -> str:
    """``kesctl identity show``."""
    if result.get("admin"):
        return rows([("Identity", str(result.get("identity", ""))), ("Role", "admin (every API)")])
    return rows(
        [
            ("Identity", str(result.get("identity", ""))),
            ("Role", f"policy {result.get('policy', '')}"),
            *_listing("Allow", result.get("allow", [])),
            *_listing("Deny", result.get("deny", [])),
        ]
    )


def audit_line(line: str) -> str:
    """One audit event as ``time  status  duration  identity  path`` (the raw line if unreadable)."""
    try:
        event = json.loads(line)
        request, response = event["request"], event["response"]
        micros = int(response.get("time", 0)) // 1000
        took = f"{micros}µs" if micros < 10_000 else f"{micros // 1000}ms"
        identity = str(request.get("identity", "") or "-")
        short = identity if len(identity) <= 16 or identity.startswith("unix:") else identity[:12] + "…"
        code, path = response.get("code", "?"), request.get("path", "")
        return f"{event.get('time', '')}  {code}  {took:>8}  {short:<16}  {path}\n"
    except (ValueError, KeyError, TypeError, AttributeError):
        return line.rstrip("\n") + "\n"


def error_line(line: str) -> str:
    """One error-log event: its message (the raw line if unreadable)."""
    try:
        return str(json.loads(line)["message"]).rstrip("\n") + "\n"
    except (ValueError, KeyError, TypeError):
        return line.rstrip("\n") + "\n"
