"""Errors as HTTP clients see them: one exception type, OpenAI's error body.

Every error response is `{"error": {"message", "type", "param", "code"}}`; the app turns
ApiError (and anything unexpected, without its traceback) into that shape in one place.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client: status, message and OpenAI's type/param/code."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def loading() -> ApiError:
    """The models are not loaded yet (llama-server answers the same way)."""
    return ApiError(503, "the models are loading; try again shortly", type="unavailable_error",
                    code="model_loading", headers={"Retry-After": "1"})


def queue_full(limit: int) -> ApiError:
    return ApiError(503, f"the server is busy: {limit} requests are already waiting "
                    "(--max-queue); try again shortly", type="unavailable_error",
                    code="queue_full", headers={"Retry-After": "1"})


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", type="unavailable_error",
                    code="shutting_down")


def unauthorized() -> ApiError:
    return ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def internal(message: str = "internal error (see the server's log)") -> ApiError:
    return ApiError(500, message, type="server_error", code="internal_error")
