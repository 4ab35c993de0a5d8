"""Where serving records the catalogue's metrics: the gateway middleware and the MoE router hooks.

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


class ExpertLoad:
    """Counts tokens per routed expert of every MoE layer from the routers' own top-k choice.

    Counting happens on the model's device per step (one `bincount` per layer); the counts reach the
    catalogue when a sequence leaves the batch, so the per-step cost stays off Python loops.
    """

    def __init__(self, layers: list[str], experts: int) -> None:
        import torch

        self._torch = torch
        self._experts = experts
        self._counts = {layer: torch.zeros(experts, dtype=torch.long) for layer in layers}

    def record(self, layer: int, chosen: Any) -> None:
        """The router of MoE layer `layer` chose `chosen` ([tokens, top-k] expert ids)."""
        self._counts[str(layer)] += self._torch.bincount(chosen.flatten().cpu(), minlength=self._experts)

    def flush(self) -> None:
        """Move the counts gathered since the last flush into the catalogue, with each layer's imbalance."""
        for layer, counts in self._counts.items():
            total = int(counts.sum())
            if total == 0:
                continue
            for expert, tokens in enumerate(counts.tolist()):
                if tokens:
                    catalogue.EXPERT_TOKENS.labels(layer, str(expert)).inc(tokens)
            catalogue.EXPERT_IMBALANCE.labels(layer).set(float(counts.max()) / (total / len(counts)))
            counts.zero_()
