"""Where the gateway records the catalogue's HTTP metrics: its outermost middleware.

No `from __future__ import annotations`: the middleware is pickled with the FastAPI app by Ray.
"""

import time
from typing import Any

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring import catalogue


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every API route, also those Serve's class-based view nests under included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(nested := getattr(route, "original_router", None) or route, "routes"):
            found += api_routes(nested.routes)
    return found


class GatewayMetricsMiddleware:
    """Count every HTTP request by route template, status and tenant, and time it to the end of the body.

    The outermost middleware, so refusals by access control (401, 429, 503) are counted too, under
    their route: an OpenBao outage must burn the availability budget. The route is the template
    (`/v1/models/{model_id:path}`), never a raw path, to bound cardinality.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._fixed_paths: frozenset[str] | None = None

    def _route(self, scope: Scope) -> str:
        """The matched route's template; for a request refused before routing, its path if that is a route."""
        if (route := scope.get("route")) is not None:
            return route.path
        if self._fixed_paths is None:
            routes = api_routes(scope["app"].routes)
            self._fixed_paths = frozenset(route.path for route in routes if "{" not in route.path)
        return scope["path"] if scope["path"] in self._fixed_paths else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = self._route(scope)
            tenant = scope.get("state", {}).get("tenant")
            catalogue.GATEWAY_REQUESTS.labels(route, str(status), tenant.name if tenant else "none").inc()
            catalogue.GATEWAY_LATENCY.labels(route).observe(time.perf_counter() - started)
