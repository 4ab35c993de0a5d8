"""OpenAI-style API errors: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

from typing import Any

_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}


class APIError(Exception):
    """An error the client should see, with the HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Response headers that go with the error, e.g. `Retry-After`."""
        return {}

    def as_event(self) -> dict[str, Any]:
        """The error as a generation-stream event, so it crosses process boundaries as plain data."""
        return {
            "event": "error",
            "status": self.status,
            "message": self.message,
            "param": self.param,
            "code": self.code,
        }

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> APIError:
        return cls(event["status"], event["message"], event.get("param"), event.get("code"))


class EngineFailure(RuntimeError):
    """The engine failed while generating (its process died, a step raised); the request ends with this message."""
