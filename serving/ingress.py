"""The OpenAI-compatible HTTP ingress: a FastAPI app served by a Ray Serve deployment.

It validates requests, resolves the model, calls `LLMServer` over a streaming handle and shapes
OpenAI responses and server-sent-event chunks. It never imports torch.

No `from __future__ import annotations` here: FastAPI must see real types to read request bodies.
"""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitoring import catalogue
from policies import Permission, PolicyEvaluator, ResidencyPolicy
from policies.access import tenant_may_send, tenant_may_use_model
from policies.audit import open_log, read_records
from policies.evaluation import Decision, Effect
from policies.guard import Guard, Verdict
from policies.openbao import AccessStore, OpenBaoRefused, OpenBaoUnavailable, TenantCipher, TransitSigner, connect
from serving.auth import AccessDenied, AccessGate, AccessMiddleware, Caller, requires, unavailable
from serving.checkpoint import ModelCard
from serving.config import AccessConfig, Upstream
from serving.errors import APIError
from serving.generation import SamplingParams
from serving.llm_server import GenerationJob
from serving.metrics import GatewayMetricsMiddleware
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.upstream import UpstreamRelay

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="sovereign-stack",
    summary="OpenAI-compatible API for the sovereign A.X K1 model, served in-country.",
    version="0.1.0",
    # Served by an authenticated route below instead: no endpoint but /healthz is open.
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
api.add_middleware(AccessMiddleware)
# Added last, so outermost: it also counts what access control refuses.
api.add_middleware(GatewayMetricsMiddleware)

# Each route declares the permission its caller needs; the endpoint-coverage test holds every route to it.
# Generation is admitted against the tenant's site, rate and quota; reading the model list and schema is not.
GenerationCaller = Annotated[Caller, requires(Permission.INFERENCE, admission="model")]
ModelReader = Annotated[Caller, requires(Permission.INFERENCE)]
UsageReader = Annotated[Caller, requires(Permission.USAGE_READ)]
AuditReader = Annotated[Caller, requires(Permission.AUDIT_READ)]
KeyManager = Annotated[Caller, requires(Permission.KEYS_MANAGE)]
MetricsReader = Annotated[Caller, requires(Permission.METRICS_READ)]
TenantQuery = Annotated[str | None, Query(description="A tenant; defaults to yours (all, for the operator).")]


@api.exception_handler(APIError)
async def _api_error(_: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(request_error(error.errors()).body(), status_code=400)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    message = f"Invalid URL ({request.method} {request.url.path})" if error.status_code == 404 else error.detail
    return JSONResponse(APIError(error.status_code, str(message)).body(), status_code=error.status_code)


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error in the ingress", exc_info=error)
    return JSONResponse(APIError(500, "internal server error; see the server log").body(), status_code=500)


# Pydantic names union members in error locations (`str`, `list[str]`, `TextPart`); clients never see those.
_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def request_error(errors: Any) -> APIError:
    """Turn FastAPI's validation errors into one OpenAI-style 400 that names the offending field."""
    # For a union, "wrong type for this member" says least about what the client got wrong.
    first = min(errors, key=lambda error: error["type"].endswith("_type"))
    if first["type"] == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: it is not valid JSON.")
    if first["type"] in {"model_attributes_type", "dict_type"} or tuple(first["loc"]) == ("body",):
        # Forms, an empty body, a missing Content-Type header and JSON that is not an object end up here.
        return APIError(400, "The request body must be a JSON object sent with `Content-Type: application/json`.")
    location = [
        str(part)
        for part in first["loc"][1:]
        if str(part) not in _UNION_TAGS and "[" not in str(part) and not str(part)[:1].isupper()
    ]
    param = ".".join(location)
    message = "this field is required" if first["type"] == "missing" else first["msg"].removeprefix("Value error, ")
    return APIError(400, f"Invalid value for `{param}`: {message}.", param)


class _Stream:
    """One choice's event stream from `LLMServer`, after its `start` event has been read."""

    def __init__(self, response: DeploymentResponseGenerator, guard: Guard) -> None:
        self._response = response
        self._masks = {"reasoning": guard.output_masker(), "content": guard.output_masker()}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.thinking = False

    async def start(self) -> None:
        first = await self._next()
        if first is None or first["event"] == "error":
            raise APIError.from_event(first) if first else _model_failure()
        self.prompt_tokens = first["prompt_tokens"]
        self.thinking = first["thinking"]

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """`delta` events with identifiers masked per policy, then the `end` event."""
        while (event := await self._next()) is not None:
            if event["event"] == "error":  # the model failed mid-generation (an expert shard died, say)
                raise APIError.from_event(event)
            if event["event"] == "end":
                tail = {channel: mask.flush() for channel, mask in self._masks.items()}
                if any(tail.values()):
                    yield {"event": "delta", **tail}
                self.completion_tokens = event["completion_tokens"]
                yield event
                return
            masked = {channel: mask.feed(event[channel]) for channel, mask in self._masks.items()}
            if any(masked.values()):
                yield {"event": "delta", **masked}
        raise _model_failure()

    async def collect(self) -> tuple[str, str, dict[str, Any]]:
        reasoning, content, end = [], [], {}
        async for event in self.events():
            if event["event"] == "delta":
                reasoning.append(event["reasoning"])
                content.append(event["content"])
            else:
                end = event
        return "".join(reasoning), "".join(content), end

    def cancel(self) -> None:
        self._response.cancel()

    async def _next(self) -> dict[str, Any] | None:
        try:
            return await self._response.__anext__()
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.error("model server failed during generation: %s", error)
            raise _model_failure() from None


def _model_failure() -> APIError:
    return APIError(503, "the model server failed during generation; retry the request", code="model_unavailable")


def _usage(streams: list[_Stream]) -> dict[str, int]:
    prompt = sum(stream.prompt_tokens for stream in streams)
    completion = sum(stream.completion_tokens for stream in streams)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _interleave(streams: list[_Stream]) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Merge several choices' events as they arrive, tagged with the choice index."""
    if len(streams) == 1:
        async for event in streams[0].events():
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, dict[str, Any] | APIError | None]] = asyncio.Queue()

    async def pump(index: int, stream: _Stream) -> None:
        try:
            async for event in stream.events():
                await queue.put((index, event))
            await queue.put((index, None))
        except APIError as error:
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, APIError):
                raise item
            if item is None:
                remaining -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def _chat_choices(stream: _Stream) -> AsyncIterator[dict[str, Any]]:
    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    yield choice({"role": "assistant", "content": ""})
    async for event in stream.events():
        if event["event"] == "end":
            yield choice({}, event["finish_reason"])
            continue
        if event["reasoning"]:
            yield choice({"reasoning": event["reasoning"]})
        if event["content"]:
            yield choice({"content": event["content"]})


async def _completion_choices(streams: list[_Stream]) -> AsyncIterator[dict[str, Any]]:
    async for index, event in _interleave(streams):
        if event["event"] == "end":
            yield {"index": index, "text": "", "logprobs": None, "finish_reason": event["finish_reason"]}
        elif text := event["reasoning"] + event["content"]:
            yield {"index": index, "text": text, "logprobs": None, "finish_reason": None}


def _sampling(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.token_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
    )


def _forwarded(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The request as an upstream receives it: only the fields the client set."""
    return body.model_dump(mode="json", exclude_unset=True)


def _event_stream(chunks: AsyncIterator[dict[str, Any]], streams: list[_Stream]) -> StreamingResponse:
    return StreamingResponse(
        _sse(chunks, lambda: [stream.cancel() for stream in streams]), media_type="text/event-stream"
    )


def _count_decision(verdict: Verdict, decision: str, rule: str, egress_rule: str | None) -> None:
    for pii_type, count in verdict.counts.items():
        catalogue.PII_DETECTIONS.labels(pii_type).inc(count)
    catalogue.RESIDENCY_DECISIONS.labels("block" if decision == Effect.DENY else decision, rule).inc()
    if egress_rule is not None:
        catalogue.EGRESS_BLOCKED.labels(egress_rule).inc()


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")


async def _sse(chunks: AsyncIterator[dict[str, Any]], cancel: Callable[[], object]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except APIError as error:
        # Headers are already sent; OpenAI clients read an error object from the stream instead.
        yield f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
    finally:
        # Serve already cancels on client disconnect; this also stops sibling choices when one fails.
        cancel()
    yield "data: [DONE]\n\n"


class NewKeyRequest(BaseModel):
    role: str = Field(description="A role of the residency policy, e.g. `model-user`.")
    name: str = Field("", max_length=200, description="What the key is for, shown in key listings.")
    tenant: str | None = Field(None, description="The tenant; defaults to the caller's. Others need the operator.")


def _visible_tenant(gate: AccessGate, caller: Caller, tenant: str | None) -> str | None:
    """The tenant whose data the caller asked for; None means all, which only the operator tenant may ask."""
    if tenant is None:
        return None if caller.principal.tenant == gate.roles.operator_tenant else caller.principal.tenant
    if not gate.roles.sees_tenant(caller.principal, tenant):
        raise AccessDenied(
            403,
            f"Tenant `{tenant}` is not yours; you may only see `{caller.principal.tenant}`.",
            "tenant_not_visible",
            param="tenant",
        )
    return tenant


@contextmanager
def _store_errors(action: str) -> Iterator[None]:
    """OpenBao errors while serving a request become 503 (unreachable) or 400 (refused), never a 500."""
    try:
        yield
    except OpenBaoUnavailable:
        raise unavailable(f"{action}: OpenBao cannot be reached") from None
    except OpenBaoRefused as error:
        raise APIError(400, f"{action}: {error}") from None


# Defined last: Serve's ingress wrapper captures the module's globals when it decorates the class.
@serve.deployment(name="OpenAIIngress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpenAIIngress:
    def __init__(
        self,
        llm: DeploymentHandle,
        card: ModelCard,
        site: str,
        policy: ResidencyPolicy,
        default_enable_thinking: bool,
        state_dir: Path,
        upstreams: list[Upstream],
        access: AccessConfig,
        tenants: frozenset[str] | None = None,
    ) -> None:
        self.llm = llm
        self.tenants = tenants
        self.card = card
        self.site = site
        self.policy = policy
        self.default_enable_thinking = default_enable_thinking
        self.evaluator = PolicyEvaluator(policy)
        self.guard = Guard(self.evaluator)
        self.serves_in_country = self.evaluator.site_in_country(site).allowed
        openbao = connect(access.vault_addr, access.vault_token.get_secret_value(), access.vault_timeout_seconds)
        self.audit = open_log(state_dir, TransitSigner(openbao))
        self.cipher = TenantCipher(openbao)
        self.captures_dir = state_dir / "captures"
        self.gate = AccessGate(policy, AccessStore(openbao), site, self._security_event)
        catalogue.initialise_series(self.evaluator.egress_rules())
        # The middleware and route dependencies find the gate here: one ingress per replica process.
        api.state.access = self.gate
        self.relays = {upstream.name: UpstreamRelay(upstream, self.guard) for upstream in upstreams}
        self.policy_summary = {
            "name": policy.metadata.name,
            "jurisdiction": policy.spec.jurisdiction.code,
            "sha256": policy.digest(),
        }

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.card.id,
            "revision": self.card.revision,
            "site": self.site,
            "policy": self.policy_summary,
        }

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, caller: ModelReader) -> dict[str, Any]:
        return api.openapi()

    @api.get("/v1/models")
    async def list_models(self, caller: ModelReader) -> dict[str, Any]:
        models = [self._model_object(), *map(self._upstream_object, self.relays)]
        allowed = [model for model in models if self._may_use(caller, model["id"]).allowed]
        return {"object": "list", "data": allowed}

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(self, model_id: str, caller: ModelReader) -> dict[str, Any]:
        relay = self._route(model_id, caller, param=None)
        return self._upstream_object(model_id) if relay else self._model_object()

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        self, body: ChatCompletionRequest, request: Request, caller: GenerationCaller
    ) -> JSONResponse | StreamingResponse:
        relay = self._route(body.model, caller)
        texts = await self._guarded([message.text() for message in body.messages], "messages", request, caller, relay)
        if relay is not None:
            messages = [{"role": m.role, "content": text} for m, text in zip(body.messages, texts, strict=True)]
            return await self._relay(relay, "chat/completions", {**_forwarded(body), "messages": messages}, caller)
        enable_thinking = self.default_enable_thinking
        if body.chat_template_kwargs and body.chat_template_kwargs.enable_thinking is not None:
            enable_thinking = body.chat_template_kwargs.enable_thinking
        job = GenerationJob(
            params=_sampling(body),
            messages=[
                {"role": m.template_role(), "content": text} for m, text in zip(body.messages, texts, strict=True)
            ],
            enable_thinking=enable_thinking,
        )
        streams = await self._open([job])
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            chunks = self._chunks(
                request_id, "chat.completion.chunk", _chat_choices(streams[0]), streams, body.include_usage(), caller
            )
            return _event_stream(chunks, streams)
        return JSONResponse(await self._chat_response(request_id, streams[0], caller))

    @api.post("/v1/completions", response_model=None)
    async def completions(
        self, body: CompletionRequest, request: Request, caller: GenerationCaller
    ) -> JSONResponse | StreamingResponse:
        relay = self._route(body.model, caller)
        if relay is not None:
            if not isinstance(body.prompt, str):
                raise APIError(400, "upstream models take a single text `prompt`", "prompt")
            (prompt,) = await self._guarded([body.prompt], "prompt", request, caller, relay)
            return await self._relay(relay, "completions", {**_forwarded(body), "prompt": prompt}, caller)
        prompts = await self._guarded_prompts(body, request, caller)
        jobs = [GenerationJob(params=_sampling(body), prompt=prompt) for prompt in prompts]
        streams = await self._open(jobs)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            chunks = self._chunks(
                request_id, "text_completion", _completion_choices(streams), streams, body.include_usage(), caller
            )
            return _event_stream(chunks, streams)
        return JSONResponse(await self._completion_response(request_id, streams, caller))

    # -- usage, audit, keys, metrics ---------------------------------------------------------------

    @api.get("/v1/usage")
    async def usage(
        self,
        caller: UsageReader,
        tenant: TenantQuery = None,
    ) -> dict[str, Any]:
        visible = _visible_tenant(self.gate, caller, tenant)
        return {"object": "list", "data": self.gate.usage_report(None if visible is None else [visible])}

    @api.get("/v1/audit")
    async def audit_records(
        self,
        caller: AuditReader,
        limit: Annotated[int, Query(ge=1, le=10_000, description="How many of the newest records to return.")] = 100,
        tenant: TenantQuery = None,
    ) -> dict[str, Any]:
        visible = _visible_tenant(self.gate, caller, tenant)
        records = await asyncio.to_thread(read_records, self.audit.directory, visible, limit)
        return {"object": "list", "data": records}

    @api.get("/v1/keys")
    async def list_keys(
        self,
        caller: KeyManager,
        tenant: TenantQuery = None,
    ) -> dict[str, Any]:
        visible = _visible_tenant(self.gate, caller, tenant)
        with _store_errors("listing keys"):
            keys = await asyncio.to_thread(self.gate.store.keys, visible)
        return {"object": "list", "data": [key.public() for key in keys]}

    @api.post("/v1/keys", status_code=201)
    async def create_key(self, body: NewKeyRequest, caller: KeyManager) -> dict[str, Any]:
        tenant = _visible_tenant(self.gate, caller, body.tenant) or caller.principal.tenant
        if body.role not in self.gate.roles:
            known = ", ".join(self.gate.roles.names)
            raise APIError(400, f"Invalid value for `role`: `{body.role}` is not a role; known roles: {known}.", "role")
        with _store_errors("creating a key"):
            if await asyncio.to_thread(self.gate.store.tenant, tenant) is None:
                raise APIError(404, f"Tenant `{tenant}` does not exist.", "tenant", "tenant_not_found")
            record, token = await asyncio.to_thread(
                self.gate.store.create_key, tenant, body.role, body.name, caller.principal.subject
            )
        await self._admin_audit(caller, "key.create", keyId=record.key_id, keyTenant=tenant, keyRole=body.role)
        return {**record.public(), "key": token}

    @api.delete("/v1/keys/{key_id}")
    async def revoke_key(self, key_id: str, caller: KeyManager) -> dict[str, Any]:
        with _store_errors("revoking a key"):
            record = await asyncio.to_thread(self.gate.store.key, key_id)
            # Another tenant's key is reported as missing: its existence is not the caller's business.
            if record is None or not self.gate.roles.sees_tenant(caller.principal, record.tenant):
                raise APIError(404, f"There is no key `{key_id}` in your tenant.", "key_id", "key_not_found")
            record = await asyncio.to_thread(self.gate.store.revoke_key, key_id)
        await self._admin_audit(caller, "key.revoke", keyId=key_id, keyTenant=record.tenant)
        return record.public()

    @api.get("/metrics", include_in_schema=False)
    async def metrics(self, caller: MetricsReader) -> Response:
        return Response(await asyncio.to_thread(catalogue.exposition), media_type=CONTENT_TYPE_LATEST)

    async def _security_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "auth_failure":
            catalogue.AUTH_FAILURES.labels(fields["reason"]).inc()
            return
        catalogue.AUTH_LOCKOUTS.labels(fields["subject"].split(":", 1)[0]).inc()
        await asyncio.to_thread(self.audit.append, "security", action="lockout", **fields)

    async def _admin_audit(self, caller: Caller, action: str, **fields: Any) -> None:
        await asyncio.to_thread(
            self.audit.append,
            "admin",
            action=action,
            tenant=caller.principal.tenant,
            principal=caller.principal.subject,
            role=caller.principal.role,
            **fields,
        )

    # -- generation plumbing -------------------------------------------------------------------

    async def _guarded(
        self, texts: list[str], param: str, request: Request, caller: Caller, relay: UpstreamRelay | None = None
    ) -> list[str]:
        """Apply the residency policy and the tenant's data classes to a request, and audit the decision.

        Refuses the request, or returns the texts as the model may see them.
        """
        verdict, allowed = self.guard.inspect(texts)
        refusal = self._egress_refusal(verdict, relay)
        tenant_refusal = tenant_may_send(caller.tenant, verdict.data_classes)
        # The policy's own block wins; otherwise the tenant's data classes come before the destination.
        tenant_refused = not tenant_refusal.allowed and verdict.effect is not Effect.DENY
        decision, rule = await self._audit(
            request, caller, texts, verdict, tenant_refusal if tenant_refused else refusal, relay
        )
        egress_refused = refusal is not None and not tenant_refused and verdict.effect is not Effect.DENY
        _count_decision(verdict, decision, rule, refusal.rule if egress_refused and refusal else None)
        if tenant_refused:
            catalogue.ACCESS_REFUSALS.labels(caller.tenant.name, "data_class").inc()
            raise AccessDenied(
                403,
                f"{tenant_refusal.reason} (rule {tenant_refusal.rule}). Remove that data and send the request again.",
                "data_class_not_allowed",
                param=param,
            )
        if verdict.effect is Effect.DENY:
            raise APIError(
                403,
                f"The residency policy does not allow this request: it contains {', '.join(verdict.blocked_types)} "
                f"(rule {verdict.rule}). Remove these identifiers and send it again.",
                param,
                "data_class_blocked",
            )
        if refusal is not None and refusal.rule.endswith(".inCountryOnly"):
            # Never fall back to a deployment abroad.
            raise APIError(
                503,
                f"This request carries data that must stay in {self.policy.spec.jurisdiction.code} "
                f"(rule {refusal.rule}), and no in-country deployment of this model is available.",
                code="no_in_country_deployment",
            )
        if refusal is not None:
            raise APIError(
                403,
                f"The residency policy does not allow this request: {refusal.reason} (rule {refusal.rule}).",
                param,
                "egress_denied",
            )
        if caller.tenant.debug_capture:
            # Only what is let through is kept: a refused request's identifiers are never stored, not even encrypted.
            await self._capture(caller, request.url.path, allowed)
        return allowed

    def _egress_refusal(self, verdict: Verdict, relay: UpstreamRelay | None) -> Decision | None:
        """Why the request's data may not go where the model runs, if it may not."""
        if relay is None:
            if verdict.in_country_rule and not self.serves_in_country:
                return Decision(Effect.DENY, verdict.in_country_rule, f"site `{self.site}` is not in-country")
            return None
        for data_class in sorted(verdict.data_classes):
            decision = self.evaluator.may_send(data_class, relay.upstream.url)
            if not decision.allowed:
                return decision
        return None

    async def _relay(
        self, relay: UpstreamRelay, path: str, body: dict[str, Any], caller: Caller
    ) -> JSONResponse | StreamingResponse:
        if not body.get("stream"):
            response = await relay.complete(path, body)
            usage = response.get("usage") or {}
            self.gate.record_tokens(
                caller.tenant.name, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            )
            return JSONResponse(response)
        chunks = await relay.stream(path, body)
        return StreamingResponse(_sse(chunks, lambda: None), media_type="text/event-stream")

    async def _capture(self, caller: Caller, route: str, texts: list[str]) -> None:
        """Keep the prompt for the tenant's debugging, encrypted under its derived transit key; never in clear."""
        with _store_errors("keeping the tenant's debug capture"):
            ciphertext = await asyncio.to_thread(self.cipher.encrypt, caller.tenant.name, json.dumps(texts))
        record = {"time": time.time(), "route": route, "principal": caller.principal.subject, "ciphertext": ciphertext}
        await asyncio.to_thread(_append_line, self.captures_dir / f"{caller.tenant.name}.jsonl", json.dumps(record))

    async def _audit(
        self,
        request: Request,
        caller: Caller,
        texts: list[str],
        verdict: Verdict,
        refusal: Decision | None,
        relay: UpstreamRelay | None,
    ) -> tuple[str, str]:
        """Write the request's audit record; returns the decision and rule it records."""
        decision, rule = verdict.effect.value, verdict.rule
        if refusal is not None and verdict.effect is not Effect.DENY:
            decision, rule = Effect.DENY.value, refusal.rule
        # The audit write is durable (fsync'ed) before the request goes on; it must not block the event loop.
        await asyncio.to_thread(
            self.audit.append,
            "request",
            tenant=caller.principal.tenant,
            principal=caller.principal.subject,
            role=caller.principal.role,
            source=request.client.host if request.client else None,
            route=request.url.path,
            model=relay.upstream.name if relay else self.card.id,
            upstream=relay.upstream.url if relay else None,
            decision=decision,
            rule=rule,
            pii=verdict.counts,
            promptHmac=self.audit.prompt_hmac("\n".join(texts)),
        )
        return decision, rule

    async def _guarded_prompts(
        self, body: CompletionRequest, request: Request, caller: Caller
    ) -> list[str | list[int]]:
        prompts = body.prompts()
        # Token-id prompts are decoded first, so identifiers cannot slip past the guard as ids.
        texts = await asyncio.gather(*(self._prompt_text(prompt) for prompt in prompts))
        inspected = [index for index, text in enumerate(texts) if text is not None]
        allowed = await self._guarded([texts[index] for index in inspected], "prompt", request, caller)
        for index, text in zip(inspected, allowed, strict=True):
            if text != texts[index]:
                prompts[index] = text
        return prompts

    async def _prompt_text(self, prompt: str | list[int]) -> str | None:
        return prompt if isinstance(prompt, str) else await self.llm.decode.remote(prompt)

    async def _open(self, jobs: list[GenerationJob]) -> list[_Stream]:
        """Start one generation per job and wait for each to accept or refuse its prompt."""
        streams = [_Stream(self.llm.options(stream=True).generate.remote(job), self.guard) for job in jobs]
        try:
            await asyncio.gather(*(stream.start() for stream in streams))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    def _envelope(self, request_id: str, kind: str) -> dict[str, Any]:
        return {"id": request_id, "object": kind, "created": int(time.time()), "model": self.card.id}

    async def _chat_response(self, request_id: str, stream: _Stream, caller: Caller) -> dict[str, Any]:
        reasoning, content, end = await stream.collect()
        self.gate.record_tokens(caller.tenant.name, stream.prompt_tokens, stream.completion_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": content if end["answer_started"] else None}
        if stream.thinking:
            message["reasoning"] = reasoning
        choice = {"index": 0, "message": message, "finish_reason": end["finish_reason"], "logprobs": None}
        return {**self._envelope(request_id, "chat.completion"), "choices": [choice], "usage": _usage([stream])}

    async def _completion_response(self, request_id: str, streams: list[_Stream], caller: Caller) -> dict[str, Any]:
        results = await asyncio.gather(*(stream.collect() for stream in streams))
        usage = _usage(streams)
        self.gate.record_tokens(caller.tenant.name, usage["prompt_tokens"], usage["completion_tokens"])
        choices = [
            {"index": index, "text": reasoning + content, "finish_reason": end["finish_reason"], "logprobs": None}
            for index, (reasoning, content, end) in enumerate(results)
        ]
        return {**self._envelope(request_id, "text_completion"), "choices": choices, "usage": usage}

    async def _chunks(
        self,
        request_id: str,
        kind: str,
        choices: AsyncIterator[dict[str, Any]],
        streams: list[_Stream],
        include_usage: bool,
        caller: Caller,
    ) -> AsyncIterator[dict[str, Any]]:
        """Wrap each streamed choice in a chunk; with `include_usage`, end with a usage-only chunk.

        Tokens are metered when the stream ends, also when the client went away mid-answer.
        """
        envelope = self._envelope(request_id, kind)
        usage_field = {"usage": None} if include_usage else {}
        try:
            async for choice in choices:
                yield {**envelope, "choices": [choice], **usage_field}
            if include_usage:
                yield {**envelope, "choices": [], "usage": _usage(streams)}
        finally:
            usage = _usage(streams)
            self.gate.record_tokens(caller.tenant.name, usage["prompt_tokens"], usage["completion_tokens"])

    # -- models ----------------------------------------------------------------------------------

    def _model_object(self) -> dict[str, Any]:
        return {
            "id": self.card.id,
            "object": "model",
            "created": self.card.created,
            "owned_by": "sovereign-stack",
            "max_model_len": self.card.max_model_len,
            "site": self.site,
        }

    def _route(self, model_id: str, caller: Caller, param: str | None = "model") -> UpstreamRelay | None:
        """The relay serving `model_id`, or None for the local model; 404 for unknown, 403 for not the tenant's."""
        if model_id != self.card.id and model_id not in self.relays:
            available = ", ".join([self.card.id, *self.relays])
            raise APIError(
                404, f"The model `{model_id}` does not exist. Available models: {available}.", param, "model_not_found"
            )
        decision = self._may_use(caller, model_id)
        if not decision.allowed:
            catalogue.ACCESS_REFUSALS.labels(caller.tenant.name, "model").inc()
            raise AccessDenied(403, f"{decision.reason} (rule {decision.rule}).", "model_not_allowed", param=param)
        return self.relays.get(model_id)

    def _may_use(self, caller: Caller, model_id: str) -> Decision:
        """The tenant's own model list; for the local model also the deployment's tenants, where it names them."""
        return tenant_may_use_model(caller.tenant, model_id, self.tenants if model_id == self.card.id else None)

    def _upstream_object(self, name: str) -> dict[str, Any]:
        destination = self.evaluator.may_send("public", self.relays[name].upstream.url)
        return {
            "id": name,
            "object": "model",
            "created": self.card.created,
            "owned_by": "upstream",
            "upstream": self.relays[name].upstream.url,
            "egress_rule": destination.rule,
        }
