"""What the ``kes`` command prints: human layouts (as KES prints them) and JSON forms (pure).

Every function returns the complete text including its final newline, so the CLI only echoes it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kesd.client import AuditEvent, Metrics

_TIME = re.compile(r"^(\d{4,})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})")
_LABEL = 11  # width KES pads its "Name"/"Algorithm"/… labels to
_STATUS_LABEL = 8  # width of the labels of `kes status`
_SECOND = 1_000_000_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_SIZE_UNITS = ("KB", "MB", "GB", "TB", "PB")
AUDIT_HEADER = f"{'Time':<12}{'Status':<10}{'Identity':<24}{'IP':<19}{'API':<34}Latency\n"
_AUDIT_IDENTITY = 20
_AUDIT_IP = 15
_AUDIT_PATH = 30
METRIC_LINES = 8  # lines of one `kes metric` screen (a terminal redraws over them)


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
    return name_list("Key", names)


def key_list_json(names: Iterable[str]) -> str:
    """``kes key ls --json``: a JSON array of the sorted names."""
    return name_list_json(names)


def name_list(heading: str, names: Iterable[str]) -> str:
    """A listing as KES prints it: a heading (``Key``/``Policy``/``Identity``), then sorted names.

    An empty listing prints nothing at all, not even the heading.
    """
    ordered = sorted(names)
    if not ordered:
        return ""
    return heading + "\n" + "".join(f"{name}\n" for name in ordered)


def name_list_json(names: Iterable[str]) -> str:
    """A listing as a JSON array of the sorted names."""
    return compact_json(sorted(names))


# --- durations and sizes -------------------------------------------------------------------------


def go_duration(ns: int) -> str:
    """A duration written the way Go's ``time.Duration.String`` writes it (``1.5s``, ``2m0s``, ``12µs``)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_decimal(ns, 1_000)}µs"
    if ns < _SECOND:
        return f"{sign}{_decimal(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, _HOUR)
    minutes, rest = divmod(rest, _MINUTE)
    text = f"{_decimal(rest, _SECOND)}s"
    if hours:
        text = f"{hours}h{minutes}m{text}"
    elif minutes:
        text = f"{minutes}m{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` with the exact decimal fraction, trailing zeros dropped."""
    whole, part = divmod(value, unit)
    digits = len(str(unit)) - 1
    fraction = str(part).rjust(digits, "0").rstrip("0")
    return f"{whole}.{fraction}" if fraction else str(whole)


def round_duration(ns: int, multiple: int) -> int:
    """Round to a multiple, halves away from zero (Go's ``Duration.Round``)."""
    if multiple <= 0:
        return ns
    sign = -1 if ns < 0 else 1
    return sign * ((abs(ns) + multiple // 2) // multiple * multiple)


def short_duration(ns: int) -> str:
    """A response time with three or four significant digits, as ``kes log`` shows latencies."""
    if ns >= _SECOND:
        ns = round_duration(ns, 100_000_000)
    elif ns >= 10_000_000:
        ns = round_duration(ns, 1_000_000)
    elif ns >= 1_000_000:
        ns = round_duration(ns, 100_000)
    elif ns >= 10_000:
        ns = round_duration(ns, 1_000)
    return go_duration(ns)


def size(n: int) -> str:
    """A byte count in decimal units with one decimal (``512 B``, ``12.3 MB``)."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in _SIZE_UNITS:
        value /= 1000
        if value < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def uptime(seconds: float) -> str:
    """An uptime in words as ``kes status`` shows it: seconds, minutes, hours, or days and hours."""
    if seconds > 86400:
        whole = int(seconds)
        return f"{whole // 86400} days {whole % 86400 // 3600} hours"
    if seconds > 3600:
        return f"{seconds / 3600:.0f} hours"
    if seconds > 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


# --- kes status ----------------------------------------------------------------------------------


def status(endpoint: str, info: Mapping[str, Any], latency_s: float, *, short: bool = False) -> str:
    """``kes status``: a dot and the endpoint, then version, uptime, latency, OS, CPUs, memory, keystore.

    ``short`` prints the first line only. ``latency_s`` is the round trip the client measured.
    """
    lines = [f"● {endpoint.removeprefix('https://')}"]
    if short:
        return lines[0] + "\n"

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<{_STATUS_LABEL}} {value}".rstrip())

    row("Version", str(info.get("version", "")))
    row("Uptime", uptime(_number(info.get("uptime"))))
    row("Latency", go_duration(round_duration(int(latency_s * _SECOND), 1_000_000)))
    row("OS", str(info.get("os", "")))
    row("CPUs", f"{_int(info.get('num_cpu_used'))} {info.get('arch', '')}")
    row("Memory", "")
    lines.append(f"  · {'Heap':<6} {size(_int(info.get('mem_heap_used')))}")
    lines.append(f"  · {'Stack':<6} {size(_int(info.get('mem_stack_used')))}")
    if info.get("keystore_unreachable") or info.get("keystore_unavailable"):
        row("Keystore", "unreachable")
    elif "keystore_latency" in info:
        row("Keystore", f"reachable, latency {go_duration(_int(info.get('keystore_latency')) * 1_000_000)}")
    return "\n".join(lines) + "\n"


def api_table(apis: Sequence[Mapping[str, Any]], *, leading_blank: bool = True) -> str:
    """``kes status --api``: method, path and timeout of every route (``Inf`` = no timeout)."""
    lines = [""] if leading_blank else []
    lines.append(f"  {'Method':<7} {'API':<28} Timeout")
    for api in apis:
        seconds = _int(api.get("timeout"))
        timeout = go_duration(seconds * _SECOND) if seconds > 0 else "Inf"
        lines.append(f"  {api.get('method', '')!s:<7} {api.get('path', '')!s:<28} {timeout}")
    return "\n".join(lines) + "\n"


def _number(value: Any) -> float:
    """A numeric JSON field as float (anything else: 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _int(value: Any) -> int:
    """A numeric JSON field as int (anything else: 0)."""
    return int(_number(value))


# --- kes policy / kes identity -------------------------------------------------------------------


def policy_info(name: str, info: Mapping[str, Any]) -> str:
    """``kes policy info``: name, creation date and creator (the last two only when known)."""
    lines = [f"{'Name':<{_LABEL}} {name}"]
    if clock(info.get("created_at")) and not _zero_time(info.get("created_at")):
        lines.append(f"{'Date':<{_LABEL}} {clock(info.get('created_at'))}")
    if info.get("created_by"):
        lines.append(f"{'Created by':<{_LABEL}} {info['created_by']}")
    return "\n".join(lines) + "\n"


def policy_show(policy: Mapping[str, Any]) -> str:
    """``kes policy show``: the allow and deny patterns as bullet lists, then creation details."""
    blocks = []
    for title, patterns in (("Allow:", policy.get("allow") or []), ("Deny:", policy.get("deny") or [])):
        if patterns:
            blocks.append(title + "\n" + "".join(f"  · {p}\n" for p in patterns))
    text = "\n".join(blocks)
    if text:
        text += "\n"
    when = policy.get("created_at")
    if clock(when) and not _zero_time(when):
        text += f"Created at: {clock(when)}\n"
    text += f"Created by: {policy.get('created_by') or '<unknown>'}\n"
    return text


def policy_show_json(policy: Mapping[str, Any]) -> str:
    """``kes policy show --json``: ``{"allow":{pattern:{}},"deny":{…},"created_at","created_by"}``."""
    doc: dict[str, Any] = {}
    for side in ("allow", "deny"):
        if policy.get(side):
            doc[side] = {p: {} for p in policy[side]}
    for key in ("created_at", "created_by"):
        if policy.get(key):
            doc[key] = policy[key]
    return compact_json(doc)


def identity_info(identity: str, info: Mapping[str, Any]) -> str:
    """``kes identity info IDENTITY``: identity, policy, creation date, role and creator."""
    lines = [f"{'Identity':<{_LABEL}} {identity}"]
    if info.get("policy"):
        lines.append(f"{'Policy':<{_LABEL}} {info['policy']}")
    lines.append(f"{'Created At':<{_LABEL}} {clock(info.get('created_at'))}".rstrip())
    lines.append(f"{'Role':<{_LABEL}} {'Admin' if info.get('admin') else 'User'}")
    if info.get("created_by"):
        lines.append(f"{'Created By':<{_LABEL}} {info['created_by']}")
    return "\n".join(lines) + "\n"


def self_info(info: Mapping[str, Any]) -> str:
    """``kes identity info`` (no argument): the caller's identity and role, then its policy's rules.

    ``info`` is the flat self-description of :func:`kesd.client.normalize_self`.
    """
    created = clock(info.get("created_at"))
    lines = [
        f"{'Identity':<{_LABEL}} {info.get('identity', '')}",
        f"{'Created At':<{_LABEL}} {created}".rstrip(),
        f"{'Role':<{_LABEL}} {'Admin' if info.get('admin') else 'User'}",
    ]
    if info.get("created_by"):
        lines.append(f"{'Created By':<{_LABEL}} {info['created_by']}")
    if info.get("policy"):
        lines += ["", f"{'Policy':<{_LABEL}} {info['policy']}"]
        if created:
            lines.append(f"{'Created At':<{_LABEL}} {created}")
        for title, side in (("Allow", "allow"), ("Deny", "deny")):
            if info.get(side):
                lines.append(title)
                lines += [f"{'':<{_LABEL}} · {pattern}" for pattern in info[side]]
    return "\n".join(lines) + "\n"


def self_info_json(info: Mapping[str, Any]) -> str:
    """``kes identity info --json`` (no argument): the flat self-description, rules as ``{pattern:{}}``."""
    doc: dict[str, Any] = {"identity": info.get("identity", "")}
    if info.get("admin"):
        doc["admin"] = True
    if info.get("policy"):
        doc["policy"] = info["policy"]
    for side in ("allow", "deny"):
        if info.get(side):
            doc[side] = {p: {} for p in info[side]}
    for key in ("created_at", "created_by"):
        if info.get(key):
            doc[key] = info[key]
    return compact_json(doc)


def _zero_time(timestamp: Any) -> bool:
    """True for Go's zero time, which KES prints as "unknown"."""
    return isinstance(timestamp, str) and timestamp.startswith("0001-01-01T00:00:00")


# --- kes log -------------------------------------------------------------------------------------


def audit_line(event: AuditEvent) -> str:
    """One audit event under :data:`AUDIT_HEADER`: time, status, identity (first 20 characters), IP,
    path and response time.
    """
    match = _TIME.match(event.time)
    when = ":".join(match.groups()[3:]) if match else "--:--:--"
    identity = event.identity[:_AUDIT_IDENTITY]
    ip = (event.ip or "0.0.0.0")[:_AUDIT_IP]  # noqa: S104 - KES shows a missing IP as 0.0.0.0
    return (
        f"{when}    {event.status:<5}     {identity:<{_AUDIT_IDENTITY}}    {ip:<{_AUDIT_IP}}    "
        f"{event.path:<{_AUDIT_PATH}}    {short_duration(event.duration_ns)}\n"
    )


def error_line(message: str) -> str:
    """One error-log event: its message on a line of its own."""
    return message.rstrip("\n") + "\n"


# --- kes metric ----------------------------------------------------------------------------------


def metric_view(metrics: Metrics, rate: float) -> str:
    """One screen of ``kes metric``: request counts and shares, request rate, mean latency, system figures.

    Always :data:`METRIC_LINES` lines, so that a terminal can redraw over the previous screen.
    """
    total = metrics.requests

    def share(count: int) -> str:
        return f"{100 * count / total:.2f}%" if total else "0.00%"

    average = metrics.average_latency()
    latency = short_duration(round(average * _SECOND)) if average is not None else "-"
    return (
        "\n"
        "Request    OK [2xx]       Err [4xx]       Err [5xx]      Req/s        Latency\n"
        f"{metrics.request_ok:>19}{metrics.request_err:>16}{metrics.request_fail:>16}"
        f"{rate:>11.2f}{latency:>15}\n"
        f"{share(metrics.request_ok):>19}{share(metrics.request_err):>16}{share(metrics.request_fail):>16}\n"
        "\n"
        "System       UpTime            Heap           Stack       CPUs        Threads\n"
        f"{go_duration(round_duration(int(metrics.uptime * _SECOND), _SECOND)):>19}"
        f"{size(metrics.heap_alloc):>16}{size(metrics.stack_alloc):>16}"
        f"{metrics.usable_cpus:>11}{metrics.threads:>15}\n"
        "\n"
    )


def metric_json(metrics: Metrics) -> str:
    """One ``kes metric --json`` line: the SDK's metric snapshot, keyed by family name.

    The latency histogram maps each bucket's upper bound in nanoseconds to its cumulative count;
    the uptime is in nanoseconds (Go durations).
    """
    doc = {
        "kes_http_request_success": metrics.request_ok,
        "kes_http_request_error": metrics.request_err,
        "kes_http_request_failure": metrics.request_fail,
        "kes_http_request_active": metrics.request_active,
        "kes_log_audit_events": metrics.audit_events,
        "kes_log_error_events": metrics.error_events,
        "kes_http_response_time": {
            str(round(bound * _SECOND)): count for bound, count in sorted(metrics.latency.items())
        },
        "kes_system_up_time": round(metrics.uptime * _SECOND),
        "kes_system_num_cpu": metrics.cpus,
        "kes_system_num_cpu_used": metrics.usable_cpus,
        "kes_system_num_threads": metrics.threads,
        "kes_system_mem_heap_used": metrics.heap_alloc,
        "kes_system_mem_heap_objects": metrics.heap_objects,
        "kes_system_mem_stack_used": metrics.stack_alloc,
    }
    return compact_json(doc)
