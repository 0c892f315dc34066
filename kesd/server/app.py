"""The running server: its immutable state, the key cache, the listening socket and the loop.

``State`` holds everything a reload replaces (config, authorizer, routes, TLS context); requests
in flight keep the state they started with. ``App`` holds what lives as long as the process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from kesd import errors
from kesd.audit import Auditor, configure_audit_log, install_error_stream
from kesd.crypto import format_time
from kesd.metrics import RequestMetrics
from kesd.metrics import render as render_metrics
from kesd.policy import Authorizer
from kesd.server.proxy import ProxyConfig
from kesd.server.routes import Router, build_router
from kesd.server.tls import server_context

if TYPE_CHECKING:
    from kesd.cache import KeyCache
    from kesd.config import Config
    from kesd.keystore.base import KeyStore
    from kesd.server.http import HTTPConnection

log = logging.getLogger("kesd.server")

KEYSTORE_PROBE_INTERVAL = 10.0


@dataclass(frozen=True)
class State:
    """What one configuration produces; replaced as a whole on reload."""

    config: Config
    authorizer: Authorizer
    router: Router
    tls: ssl.SSLContext
    proxy: ProxyConfig | None = None


def build_state(config: Config) -> State:
    """Validate and assemble a state from a parsed config (reads the TLS files; no listening)."""
    router = build_router(config.api)
    authorizer = Authorizer(
        config.admin,
        ((p.name, p.allow, p.deny, p.identities) for p in config.policies.values()),
    )
    tls = server_context(
        cert_file=config.tls.cert,
        key_file=config.tls.key,
        password=config.tls.password,
        auth=config.tls.auth,
        ca=config.tls.ca,
        optional_client_cert=router.any_skip_auth,
    )
    proxy = None
    if config.tls.proxy_identities:
        proxy = ProxyConfig(
            identities=frozenset(config.tls.proxy_identities),
            header=config.tls.proxy_cert_header.lower().encode("latin-1"),
        )
    return State(config=config, authorizer=authorizer, router=router, tls=tls, proxy=proxy)


class App:
    """Process-wide server objects shared by every connection."""

    def __init__(self, state: State, keystore: KeyStore, cache: KeyCache) -> None:
        self.state = state
        self.keystore = keystore
        self.cache = cache
        self.started_at = format_time(datetime.now(UTC))
        self.started_monotonic = time.monotonic()
        self.connections: set[HTTPConnection] = set()
        self.loop: Any = None  # set by serve() to the running loop
        self.requests_total = 0
        self.address = state.config.address  # the bound address once listening (port 0 resolved)
        self.metrics = RequestMetrics()
        self.auditor = Auditor(to_log=state.config.log.audit_console)
        configure_audit_log(state.config.log.audit_console)
        install_error_stream()
        self.process = psutil.Process()
        self.keystore_unreachable = False
        self.keystore_latency = 0.0

    def record(self, path: str, identity: str, ip: str, status: int, seconds: float) -> None:
        """Account for one answered request: metrics and its one audit event."""
        self.requests_total += 1
        self.metrics.observe(path, status, seconds)
        self.auditor.record(path, identity, ip, status, seconds)

    def memory_figures(self) -> dict[str, int]:
        """Heap/stack figures for /v1/status (resident set size stands in for Go's heap)."""
        info = self.process.memory_info()
        return {"mem_heap_used": int(info.rss), "mem_stack_used": 0}

    def metrics_text(self) -> bytes:
        """Prometheus text for /v1/metrics."""
        return render_metrics(self)

    async def probe_keystore(self) -> None:
        """Check the keystore (in a worker thread) and record reachability and latency.

        While it is unreachable the key cache keeps serving the keys it holds (``cache.expiry.offline``).
        """
        start = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.keystore.status)
        except errors.KesError:
            if not self.keystore_unreachable:
                log.error("keystore %s is not reachable", self.keystore.describe())
            self.keystore_unreachable = True
        else:
            if self.keystore_unreachable:
                log.warning("keystore %s is reachable again", self.keystore.describe())
            self.keystore_unreachable = False
            self.keystore_latency = time.monotonic() - start
        self.cache.offline = self.keystore_unreachable

    def sweep(self) -> None:
        """Enforce header and idle timeouts on every connection (runs once a second)."""
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_timeouts(now)


def bind(address: str) -> socket.socket:
    """A listening TCP socket for ``ip:port`` (empty host = all interfaces, IPv6 literals in [])."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise errors.StartupError(f"address: invalid port in '{address}'") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))  # noqa: S104
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise errors.StartupError(f"address: cannot listen on '{address}': {exc.strerror}") from None
    sock.setblocking(False)
    return sock


async def serve(app: App, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve HTTPS on ``sock`` until ``stop`` is set, then finish in-flight requests (bounded)."""
    from kesd.server.http import HTTPConnection

    loop = asyncio.get_running_loop()
    app.loop = loop

    def tick() -> None:
        app.sweep()
        handle[0] = loop.call_later(1.0, tick)

    handle: list[Any] = [loop.call_later(1.0, tick)]

    async def probe_forever() -> None:
        while True:
            await app.probe_keystore()
            await asyncio.sleep(KEYSTORE_PROBE_INTERVAL)

    prober = loop.create_task(probe_forever())
    server = await loop.create_server(
        lambda: HTTPConnection(app), sock=sock, ssl=app.state.tls, ssl_handshake_timeout=10.0
    )
    app.cache.start(loop)
    try:
        await stop.wait()
    finally:
        server.close()
        handle[0].cancel()
        prober.cancel()
        app.cache.stop()
        deadline = loop.time() + 10.0
        while loop.time() < deadline:
            open_conns = [c for c in list(app.connections) if not c.close_if_idle()]
            if not open_conns:
                break
            await asyncio.sleep(0.05)
        for conn in list(app.connections):
            conn.transport.abort()
