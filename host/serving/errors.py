"""One error type for every protocol: an HTTP status, the matching gRPC code, a message for the client."""

from __future__ import annotations

__all__ = ["ServingError", "GRPC_CODES"]

#: HTTP status -> gRPC status code name (grpc.StatusCode member).
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ServingError(Exception):
    """A request the server will not or cannot answer; ``message`` is safe to show to the client."""

    def __init__(self, status: int, message: str):
        if status not in GRPC_CODES:
            raise ValueError(f"unsupported status {status}; expected one of {sorted(GRPC_CODES)}")
        super().__init__(message)
        self.status, self.message = status, message

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES[self.status]
