"""Errors a request gets back, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from ..errors import EdgeInferError

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(EdgeInferError):
    """One refused or failed request: an HTTP status and the error JSON OpenAI's clients parse."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = INVALID_REQUEST, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def overloaded(retry_after_s: int) -> APIError:
    return APIError(503, f"the server is busy (every slot running, the queue full): retry in {retry_after_s} s",
                    code="overloaded", type=SERVER_ERROR, headers={"Retry-After": str(retry_after_s)})


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down: retry against another instance or after it restarts",
                    code="shutting_down", type=SERVER_ERROR, headers={"Retry-After": "5", "Connection": "close"})
