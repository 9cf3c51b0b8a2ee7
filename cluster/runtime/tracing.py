"""OpenTelemetry tracing for the processes of the service (the ingress, the engine replicas):
where spans go (`TracingConfig`, the Serve config's `tracing` section, or the standard OTEL_*
variables of the process), and one `Tracer` per process that makes them and carries their W3C
trace context across processes (a `traceparent` carrier).

Off unless an OTLP endpoint is configured: then every call here returns shared no-op objects
(docs/benchmarks.md has what that costs). The OTLP exporters are imported only when tracing is
on. Each Tracer has its own TracerProvider: nothing here sets OpenTelemetry's global one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROTOCOLS = ("grpc", "http/protobuf")
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_HTTP_TRACES_PATH = "/v1/traces"

Span = trace.Span
OFF_SPAN: Span = trace.INVALID_SPAN  # what spans are when tracing is off: every method a no-op
OFF_CONTEXT: AbstractContextManager[Span] = nullcontext(OFF_SPAN)  # a `with` of no span
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Where spans go. Unset, each process falls back on its own OTEL_EXPORTER_OTLP_* variables;
    with no endpoint anywhere tracing is off."""

    # e.g. http://collector:4317 (grpc) or http://collector:4318 (http/protobuf; /v1/traces is
    # added to an endpoint without a path, as for OTEL_EXPORTER_OTLP_ENDPOINT).
    otlp_endpoint: str | None = None
    protocol: str | None = None  # grpc | http/protobuf; None: OTEL_EXPORTER_OTLP_PROTOCOL or grpc
    service_name: str = "rankserve"  # OTEL_SERVICE_NAME wins where it is set
    engine_spans: bool = True  # vLLM's own request spans too (its otlp_traces_endpoint)

    def __post_init__(self) -> None:
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"tracing.protocol must be one of {', '.join(PROTOCOLS)}")

    def exporting(self, env: Mapping[str, str] | None = None) -> Exporting | None:
        """The export in effect in a process with environment `env` (default: this one's);
        None: tracing is off there."""
        env = os.environ if env is None else env
        if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return None
        if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
            return None
        protocol = self.protocol or next((env[v] for v in _PROTOCOL_VARS if env.get(v)), "grpc")
        if protocol not in PROTOCOLS:
            raise ValueError(f"OTLP protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.otlp_endpoint:
            return Exporting(_traces_url(self.otlp_endpoint, protocol), protocol, explicit=True)
        if env.get(_ENDPOINT_VARS[0]):
            return Exporting(env[_ENDPOINT_VARS[0]], protocol, explicit=False)
        if env.get(_ENDPOINT_VARS[1]):
            return Exporting(_traces_url(env[_ENDPOINT_VARS[1]], protocol), protocol, False)
        return None


def _traces_url(endpoint: str, protocol: str) -> str:
    if protocol == "http/protobuf" and urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + _HTTP_TRACES_PATH
    return endpoint


@dataclass(frozen=True, slots=True)
class Exporting:
    traces_endpoint: str  # as the exporter (and vLLM's otlp_traces_endpoint) takes it
    protocol: str
    explicit: bool  # from the config; else the exporter reads OTEL_* itself (headers too)

    def exporter(self) -> Any:
        endpoint = self.traces_endpoint if self.explicit else None
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            # Plain text unless https:// (as vLLM's exporter, and collectors' default 4317)
            insecure = not endpoint.startswith("https://") if endpoint else None
            return OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)


class Tracer:
    """This process's spans. `exporter`: export to it synchronously instead of batching to OTLP
    (tests give the SDK's InMemorySpanExporter)."""

    def __init__(
        self,
        config: TracingConfig,
        component: str,
        exporter: Any = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.exporting = config.exporting(env)
        self._provider: Any = None
        self._tracer: Any = None
        if exporter is None and self.exporting is None:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        attributes = {"rankserve.component": component}
        if not (env or os.environ).get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = config.service_name
        self._provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is not None:
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            assert self.exporting is not None
            self._provider.add_span_processor(BatchSpanProcessor(self.exporting.exporter()))
        self._tracer = self._provider.get_tracer("rankserve")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def describe(self) -> str:
        if self.exporting is None:
            return "off" if self._tracer is None else "on (in-process exporter)"
        return f"OTLP {self.exporting.protocol} to {self.exporting.traces_endpoint}"

    def root(
        self, name: str, carrier: Mapping[str, str] | None, attributes: dict[str, Any]
    ) -> Span:
        """A request's root span, continuing the caller's trace where `carrier` has a W3C
        `traceparent` (a new trace otherwise). Started; end it with `.end()`."""
        if self._tracer is None:
            return OFF_SPAN
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        return self._tracer.start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )

    def span(
        self, name: str, parent: Span | Mapping[str, str] | None, attributes: dict | None = None
    ) -> AbstractContextManager[Span]:
        """A child of `parent` (a span of this process, or the carrier of another's) for the
        `with` block. An exception through it marks the span failed; a cancellation (the client
        went away) marks it `rankserve.cancelled`."""
        if self._tracer is None or parent is None:
            return OFF_CONTEXT
        return self._child(name, parent, attributes)

    def start(self, name: str, parent: Span, attributes: dict | None = None) -> Span:
        """A child of `parent`, started; end it with `.end()`."""
        if self._tracer is None:
            return OFF_SPAN
        context = trace.set_span_in_context(parent)
        return self._tracer.start_span(name, context=context, attributes=attributes)

    @contextmanager
    def _child(
        self, name: str, parent: Span | Mapping[str, str], attributes: dict | None
    ) -> Iterator[Span]:
        if isinstance(parent, Mapping):
            context = _PROPAGATOR.extract(parent)
        else:
            context = trace.set_span_in_context(parent)
        span = self._tracer.start_span(name, context=context, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        if self._provider is not None:
            self._provider.shutdown()


def carrier(span: Span) -> dict[str, str] | None:
    """`span`'s W3C trace context (`traceparent`) for a call to another process; None when it
    is not recorded."""
    if not span.is_recording():
        return None
    out: dict[str, str] = {}
    _PROPAGATOR.inject(out, trace.set_span_in_context(span))
    return out


def failed(span: Span, exc: BaseException) -> None:
    """Mark `span` with how it ended: cancelled (the client went away) or failed."""
    import asyncio

    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        span.set_attribute("rankserve.cancelled", True)
        return
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
