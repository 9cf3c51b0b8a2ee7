"""`python -m benchmarks.tracing_cost`: what the tracing code costs a request (docs/tracing.md),
off (the default) and on. It runs the ingress's instrumented path in this process: a request
trace started from a client's `traceparent`, its parse span, GenerationPath.stream (score,
submit, a queue wait and a dispatch per slice, each dispatch's trace context put in its
GenerateCall) and RequestTrace.follow over the chunks, with the scheduler actor and the replica
answered at once by in-process stand-ins, so that what is timed is the path's own work. "On"
records every span through the SDK into an in-memory exporter: the request's share; the OTLP
encoding and sending happen later on the batch processor's thread and are not in it. The
replica's engine.generate span (one per dispatch) is not timed here."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks.report import update_section
from cluster.events import FinishReason
from cluster.runtime.protocol import GenerateCall, Ticket, TokenChunk
from cluster.runtime.tracing import TracingConfig
from serve_app.generation import GenerationInput, GenerationPath, GenerationRecord
from serve_app.scoring import HeuristicScorer
from serve_app.tracing import IngressTracing

TRACEPARENT = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


class _Ready:
    """An object reference whose value is there already."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self):
        return self.value
        yield  # noqa: B901 - a generator, as __await__ must be


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def options(self, **_: Any) -> _Method:
        return self

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)


class _Replica:
    """Streams a dispatch's tokens at once, one a chunk; the last ends the slice or request."""

    def __init__(self) -> None:
        self.generate = _Method(self._generate)

    async def _generate(self, call: GenerateCall):
        for i in range(call.max_new_tokens):
            end = i == call.max_new_tokens - 1
            reason = call.length_reason() if end else None
            yield _Ready(TokenChunk([0], " tok", reason))


class _Scheduler:
    """Admits every request and dispatches it at once, `slice_tokens` at a time."""

    def __init__(self, slice_tokens: int) -> None:
        self.slice = slice_tokens
        self.replica = _Replica()
        for name in ("submit", "heartbeat", "abort"):
            setattr(self, name, _Method(self._nothing))
        self.wait_dispatch = _Method(self._dispatch)

    async def _nothing(self, *_: Any) -> None:
        return None

    async def _dispatch(self, submit: Any, after: int, delivered: int) -> Ticket:
        left = submit.max_tokens - delivered
        budget = min(self.slice, left)
        final = budget == left
        return Ticket(submit.request_id, after + 1, "replica-0", self.replica, 0, budget, final)


async def _requests(tracing: IngressTracing, n: int, tokens: int, slice_tokens: int) -> float:
    """Seconds per request of the instrumented path, over `n` requests one after another."""
    path = GenerationPath(_Scheduler(slice_tokens), HeuristicScorer(), "bench")
    began = time.perf_counter()
    for i in range(n):
        trace = tracing.http("POST", "/v1/completions", TRACEPARENT)
        with trace.span("ingress.parse"):
            inp = GenerationInput(f"cmpl-{i}", "hello there", [1, 2, 3], tokens)
        record = GenerationRecord(prompt_tokens=3, trace=trace)
        got = 0
        async for chunk in trace.follow(path.stream(inp, record), inp, record):
            got += len(chunk.token_ids)
        assert got == tokens and record.finish_reason == FinishReason.LENGTH.value
    return (time.perf_counter() - began) / n


def measure(n: int, tokens: int, slice_tokens: int, rounds: int) -> dict[str, float]:
    """Median microseconds per request, tracing off and on (rounds alternate)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    modes = {
        "off": IngressTracing(TracingConfig(), "bench"),
        "on": IngressTracing(TracingConfig(), "bench", exporter=spans),
    }
    assert not modes["off"].tracer.enabled and modes["on"].tracer.enabled
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, tracing in modes.items():
            times[mode].append(asyncio.run(_requests(tracing, n, tokens, slice_tokens)))
            spans.clear()
    return {m: statistics.median(t) * 1e6 for m, t in times.items()}


def off_calls_ns(dispatches: int, n: int = 100_000) -> float:
    """Nanoseconds per request of the tracing calls alone, tracing off, as the path makes
    them: what the off switch leaves of the instrumentation."""
    tracing = IngressTracing(TracingConfig(), "bench")
    assert not tracing.tracer.enabled
    stream = object()
    runs = []
    for _ in range(7):
        began = time.perf_counter()
        for _ in range(n):
            trace = tracing.http("POST", "/v1/completions", TRACEPARENT)
            for name in ("ingress.parse", "predictor.score", "scheduler.submit"):
                with trace.span(name) as span:
                    span.set_attribute("x", 1)
            for d in range(dispatches):
                with trace.span("queue.wait", {"rankserve.dispatch_no": d + 1}):
                    pass
                with trace.span("dispatch", {"rankserve.dispatch_no": d + 1}) as span:
                    trace.carrier(span)
            trace.follow(stream, None, None)
        runs.append((time.perf_counter() - began) / n * 1e9)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--slice-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    us = measure(args.requests, args.tokens, args.slice_tokens, args.rounds)
    dispatches = -(-args.tokens // args.slice_tokens)
    spans = 5 + 2 * dispatches  # root, parse, score, submit, stream + queue wait, dispatch each
    off_ns = off_calls_ns(dispatches)
    lines = [
        f"Per request of {args.tokens} tokens, one a chunk, in {dispatches} dispatches "
        f"({spans} ingress spans when on); median of {args.rounds} rounds of "
        f"{args.requests} requests:",
        "",
        "| tracing | the instrumented path | tracing's share |",
        "|---|---|---|",
        f"| off | {us['off']:.1f} us | - |",
        f"| on | {us['on']:.1f} us | +{us['on'] - us['off']:.1f} us |",
        "",
        f"Tracing off, the tracing calls alone that such a request makes (the trace, "
        f"{spans - 1} `with` blocks, {dispatches} carriers, the stream left unwrapped): "
        f"{off_ns:.0f} ns per request (median of 7 runs of 100,000).",
    ]
    body = "### Tracing: the cost of the instrumentation\n\n" + "\n".join(lines)
    print(body)
    update_section("tracing_cost", body)


if __name__ == "__main__":
    main()
