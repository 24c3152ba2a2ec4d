"""Every stage of an HTTP/1.1 connection has a deadline, and a request the connection cuts short gets an answer.

uvicorn's httptools protocol, which parses requests below the application, waits forever for a request line and
headers that never end (and keeps growing them), for the first request of a new connection, for the rest of a
body the application answered without reading, and for a client that does not read its answer; a client that
half-closes its side mid-body gets no answer at all. :func:`connection_protocol` makes a subclass with limits:

| stage | limit | on expiry |
|---|---|---|
| request line and headers (a new connection's from its accept) | ``header_timeout``, ``max_header_bytes`` | 408, 431 |
| between the requests of a kept-alive connection | ``idle_timeout`` | closed |
| body the application reads | the application's own (``BodyReader``: 408) | |
| body left unread by the answer | ``body_timeout`` from the headers | closed |
| an answer the client does not read | ``body_timeout`` | aborted |

A new connection that sends nothing is closed without an answer. The end of the client's data inside the
headers or the body gets a 400 that says so; an invalid request line, header or chunk size gets a 400 in the
protocols' JSON form. Answers before the application has the request count in the metrics as protocol ``http``,
endpoint ``connection`` (later ones, the application counts).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mvu.host.serving.metrics import ServingMetrics

__all__ = ["ConnectionLimits", "connection_protocol"]


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0  # seconds for a request line and headers (the first: from the connection's accept)
    body_timeout: float = 30.0  # seconds for a body, from the end of the headers; and for an answer to be read
    idle_timeout: float = 30.0  # seconds between the requests of a kept-alive connection
    max_header_bytes: int = 64 << 10


def connection_protocol(limits: ConnectionLimits, metrics: ServingMetrics) -> type[asyncio.Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``."""
    return type("HttpConnection", (_Connection,), {"limits": limits, "metrics": metrics})


class _Connection(HttpToolsProtocol):
    limits: ConnectionLimits
    metrics: ServingMetrics

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.idle_timeout
        self._stage: asyncio.TimerHandle | None = None  # the deadline of the headers, or of an unread body
        self._write: asyncio.TimerHandle | None = None  # the deadline of an answer the client is not reading
        self._in_headers = False
        self._silent = True  # not a byte yet
        self._header_bytes = 0
        self._body_bytes = 0
        self._body_deadline = 0.0

    # Stages ---------------------------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._begin_headers()

    def data_received(self, data: bytes) -> None:
        self._silent = False
        if not self._in_headers and (self.cycle is None or not self.cycle.more_body):
            self._begin_headers()  # the previous request is whole: these bytes start the next one
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes")

    def _begin_headers(self) -> None:
        self._in_headers, self._header_bytes = True, 0
        self._set_stage(self.limits.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        if self._silent:  # a connection that never sent a byte gets no answer
            self.transport.close()
            return
        self._refuse(408, f"the request line and headers did not arrive within {self.limits.header_timeout:g} s")

    def on_message_begin(self) -> None:
        if not self._in_headers:  # a pipelined request that came in one piece with the one before
            self._begin_headers()
        self._unset_keepalive_if_required()
        self._body_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._set_stage(None)
        self._body_deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        draining = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if draining:  # the unread body came after all: the connection may carry the next request
            self._set_stage(None)
            self.timeout_keep_alive_task = self.loop.call_later(self.limits.idle_timeout,
                                                                self.timeout_keep_alive_handler)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete and self.cycle.more_body and not self.transport.is_closing():
            # Answered before its body was read (an error, say): the rest may still come, by the body deadline.
            self._set_stage(max(0.0, self._body_deadline - self.loop.time()), self.transport.close)

    def eof_received(self) -> bool | None:
        cycle = self.cycle
        if self._in_headers and self._header_bytes:
            self._refuse(400, "the connection ended inside the request line or headers")
        elif cycle is not None and cycle.more_body and not cycle.response_started:
            length = dict(cycle.scope["headers"]).get(b"content-length")
            promised = f" of the {int(length)} that its Content-Length promised" if length else ""
            self._refuse(400, f"the connection ended after {self._body_bytes} bytes of the request body{promised}")
        elif cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False  # a whole request, then a half-close: answer it, then close
            return True
        return None

    # Writing --------------------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write is None:
            self._write = self.loop.call_later(self.limits.body_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write is not None:
            self._write.cancel()
            self._write = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_stage(None)
        if self._write is not None:
            self._write.cancel()
        super().connection_lost(exc)

    # Answers --------------------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse, in the protocols' form and with its place."""
        where = "request line or headers" if self._in_headers else "chunked body"
        self._refuse(400, f"the request is not valid HTTP/1.1: its {where} cannot be parsed")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` (unless an answer is being written) and close the connection."""
        self._set_stage(None)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()
            return
        body = json.dumps({"error": message}).encode()
        self.transport.write(b"".join([STATUS_LINE[status], b"content-type: application/json\r\n",
                                       b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        self.transport.close()
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application, reading the body, counts the request; its answer is lost
        else:
            self.metrics.requests.labels("http", "connection", str(status)).inc()

    def _set_stage(self, seconds: float | None, action=None) -> None:
        if self._stage is not None:
            self._stage.cancel()
        self._stage = self.loop.call_later(seconds, action) if seconds is not None else None
