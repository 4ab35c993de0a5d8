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

    Counting happens on the model's device per forward pass (one `bincount` per layer); the counts
    reach the catalogue in one flush per generation, so the per-step cost stays off Python loops.
    The routed experts of this replica form one expert shard, `shard`, whose calls are timed.
    """

    def __init__(self, model: Any, shard: str = "0") -> None:
        import torch

        self._torch = torch
        self.shard = shard
        self._counts: dict[str, Any] = {}
        for name, module in model.named_modules():
            router, experts = getattr(module, "gate", None), getattr(module, "experts", None)
            if router is None or experts is None or not hasattr(router, "top_k"):
                continue
            layer = name.split(".")[-2] if name.endswith(".mlp") else name
            count = int(router.weight.shape[0])  # one router row per routed expert
            self._counts[layer] = torch.zeros(count, dtype=torch.long)
            router.register_forward_hook(self._router_hook(layer, count))
            experts.register_forward_pre_hook(self._start_call)
            experts.register_forward_hook(self._end_call)
        self._call_started = 0.0
        catalogue.EXPERT_SHARD_UP.labels(shard).set(1 if self._counts else 0)
        catalogue.EXPERT_SHARD_ERRORS.labels(shard)

    def _router_hook(self, layer: str, count: int) -> Any:
        def hook(_: Any, __: Any, output: Any) -> None:
            indices = output[-1]
            self._counts[layer] += self._torch.bincount(indices.flatten().cpu(), minlength=count)

        return hook

    def _start_call(self, *_: Any) -> None:
        self._call_started = time.perf_counter()

    def _end_call(self, *_: Any) -> None:
        catalogue.EXPERT_SHARD_CALL_LATENCY.labels(self.shard).observe(time.perf_counter() - self._call_started)

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
