"""Tracing (docs/tracing.md) with the SDK's InMemorySpanExporter: an ingress request trace that
continues the client's `traceparent`, its dispatch's context carried in the GenerateCall to a
real engine replica (simulated engine, in this process), whose engine.generate span continues
it; the settings' resolution from the config and the OTEL_* variables; and tracing off."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: E402
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: E402
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

from cluster.runtime.protocol import GenerateCall, SubmitRequest  # noqa: E402
from cluster.runtime.replica import EngineReplica  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, ReplicaSpec  # noqa: E402
from cluster.runtime.tracing import OFF_CONTEXT, Tracer, TracingConfig  # noqa: E402
from serve_app import openai_protocol as oa  # noqa: E402
from serve_app.config import ServeConfig  # noqa: E402
from serve_app.generation import GenerationInput, GenerationRecord  # noqa: E402
from serve_app.tracing import OFF, IngressTracing  # noqa: E402

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture
def no_otel_env(monkeypatch):
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)


def sim_replica(tracer: Tracer | None = None) -> EngineReplica:
    spec = ReplicaSpec("replica-0", "/m", replica=ReplicaConfig(kind="simulated"))
    return EngineReplica(spec, tracer=tracer)


async def serve_one(ingress: IngressTracing, replica: EngineReplica, headers: dict) -> list:
    """One request as the ingress's path makes it: a root span, the parse, one dispatch to the
    replica with the dispatch's trace context, the stream through RequestTrace.follow."""
    await replica.start()
    trace = ingress.http("POST", "/v1/completions", headers)
    with trace.span("ingress.parse"):
        inp = GenerationInput("cmpl-1", "hello", [1, 2, 3], max_tokens=5)
    record = GenerationRecord(prompt_tokens=3, trace=trace)

    async def path():
        with trace.span("dispatch", {"rankserve.replica": "replica-0"}) as span:
            submit = SubmitRequest("cmpl-1", 3, 5)
            call = GenerateCall(submit, 1, [1, 2, 3], 5, 0, True, trace_context=trace.carrier(span))
            async for chunk in replica.generate(call):
                record.output_token_ids.extend(chunk.token_ids)
                record.finish_reason = chunk.finish_reason and chunk.finish_reason.value
                yield chunk

    chunks = [c async for c in trace.follow(path(), inp, record)]
    replica.shutdown()
    return chunks


def test_one_trace_from_the_client_through_the_replica(no_otel_env, our_loggers):
    spans = InMemorySpanExporter()
    ingress = IngressTracing(TracingConfig(), "ing-1", exporter=spans)
    replica = sim_replica(Tracer(TracingConfig(), "replica", exporter=spans))
    chunks = asyncio.run(serve_one(ingress, replica, {"traceparent": TRACEPARENT}))
    assert sum(len(c.token_ids) for c in chunks) == 5

    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert set(by_name) == {"POST /v1/completions", "ingress.parse", "dispatch", "stream",
                            "engine.generate"}  # fmt: skip
    assert {format(s.context.trace_id, "032x") for s in by_name.values()} == {CLIENT_TRACE}
    root = by_name["POST /v1/completions"]
    assert format(root.parent.span_id, "016x") == CLIENT_SPAN and root.parent.is_remote
    for child in ("ingress.parse", "dispatch", "stream"):
        assert by_name[child].parent.span_id == root.context.span_id
    engine = by_name["engine.generate"]
    assert engine.parent.span_id == by_name["dispatch"].context.span_id
    assert engine.attributes["rankserve.replica"] == "replica-0"
    assert engine.attributes["gen_ai.usage.output_tokens"] == 5
    assert engine.attributes["rankserve.finish_reason"] == "length"
    assert root.attributes["rankserve.request_id"] == "cmpl-1"
    assert root.attributes["gen_ai.usage.output_tokens"] == 5
    assert root.attributes["rankserve.ingress"] == "ing-1"
    assert root.end_time >= by_name["stream"].end_time >= engine.end_time


def test_a_request_without_traceparent_starts_its_own_trace(no_otel_env):
    spans = InMemorySpanExporter()
    trace = IngressTracing(TracingConfig(), "ing-1", exporter=spans).http("POST", "/x", {})
    trace.refused(oa.APIError("bad", 400, param="prompt"))
    (root,) = spans.get_finished_spans()
    assert root.parent is None and root.attributes["rankserve.status"] == 400
    assert root.status.status_code is StatusCode.UNSET  # the client's error, not the service's


def test_a_failure_inside_marks_the_spans(no_otel_env):
    spans = InMemorySpanExporter()
    trace = IngressTracing(TracingConfig(), "ing-1", exporter=spans).http("POST", "/x", {})

    async def broken():
        yield 1
        raise RuntimeError("replica gone")

    async def consume():
        inp = GenerationInput("r", "p", [1], 1)
        async for _ in trace.follow(broken(), inp, GenerationRecord(1, trace=trace)):
            pass

    with pytest.raises(RuntimeError):
        asyncio.run(consume())
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["POST /x"].status.status_code is StatusCode.ERROR
    assert by_name["stream"].status.status_code is StatusCode.ERROR


def test_tracing_off_is_shared_no_ops(no_otel_env, our_loggers):
    ingress = IngressTracing(TracingConfig(), "ing-1")
    assert not ingress.tracer.enabled and ingress.describe() == "off"
    trace = ingress.http("POST", "/v1/completions", {"traceparent": TRACEPARENT})
    assert trace is OFF and trace.span("dispatch") is OFF_CONTEXT
    with trace.span("dispatch") as span:
        assert trace.carrier(span) is None and not span.is_recording()

    async def chunks():
        yield 1

    it = chunks()
    assert trace.follow(it, None, None) is it  # no wrapper around the stream
    replica = sim_replica()  # untraced: still streams
    assert len(asyncio.run(serve_one(ingress, replica, {}))) >= 1


def test_where_spans_go(no_otel_env):
    assert TracingConfig().exporting() is None  # off by default
    got = TracingConfig(otlp_endpoint="http://c:4317").exporting({})
    assert (got.traces_endpoint, got.protocol, got.explicit) == ("http://c:4317", "grpc", True)
    assert isinstance(got.exporter(), GrpcExporter)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL":
           "http/protobuf"}  # fmt: skip
    got = TracingConfig().exporting(env)
    assert (got.traces_endpoint, got.protocol, got.explicit) == (
        "http://c:4318/v1/traces",
        "http/protobuf",
        False,
    )
    assert isinstance(got.exporter(), HttpExporter)
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9/t"}
    assert TracingConfig(protocol="http/protobuf").exporting(env).traces_endpoint == "http://c:9/t"
    assert TracingConfig(otlp_endpoint="x:1").exporting({"OTEL_SDK_DISABLED": "true"}) is None
    assert TracingConfig(otlp_endpoint="x:1").exporting({"OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(ValueError, match="protocol"):
        TracingConfig(protocol="thrift")
    # The serve config's section reaches every replica's spec.
    config = ServeConfig.from_dict(
        {"model": "/m", "tracing": {"otlp_endpoint": "http://c:4318", "protocol": "http/protobuf"}}
    )
    assert {s.tracing for s in config.replica_specs()} == {config.tracing}
    assert config.tracing.exporting({}).traces_endpoint == "http://c:4318/v1/traces"
