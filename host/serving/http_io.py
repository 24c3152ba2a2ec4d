"""What every HTTP protocol module uses: routes, request bodies (limited, timed, decompressed), JSON in and out."""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from mvu.host.serving.envelope import Endpoint
from mvu.host.serving.errors import ServingError
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.served_model import ServedModel

__all__ = ["BodyReader", "HttpHandler", "HttpRoute", "json_object", "json_response", "path_model"]

HttpHandler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class HttpRoute:
    path: str
    endpoint: Endpoint[HttpHandler]
    methods: tuple[str, ...] = ("GET",)


def path_model(repository: ModelRepository, request: Request) -> ServedModel:
    """The model version a path names with ``{name}`` and, optionally, ``{version}``."""
    return repository.get(request.path_params["name"], request.path_params.get("version"))


def json_response(value, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status, headers, media_type="application/json")


def json_object(text: bytes | memoryview, what: str) -> dict:
    """Parse a request body that must be a JSON object; 400s say why (``what`` names the body)."""
    try:
        value = json.loads(bytes(text))
    except UnicodeDecodeError:
        raise ServingError(400, f"{what} is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise ServingError(400, f"{what} is not valid JSON (it goes wrong at line {error.lineno}, column "
                                f"{error.colno})") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise ServingError(400, f"{what} has an integer of more than {sys.get_int_max_str_digits()} digits") \
            from None
    except RecursionError:
        raise ServingError(400, f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ServingError(400, f"{what} must be a JSON object, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class BodyReader:
    """Reads request bodies within a size limit (bytes) and a time limit (seconds)."""

    max_bytes: int
    timeout: float

    async def __call__(self, request: Request) -> bytes:
        """The body, decompressed if sent with Content-Encoding; 413 past the limit, 408 when it does not
        arrive in time (a client that stalls mid-body would otherwise hold its buffers forever)."""
        limit = self.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServingError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ServingError(413, f"request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except ClientDisconnect:  # nobody reads the answer; counted as a bad request, not logged as a failure
            raise ServingError(400, f"the client disconnected after {size} bytes of the body") from None
        except TimeoutError:
            raise ServingError(408, f"the request body did not arrive within {self.timeout:g} s "
                                    f"({size} bytes came)") from None
        return _decoded(b"".join(chunks), request.headers.get("content-encoding", "identity").lower(), limit)


#: Content-Encoding -> zlib's window bits for it (gzip: a gzip header; deflate: a zlib header, as HTTP means it)
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decompressed, whole: corrupt, cut short or followed by more data is a 400 (never read as what
    came out before the fault); larger than ``limit`` a 413."""
    if encoding == "identity":
        return body
    if encoding not in _ENCODINGS:
        raise ServingError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    decompressor = zlib.decompressobj(_ENCODINGS[encoding])
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise ServingError(400, f"the request body is not valid {encoding} data (Content-Encoding: {encoding})") \
            from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise ServingError(413, f"decompressed request body exceeds the limit of {limit} bytes")
    if not decompressor.eof:
        raise ServingError(400, f"the request body is not valid {encoding} data: "
                                f"{'it is empty' if not body else 'it ends before its compressed data does'}")
    if decompressor.unused_data:
        raise ServingError(400, f"the request body has {len(decompressor.unused_data)} bytes after the end of "
                                f"its {encoding} data")
    return data
