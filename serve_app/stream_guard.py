"""An event stream cut short in Serve's HTTP proxy ends with an error event, not a dropped
connection.

The ingress replica writes the stream; Serve's proxy relays it to the client. When that replica
dies mid-stream (killed, out of memory, its node gone), the proxy stops relaying and closes the
connection without the chunked body's end: the client sees a transport error and no word on
what happened. `StreamGuard` is an ASGI middleware in the proxy (installed by the proxy callback,
serve_app.grpc_bind): a `text/event-stream` response whose body never ended gets an
OpenAI-style `error` event and a proper end; a request whose response had not begun gets an
OpenAI-style 502 instead of the server's bare 500. Either way the proxy's log gets a line and
Ray's metrics a count (`rankserve_proxy_requests_lost_total`, by error code).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serve_app import openai_protocol as oa

logger = logging.getLogger("ray.serve")  # the proxy's own log file

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

LOST = (
    "The server failed this request before answering (the replica serving it stopped or "
    "failed; the proxy's log has the cause). Retry the request."
)
CUT_ERROR = oa.APIError(
    "The server lost this stream mid-way (the replica serving it stopped); the tokens sent so "
    "far stand, the rest will not come. Retry the request.",
    502,
    "server_error",
    code="stream_lost",
)


class StreamGuard:
    def __init__(
        self, app: Callable[..., Awaitable[None]], count_lost: Callable[[str], None]
    ) -> None:
        self.app = app
        self._count_lost = count_lost  # called with the error code the client was sent

    async def __call__(self, scope: Message, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = _ResponseWatch(send)
        try:
            await self.app(scope, receive, response.send)
        except Exception:
            if response.finished or (response.started and not response.event_stream):
                raise
            logger.warning("rankserve: the proxy's relay of %s failed", scope.get("path"))
        if response.finished:
            return
        if not response.started:
            # Serve's proxy answers a request whose replica died before its response began
            # with nothing (the server then says a bare 500): say why, as OpenAI clients read it.
            logger.warning(
                "rankserve: %s got no response from its replica; answered 502", scope.get("path")
            )
            error = oa.APIError(LOST, 502, "server_error", code="replica_lost")
            self._count_lost(error.code)
            with contextlib.suppress(Exception):
                await oa.send_error(send, error)
        elif response.event_stream:
            logger.warning(
                "rankserve: an event stream of %s was cut mid-way; ended it with an error event",
                scope.get("path"),
            )
            self._count_lost(CUT_ERROR.code)
            with contextlib.suppress(Exception):  # the client may be gone too
                body = oa.sse_error(CUT_ERROR).encode()
                await send({"type": "http.response.body", "body": body, "more_body": False})


class _ResponseWatch:
    """Relays a response's messages and notes how far it got."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False
        self.event_stream = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            self.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


def ray_lost_counter() -> Callable[[str], None]:
    """A Ray metrics counter of the requests the guard answered for (the proxy's process
    exports it), by the error code sent."""
    from ray.util.metrics import Counter

    counter = Counter(
        "rankserve_proxy_requests_lost_total",
        description="Requests whose ingress replica died under them in the Serve proxy: "
        "code stream_lost, an event stream ended with an error event; replica_lost, answered "
        "502 before any response.",
        tag_keys=("code",),
    )
    return lambda code: counter.inc(tags={"code": code})
