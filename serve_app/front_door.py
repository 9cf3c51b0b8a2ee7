"""What every request passes before any work is done for it: an API key (every endpoint but
`/health`), headers and a body within their limits, and a JSON content type for a body. HTTP
requests pass through `FrontDoorMiddleware` (pure ASGI, so the body is counted as it arrives
and never read past the limit); gRPC calls through `FrontDoor.check_grpc`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from serve_app import limits
from serve_app.auth import APIKeys, bearer_token
from serve_app.config import LimitSettings
from serve_app.openai_protocol import APIError, send_error

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no key


def unauthorized(missing: bool) -> APIError:
    why = (
        "No API key provided: send it as 'Authorization: Bearer <key>'."
        if missing
        else "Incorrect API key provided."
    )
    return APIError(why, 401, "authentication_error", code="invalid_api_key")


class FrontDoor:
    def __init__(self, keys: APIKeys, limits_: LimitSettings) -> None:
        self.keys = keys
        self.limits = limits_

    def _check_key(self, authorization: str | None, peer: str) -> None:
        if not self.keys.enabled:
            return
        key = bearer_token(authorization)
        if not self.keys.valid(key):
            logger.warning("refused %s: %s API key", peer, "no" if key is None else "a wrong")
            raise unauthorized(key is None)

    def check_http(self, scope: dict[str, Any]) -> None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        limits.check_headers(headers, self.limits.max_header_bytes)
        if scope.get("path") not in OPEN_PATHS:
            client = scope.get("client") or ("?", 0)
            self._check_key(_header(headers, b"authorization"), f"HTTP {client[0]}")
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            limits.check_content_type(_header(headers, b"content-type"))
        limits.check_content_length(_header(headers, b"content-length"), self.limits.max_body_bytes)

    def check_grpc(self, context: Any) -> None:
        metadata: Iterable[tuple[str, Any]] = context.invocation_metadata() or ()
        authorization = next((str(v) for k, v in metadata if k.lower() == "authorization"), None)
        self._check_key(authorization, f"gRPC {context.peer() or '?'}")


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class _BodyTooLarge(Exception):
    pass


class FrontDoorMiddleware:
    """`resolve` returns the FrontDoor of the replica serving the request (its settings are
    known only once the deployment has started)."""

    def __init__(self, app: Any, resolve: Callable[[], FrontDoor]) -> None:
        self.app = app
        self.resolve = resolve

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        door = self.resolve()
        try:
            door.check_http(scope)
        except APIError as e:
            await send_error(send, e)
            return
        max_bytes = door.limits.max_body_bytes
        received = 0
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:  # a body without Content-Length, or a false one
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise
            await send_error(send, limits.too_large(f"over {max_bytes}", max_bytes))
