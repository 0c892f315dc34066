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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from kesd import errors
from kesd.crypto import format_time
from kesd.policy import Authorizer
from kesd.server.routes import Router, build_router
from kesd.server.tls import server_context

if TYPE_CHECKING:
    from kesd.cache import KeyCache
    from kesd.config import Config
    from kesd.keystore.base import KeyStore
    from kesd.server.http import HTTPConnection
    from kesd.server.request import Request

log = logging.getLogger("kesd.server")


@dataclass(frozen=True)
class State:
    """What one configuration produces; replaced as a whole on reload."""

    config: Config
    authorizer: Authorizer
    router: Router
    tls: ssl.SSLContext


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
    return State(config=config, authorizer=authorizer, router=router, tls=tls)


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
        self.on_request: Callable[[Request | None, str, str, str, int, float], None] | None = None
        self._process = psutil.Process()

    def record(
        self, req: Request | None, path: str, identity: str, ip: str, status: int, seconds: float
    ) -> None:
        """Account for one answered request (audit and metrics hook)."""
        self.requests_total += 1
        if self.on_request is not None:
            self.on_request(req, path, identity, ip, status, seconds)

    def memory_figures(self) -> dict[str, int]:
        """Heap/stack figures for /v1/status (resident set size stands in for Go's heap)."""
        info = self._process.memory_info()
        return {"mem_heap_used": int(info.rss), "mem_stack_used": 0}

    def metrics_text(self) -> bytes:
        """Prometheus text for /v1/metrics (the full KES families come with the metrics module)."""
        uptime = time.monotonic() - self.started_monotonic
        lines = [
            "# HELP kes_system_up_time The time the server has been up and running in seconds.",
            "# TYPE kes_system_up_time gauge",
            f"kes_system_up_time {int(uptime * 100) / 100}",
        ]
        return ("\n".join(lines) + "\n").encode()

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
    server = await loop.create_server(
        lambda: HTTPConnection(app), sock=sock, ssl=app.state.tls, ssl_handshake_timeout=10.0
    )
    app.cache.start(loop)
    try:
        await stop.wait()
    finally:
        server.close()
        handle[0].cancel()
        app.cache.stop()
        deadline = loop.time() + 10.0
        while loop.time() < deadline:
            open_conns = [c for c in list(app.connections) if not c.close_if_idle()]
            if not open_conns:
                break
            await asyncio.sleep(0.05)
        for conn in list(app.connections):
            conn.transport.abort()
