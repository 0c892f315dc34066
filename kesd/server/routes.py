"""The route table: method, path, body limit, timeout, authentication and handler of every API.

Defaults are the newest KES's (reference §1.2); ``api:`` config entries override the timeout and, for
the five public routes only, skip authorization. Routes ending in ``/`` take the rest of the path as
their argument.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kesd import errors
from kesd.server import handlers

if TYPE_CHECKING:
    from kesd.server.request import Request, Response, Stream

Handler = Callable[["Request"], "Response | Stream | Awaitable[Response]"]

MB = 1_000_000

# Authentication modes: "none" never identifies; "cert" needs a certificate but no policy;
# "verify" needs a certificate and a policy (or the admin) that allows the path.
NONE, CERT, VERIFY = "none", "cert", "verify"


@dataclass(frozen=True, slots=True)
class Route:
    """One API endpoint."""

    method: str
    path: str
    max_body: int
    timeout: float
    auth: str
    handler: Handler
    body_error: type[errors.KesError] = errors.InvalidRequestBody
    skip_auth: bool = False

    def accepts(self, method: str) -> bool:
        """True if ``method`` may call this route (POST is accepted where PUT is declared)."""
        return method == self.method or (self.method == "PUT" and method == "POST")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/version", 0, 10, NONE, handlers.version),
    Route("GET", "/v1/ready", 0, 15, VERIFY, handlers.ready),
    Route("GET", "/v1/status", 0, 15, VERIFY, handlers.status),
    Route("GET", "/v1/metrics", 0, 15, VERIFY, handlers.metrics),
    Route("GET", "/v1/api", 0, 10, VERIFY, handlers.api),
    Route("PUT", "/v1/key/create/", 0, 15, VERIFY, handlers.create_key),
    Route("PUT", "/v1/key/import/", MB, 15, VERIFY, handlers.import_key, errors.InvalidImportBody),
    Route("GET", "/v1/key/describe/", 0, 15, VERIFY, handlers.describe_key),
    Route("GET", "/v1/key/list/", 0, 15, VERIFY, handlers.list_keys),
    Route("DELETE", "/v1/key/delete/", 0, 15, VERIFY, handlers.delete_key),
    Route("PUT", "/v1/key/generate/", MB, 15, VERIFY, handlers.generate),
    Route("PUT", "/v1/key/encrypt/", MB, 15, VERIFY, handlers.encrypt),
    Route("PUT", "/v1/key/decrypt/", MB, 15, VERIFY, handlers.decrypt),
    Route("PUT", "/v1/key/hmac/", MB, 15, VERIFY, handlers.hmac),
    Route("GET", "/v1/policy/describe/", 0, 15, VERIFY, handlers.describe_policy),
    Route("GET", "/v1/policy/read/", 0, 15, VERIFY, handlers.read_policy),
    Route("GET", "/v1/policy/list/", 0, 15, VERIFY, handlers.list_policies),
    Route("GET", "/v1/identity/describe/", 0, 15, VERIFY, handlers.describe_identity),
    Route("GET", "/v1/identity/self/describe", 0, 15, CERT, handlers.describe_self),
    Route("GET", "/v1/identity/list/", 0, 15, VERIFY, handlers.list_identities),
    Route("GET", "/v1/log/error", 0, 0, VERIFY, handlers.error_log),
    Route("GET", "/v1/log/audit", 0, 0, VERIFY, handlers.audit_log),
)


class Router:
    """Finds the route and argument for a clean, decoded path."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self._exact = {r.path: r for r in routes if not r.path.endswith("/")}
        self._subtree = {r.path: r for r in routes if r.path.endswith("/")}
        self._roots = {r.path[:-1] for r in self._subtree.values()}

    def match(self, path: str) -> tuple[Route, str] | None:
        """``(route, argument)`` for ``path``, or None if no route serves it."""
        route = self._exact.get(path)
        if route is not None:
            return route, ""
        # Subtree routes are all /v1/<group>/<op>/: the prefix ends at the path's fourth '/'.
        cut = path.find("/", path.find("/", 4) + 1)
        if cut > 0:
            route = self._subtree.get(path[: cut + 1])
            if route is not None:
                return route, path[cut + 1 :]
        return None

    def is_subtree_root(self, path: str) -> bool:
        """True for ``/v1/key/list`` and the like: KES redirects these to the slash form."""
        return path in self._roots

    @property
    def any_skip_auth(self) -> bool:
        """True if some route serves clients without a certificate."""
        return any(r.skip_auth for r in self.routes)

    def describe(self) -> list[dict[str, Any]]:
        """The ``/v1/api`` listing."""
        return [
            {"method": r.method, "path": r.path, "max_body": r.max_body, "timeout": int(r.timeout)}
            for r in self.routes
        ]


def build_router(api: Mapping[str, Any]) -> Router:
    """The route table with the config's ``api:`` overrides (timeout > 0, skip_auth) applied.

    The config parser has already refused ``skip_auth`` outside the public routes.
    """
    routes = []
    for default in ROUTES:
        route, override = default, api.get(default.path)
        if override is not None:
            if override.timeout > 0:
                route = replace(route, timeout=override.timeout)
            if override.skip_auth:
                route = replace(route, skip_auth=True)
        routes.append(route)
    return Router(tuple(routes))
