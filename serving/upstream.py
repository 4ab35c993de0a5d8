"""Relay requests to an OpenAI-compatible upstream, masking identifiers in what comes back.

The policy checks (guard verdict, egress per data class) happen in the ingress before a relay is
called, so nothing reaches an upstream the policy does not allow.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from policies.guard import Guard, OutputMasker
from serving.config import Upstream
from serving.errors import APIError

_MASKED_FIELDS = ("content", "reasoning", "text")


class UpstreamRelay:
    def __init__(self, upstream: Upstream, guard: Guard) -> None:
        self.upstream = upstream
        self._guard = guard
        key = upstream.api_key.get_secret_value() if upstream.api_key else None
        self._client = httpx.AsyncClient(
            base_url=upstream.url.rstrip("/") + "/",
            timeout=httpx.Timeout(300, connect=10),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    async def complete(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed completion with identifiers masked in every choice."""
        try:
            response = await self._client.post(path, json=self._outgoing(body))
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        payload = self._payload(response)
        for choice in payload.get("choices", []):
            for holder in (choice, choice.get("message") or {}):
                for field in _MASKED_FIELDS:
                    if isinstance(holder.get(field), str):
                        holder[field] = self._guard.mask_output(holder[field])
        return payload

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streamed chunks with identifiers masked across chunk boundaries; raises before the first chunk."""
        request = self._client.build_request("POST", path, json=self._outgoing(body))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        if response.status_code >= 400:
            await response.aread()
            self._payload(response)
        return self._chunks(response)

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        maskers: dict[tuple[int, str], OutputMasker] = {}
        try:
            async for line in response.aiter_lines():
                data = line.removeprefix("data:").strip()
                if not line.startswith("data:") or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                for choice in chunk.get("choices", []):
                    holder = choice.get("delta", choice)
                    finishing = choice.get("finish_reason") is not None
                    for field in _MASKED_FIELDS:
                        key = (choice.get("index", 0), field)
                        if isinstance(holder.get(field), str) or (finishing and key in maskers):
                            masker = maskers.setdefault(key, self._guard.output_masker())
                            masked = masker.feed(holder.get(field) or "") + (masker.flush() if finishing else "")
                            holder[field] = masked
                chunk["model"] = self.upstream.name
                yield chunk
        finally:
            await response.aclose()

    def _outgoing(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.upstream.model or self.upstream.name}

    def _payload(self, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            raise APIError(
                502,
                f"upstream `{self.upstream.name}` answered {response.status_code} without JSON",
                code="upstream_error",
            ) from None
        if response.status_code >= 400:
            error = payload.get("error") or {}
            # The client's mistakes pass through; the upstream's own failures are a bad gateway here.
            status = response.status_code if response.status_code < 500 else 502
            raise APIError(
                status,
                f"upstream `{self.upstream.name}`: {error.get('message', payload)}",
                error.get("param"),
                error.get("code"),
            )
        payload["model"] = self.upstream.name
        return payload

    def _unreachable(self, error: httpx.HTTPError) -> APIError:
        return APIError(502, f"upstream `{self.upstream.name}` is unreachable: {error}", code="upstream_unreachable")
