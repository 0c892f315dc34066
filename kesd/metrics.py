"""Prometheus metrics with KES's family names, types and labels (reference §1.3, vectors/metrics.json).

KES's dashboards and the Go SDK need the exact names, e.g. counters *without* the ``_total``
suffix, and the SDK rejects a response in which a known family has no sample or the wrong type.
``prometheus_client`` always renames counters to ``…_total``, so kesd writes the text exposition
format itself (tests parse it with ``prometheus_client``'s parser). Counting on the request path is a
dict increment and a bucket increment: no locks, no label objects.
"""

from __future__ import annotations

import bisect
import gc
import os
import threading
import time
from typing import TYPE_CHECKING

import psutil

from kesd import audit

if TYPE_CHECKING:
    from kesd.server.app import App

BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 3.0, 5.0, 10.0)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Only the key, policy and identity APIs are counted and timed, as in KES.
_COUNTED = ("/v1/key/", "/v1/policy/", "/v1/identity/")


class RequestMetrics:
    """Request counters by status and the response-time histogram."""

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0
        self.count = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request (ignored for paths KES does not count)."""
        if not path.startswith(_COUNTED):
            return
        self.codes[status] = self.codes.get(status, 0) + 1
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds
        self.count += 1


def _family(out: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
    """Append one family; families without samples are left out (as the Go client does)."""
    if not samples:
        return
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(app: App) -> bytes:
    """The Prometheus text exposition of the server's metrics."""
    m = app.metrics
    out: list[str] = []
    by_class: dict[int, list[tuple[str, float]]] = {2: [], 4: [], 5: []}
    for code in sorted(m.codes):
        if code // 100 in by_class:
            by_class[code // 100].append((f'{{code="{code}"}}', m.codes[code]))
    _family(
        out,
        "kes_http_request_success",
        "counter",
        "Number of requests that have been served successfully.",
        by_class[2],
    )
    _family(
        out,
        "kes_http_request_error",
        "counter",
        "Number of request that failed due to some error. (HTTP 4xx status code)",
        by_class[4],
    )
    _family(
        out,
        "kes_http_request_failure",
        "counter",
        "Number of request that failed due to some internal failure. (HTTP 5xx status code)",
        by_class[5],
    )
    active = sum(c.requests_in_flight for c in app.connections)
    _family(
        out,
        "kes_http_request_active",
        "gauge",
        "Number of active requests that are not finished, yet.",
        [("", active)],
    )
    out.append("# HELP kes_http_response_time Histogram of request response times spawning from 10ms to 10s.")
    out.append("# TYPE kes_http_response_time histogram")
    cumulative = 0
    for bound, n in zip(BUCKETS, m.buckets, strict=False):
        cumulative += n
        out.append(f'kes_http_response_time_bucket{{le="{_number(bound)}"}} {cumulative}')
    out.append(f'kes_http_response_time_bucket{{le="+Inf"}} {m.count}')
    out.append(f"kes_http_response_time_sum {_number(m.seconds)}")
    out.append(f"kes_http_response_time_count {m.count}")
    _family(
        out,
        "kes_log_error_events",
        "counter",
        "Number of error log events written to the error log targets.",
        [("", audit.ERRORS.events)],
    )
    _family(
        out,
        "kes_log_audit_events",
        "counter",
        "Number of audit log events written to the audit log targets.",
        [("", audit.AUDIT.events)],
    )
    process = app.process
    memory = process.memory_info()
    uptime = int((time.monotonic() - app.started_monotonic) * 100) / 100
    system = [
        ("kes_system_up_time", "The time the server has been up and running in seconds.", uptime),
        (
            "kes_system_num_cpu",
            "The number of logical CPUs available on the system. It may be larger than the "
            "number of usable CPUs.",
            os.cpu_count() or 1,
        ),
        (
            "kes_system_num_cpu_used",
            "The number of logical CPUs usable by the server. It may be smaller than the "
            "number of available CPUs.",
            len(os.sched_getaffinity(0)),
        ),
        (
            "kes_system_num_threads",
            "The number of concurrent co-routines/threads that currently exists.",
            threading.active_count(),
        ),
        (
            "kes_system_mem_heap_used",
            "The number of bytes that are currently allocated on the heap memory.",
            memory.rss,
        ),
        (
            "kes_system_mem_heap_objects",
            "The number of objects that are currently allocated on the heap memory.",
            len(gc.get_objects()),
        ),
        (
            "kes_system_mem_stack_used",
            "The bytes of stack memory obtained from the OS.",
            _stack_bytes(process),
        ),
    ]
    for name, help_text, value in system:
        _family(out, name, "gauge", help_text, [("", value)])
    cache = app.cache
    extra = [
        ("kesd_cache_keys", "gauge", "Keys held in the key cache.", len(cache)),
        ("kesd_cache_hits", "counter", "Key lookups answered from the cache.", cache.hits),
        ("kesd_cache_misses", "counter", "Key lookups that had to read the keystore.", cache.misses),
        (
            "kesd_keystore_reachable",
            "gauge",
            "1 if the last keystore status check succeeded.",
            0 if app.keystore_unreachable else 1,
        ),
        (
            "kesd_keystore_latency_seconds",
            "gauge",
            "Duration of the last keystore status check.",
            app.keystore_latency,
        ),
        (
            "kesd_log_audit_dropped",
            "counter",
            "Audit events a slow /v1/log/audit subscriber did not receive.",
            audit.AUDIT.dropped,
        ),
        (
            "kesd_log_error_dropped",
            "counter",
            "Error events a slow /v1/log/error subscriber did not receive.",
            audit.ERRORS.dropped,
        ),
    ]
    for name, kind, help_text, value in extra:
        _family(out, name, kind, help_text, [("", value)])
    return ("\n".join(out) + "\n").encode()


def _stack_bytes(process: psutil.Process) -> int:
    """Stack memory of the process: the ``[stack]`` mapping's resident size (0 if unknown)."""
    try:
        with open(f"/proc/{process.pid}/status") as f:
            for line in f:
                if line.startswith("VmStk:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
