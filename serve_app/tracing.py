"""One request's trace in the ingress (docs/tracing.md): a root span per request, continuing the
client's W3C `traceparent` (HTTP header or gRPC metadata), with a child span for each step of
its path (ingress.parse, predictor.score, scheduler.submit, queue.wait, dispatch, stream); each
dispatch's trace context travels in its GenerateCall to the replica, whose engine.generate span
(and vLLM's own llm_request span) continue it.

`OFF` (tracing off) is a RequestTrace whose every method is a no-op on shared objects."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from cluster.runtime.tracing import (
    OFF_CONTEXT,
    OFF_SPAN,
    Span,
    Tracer,
    TracingConfig,
    carrier,
    failed,
)

if TYPE_CHECKING:
    from serve_app.generation import GenerationInput, GenerationRecord

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"


def grpc_carrier(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The W3C trace context headers of a gRPC call's metadata."""
    return {
        k.lower(): str(v) for k, v in metadata or () if k.lower() in (TRACEPARENT, "tracestate")
    }


class IngressTracing:
    """An ingress replica's tracer: one RequestTrace per request. `exporter`: see Tracer."""

    def __init__(self, config: TracingConfig, ingress_id: str, exporter: Any = None) -> None:
        self.tracer = Tracer(config, "ingress", exporter)
        self.ingress_id = ingress_id
        logger.info("tracing %s", self.tracer.describe())

    def describe(self) -> str:
        return self.tracer.describe()

    def http(self, method: str, path: str, headers: Mapping[str, str]) -> RequestTrace:
        return RequestTrace.start(self.tracer, f"{method} {path}", headers, self.ingress_id)

    def grpc(self, rpc: str, grpc_context: Any) -> RequestTrace:
        if not self.tracer.enabled:
            return OFF
        carrier = grpc_carrier(grpc_context.invocation_metadata())
        return RequestTrace.start(self.tracer, f"gRPC {rpc}", carrier, self.ingress_id)


class RequestTrace:
    __slots__ = ("_tracer", "root", "_ended")

    def __init__(self, tracer: Tracer | None, root: Span = OFF_SPAN) -> None:
        self._tracer = tracer
        self.root = root
        self._ended = False

    @classmethod
    def start(
        cls, tracer: Tracer, name: str, headers: Mapping[str, str] | None, ingress_id: str
    ) -> RequestTrace:
        """A request's trace (OFF when tracing is off): `name` its root span's (the route),
        `headers` the client's (a `traceparent` among them is continued)."""
        if not tracer.enabled:
            return OFF
        root = tracer.root(name, headers, {"rankserve.ingress": ingress_id})
        return cls(tracer, root)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(self, name: str, attributes: dict | None = None) -> AbstractContextManager[Span]:
        """A child of the root for the `with` block (the shared no-op when off)."""
        if self._tracer is None:
            return OFF_CONTEXT
        return self._tracer.span(name, self.root, attributes)

    def carrier(self, span: Span) -> dict[str, str] | None:
        """`span`'s trace context for the replica (None when off)."""
        return carrier(span) if self._tracer is not None else None

    def refused(self, error: Any) -> None:
        """The request ended before generating (bad input, refused): `error` (an APIError)."""
        if self._tracer is None or self._ended:
            return
        status = error.status
        self.root.set_attributes({"rankserve.status": status, "rankserve.error": error.code or ""})
        if status >= 500:
            failed(self.root, error)
        self._end()

    def follow(
        self, chunks: AsyncIterator[Any], inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[Any]:
        """`chunks` (the request's stream) with a `stream` span from the first chunk to the
        last; its end ends the root span too, with the request's usage and outcome."""
        if self._tracer is None:
            return chunks
        self.root.set_attributes(
            {
                "rankserve.request_id": inp.request_id,
                "gen_ai.request.max_tokens": inp.max_tokens,
                "gen_ai.usage.input_tokens": len(inp.prompt_token_ids),
                "rankserve.slo_class": inp.slo or "",
            }
        )
        return self._follow(chunks, record)

    async def _follow(
        self, chunks: AsyncIterator[Any], record: GenerationRecord
    ) -> AsyncIterator[Any]:
        stream: Span | None = None
        n = 0
        try:
            async for chunk in chunks:
                if stream is None:
                    assert self._tracer is not None
                    stream = self._tracer.start("stream", self.root)
                n += 1
                yield chunk
        except BaseException as exc:
            # A GenerationFailed says what the client is told; below 500 it is no failure of
            # the service (a refusal, a queue deadline).
            status, code = getattr(exc, "status", 500), getattr(exc, "code", None)
            if isinstance(code, str):
                self.root.set_attributes({"rankserve.status": status, "rankserve.error": code})
            if status >= 500:
                failed(self.root, exc)
                if stream is not None:
                    failed(stream, exc)
            raise
        finally:
            tokens = len(record.output_token_ids)
            if stream is not None:
                stream.set_attributes({"rankserve.chunks": n, "gen_ai.usage.output_tokens": tokens})
                stream.end()
            self.root.set_attributes(
                {
                    "gen_ai.usage.output_tokens": tokens,
                    "gen_ai.response.finish_reasons": (record.finish_reason or "",),
                    "rankserve.dispatches": record.dispatches,
                }
            )
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.root.end()


OFF = RequestTrace(None)
