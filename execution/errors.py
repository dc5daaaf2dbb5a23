"""Errors the gateway returns to clients, in OpenAI's error format.

Every refusal goes out as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP
status, because the openai SDK and LangChain map the status to an exception class
(400 -> BadRequestError, 401 -> AuthenticationError, 404 -> NotFoundError, 413/others ->
APIStatusError) and show ``message`` to the user; a message must therefore say what was
wrong and, where there is one, which field (``param``, e.g. ``messages[0].content[1].image_url``).
"""
from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A request the gateway refuses; `to_body()` is the JSON returned with `status`."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for a request that is malformed or asks for something this server refuses."""
    return APIError(message, status=400, param=param, code=code)


def model_not_found(model: str) -> APIError:
    # OpenAI answers an unknown model with 404 + code model_not_found; vLLM also uses 404
    # ("The model `x` does not exist."). Both SDKs raise NotFoundError on it.
    return APIError(f"The model `{model}` does not exist.", status=404, param="model",
                    code="model_not_found")


def body_too_large(size: int | None, limit: int) -> APIError:
    got = f"{size} bytes" if size is not None else "more than that"
    return APIError(f"Request body is too large: {got}; the limit is {limit} bytes "
                    "(see the gateway's --max-body-bytes).", status=413, code="request_too_large")


def unauthorized() -> APIError:
    return APIError("Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                    status=401, code="invalid_api_key")


def server_error(message: str, status: int = 500) -> APIError:
    """The pipeline failed (not the caller's fault): 500, or 503 while it is not ready."""
    return APIError(message, status=status, type="server_error" if status == 500 else
                    "service_unavailable", code=None)
