"""A minimal round-robin HTTP proxy: the front door of the peer benchmark's plain-vLLM system
(two `vllm.entrypoints.openai.api_server` processes behind it). Each request goes to the next
backend in turn, whatever it is; the answer is streamed back chunk by chunk as it arrives (the
SSE of a streamed completion is not buffered). No retries, no health checks, no balancing by
load: the simplest thing a user would put in front of two servers.

    python -m benchmarks.peer_proxy --port 8000 --backend http://127.0.0.1:8001 \
        --backend http://127.0.0.1:8002

Needs aiohttp (the `peers` extra, scripts/setup_peers.sh).
"""

from __future__ import annotations

import argparse
import itertools
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp sets itself on each leg.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
_SESSION = web.AppKey("session", ClientSession)


def _forwarded(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}


def make_app(backends: list[str]) -> web.Application:
    """The proxy as an aiohttp application over `backends` (base URLs, without a slash at the
    end), in the order given."""
    if not backends:
        raise ValueError("the proxy needs at least one backend")
    turn = itertools.cycle([b.rstrip("/") for b in backends])

    async def forward(request: web.Request) -> web.StreamResponse:
        base = next(turn)
        body = await request.read()
        session = request.app[_SESSION]
        async with session.request(
            request.method,
            base + request.path_qs,
            data=body or None,
            headers=_forwarded(request.headers),
            auto_decompress=False,
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status, headers=_forwarded(upstream.headers)
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session(app: web.Application):
        # No connection limit, no timeout: the client's timeouts are the ones that count. A
        # new connection for every request: reusing one that the server has just closed as
        # idle (uvicorn: after 5 s) fails the request with ServerDisconnectedError; it did.
        app[_SESSION] = ClientSession(
            connector=TCPConnector(limit=0, force_close=True), timeout=ClientTimeout(total=None)
        )
        yield
        await app[_SESSION].close()

    app = web.Application(client_max_size=64 * 2**20)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", action="append", required=True, help="base URL; repeat")
    args = p.parse_args(argv)
    web.run_app(make_app(args.backend), host=args.host, port=args.port, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
