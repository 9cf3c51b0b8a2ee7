"""Binding Ray Serve's gRPC proxy to the service's host (and guarding its HTTP streams).

Ray Serve 2.60's gRPC proxy takes a port but no host: it listens on `[::]:port`, every
interface, whatever `http_options.host` says. Ray runs the callback named by
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` in each proxy before its servers start; `install`
is that callback: it makes the proxy bind gRPC to `RANKSERVE_GRPC_HOST` instead, and wraps its
HTTP app in serve_app.stream_guard (a stream its ingress replica stopped short ends with an
error event). The launcher sets both variables for the Serve controller, whose proxies
inherit them (`proxy_env(host)`); on a cluster started otherwise, set them on the nodes
(runbooks/).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("ray.serve")  # the proxy's own log file

HOST_VAR = "RANKSERVE_GRPC_HOST"
CALLBACK_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve_app.grpc_bind:install"


def proxy_env(host: str) -> dict[str, str]:
    """The environment that makes Serve's proxies bind gRPC to `host`."""
    return {CALLBACK_VAR: CALLBACK, HOST_VAR: host}


def bind_address(address: str, host: str) -> str:
    """Ray's `[::]:port` with the host put in (an IPv6 host in brackets)."""
    port = address.rpartition(":")[2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def install() -> list[Any]:
    """The proxy callback: rebinds gRPC, and returns the HTTP middleware that ends a stream
    cut mid-way with an error event (serve_app.stream_guard). If Ray no longer has the
    function this replaces, the proxy fails to start rather than listen everywhere."""
    from starlette.middleware import Middleware

    from serve_app.stream_guard import StreamGuard, ray_lost_counter

    guard = [Middleware(StreamGuard, count_lost=ray_lost_counter())]
    host = os.environ.get(HOST_VAR)
    if not host:
        return guard
    from ray.serve._private import default_impl

    listen_everywhere = default_impl.add_grpc_address

    def add_grpc_address(server: Any, address: str) -> None:
        bound = bind_address(address, host)
        logger.info("rankserve: gRPC proxy binds %s (Ray's default: %s)", bound, address)
        listen_everywhere(server, bound)

    default_impl.add_grpc_address = add_grpc_address
    return guard
