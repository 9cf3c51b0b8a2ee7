"""The ingress: a Ray Serve deployment with the OpenAI-compatible HTTP API (FastAPI) and the gRPC
service of serve_app/proto/rankserve.proto, both over one GenerationPath.

HTTP: POST /v1/completions, POST /v1/chat/completions (SSE streaming with "stream": true),
GET /v1/models, GET /health (the ingress and the scheduler answer), GET /ready (an engine
replica is up), GET /status (the scheduler's view of the cluster), GET /metrics (Prometheus).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from cluster.runtime.log_setup import configure_logging
from cluster.runtime.scheduler_handle import get_or_create
from predictor_actor.request_log import RequestLogEntry, RequestLogWriter
from serve_app import openai_protocol as oa
from serve_app.auth import APIKeys
from serve_app.config import ServeConfig
from serve_app.front_door import FrontDoor
from serve_app.generation import (
    GenerationFailed,
    GenerationInput,
    GenerationPath,
    GenerationRecord,
)
from serve_app.http_api import make_app
from serve_app.metrics import CONTENT_TYPE, ingress_metrics
from serve_app.proto import rankserve_pb2 as pb
from serve_app.request_input import RequestInputs
from serve_app.scoring import make_scorer
from serve_app.tracing import IngressTracing

logger = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0
_REFUSAL_TYPES = {429: "rate_limit_error", 408: "timeout_error"}  # OpenAI error types


# No /docs or /redoc (a CDN); /openapi.json documents the bodies and errors, behind the key.
api = make_app()


# Helpers used by the deployment are defined above it: Serve pickles the deployment class when
# it is decorated, with the module globals that exist at that point.
SLO_HEADER = "x-rankserve-slo-class"


def _error(e: oa.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())


def _grpc_error(context: Any, e: oa.APIError) -> None:
    import grpc

    codes = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        404: grpc.StatusCode.NOT_FOUND,
        408: grpc.StatusCode.DEADLINE_EXCEEDED,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE,
    }
    context.set_code(codes.get(e.status, grpc.StatusCode.INTERNAL))
    context.set_details(e.message)
    if e.retry_after_s is not None:
        context.set_trailing_metadata([("retry-after", e.headers()["Retry-After"])])


@serve.deployment(name="RankServeIngress", max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        self.config = ServeConfig.from_dict(config)
        configure_logging(self.config.logging, "ingress", ingress_id := uuid.uuid4().hex[:12])
        self.tracing = IngressTracing(self.config.tracing, ingress_id)
        self.front_door = FrontDoor(APIKeys(self.config.auth), self.config.limits)
        self.inputs = RequestInputs(self.config, AutoTokenizer.from_pretrained(self.config.model))
        self.created = int(time.time())
        self.scheduler = get_or_create(
            self.config.scheduler, self.config.replica_specs(), logs=self.config.logging
        )
        # A scheduler that outlived an earlier deployment takes this one's settings. Engines take
        # a while to start; readiness (/ready, Health) reports when one is up.
        self._starting = self.scheduler.reconcile.remote(
            self.config.scheduler, self.config.replica_specs()
        )
        self.scorer = scorer = make_scorer(self.config.predictor, self.config.logging)
        self.path = GenerationPath(self.scheduler, scorer, ingress_id, self.config.engine)
        self.metrics = ingress_metrics(self.config.metrics, self.path.ingress_id)
        self.request_log = (
            RequestLogWriter(self.config.request_log, self.config.request_log_max_bytes)
            if self.config.request_log
            else None
        )
        logger.info(
            "ingress up: scorer=%s, policy=%s, API keys %s",
            scorer.describe(),
            self.config.scheduler.policy.name,
            self.front_door.keys.describe(),
        )

    # ---- shared -----------------------------------------------------------------------------

    async def _run(
        self, inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[tuple[str, int, str | None]]:
        """(text delta, new tokens, finish reason) per chunk; logs the finished request. Every
        failure comes out as an APIError the front ends can say (never a traceback)."""
        chunks = record.trace.follow(self.path.stream(inp, record), inp, record)
        try:
            async for chunk in self.metrics.track(chunks, record):
                reason = chunk.finish_reason
                yield chunk.text, len(chunk.token_ids), reason.value if reason else None
        except GenerationFailed as e:
            logger.warning(
                "%s failed after %d tokens: %s", inp.request_id, len(record.output_token_ids), e
            )
            if e.status in _REFUSAL_TYPES:  # admission control: the client may come back
                kind, after = _REFUSAL_TYPES[e.status], e.retry_after_s
                raise oa.APIError(
                    str(e), e.status, kind, code=e.code, retry_after_s=after
                ) from None
            raise oa.APIError(
                f"Generation failed: {oa.short(str(e))}", e.status, "server_error", code=e.code
            ) from None
        except Exception:
            logger.exception("%s: internal error", inp.request_id)
            raise oa.APIError(
                f"Internal error serving {inp.request_id}; the server has logged it.",
                500,
                "server_error",
                code="internal_error",
            ) from None
        self._log(inp, record)

    def _log(self, inp: GenerationInput, record: GenerationRecord) -> None:
        if self.request_log is None or record.finished is None:
            return
        self.request_log.write(
            RequestLogEntry(
                prompt=inp.prompt_text,
                output_tokens=len(record.output_token_ids),
                model=self.config.model_name,
                arrival_time=record.arrival,
                finish_time=record.finished,
                first_token_time=record.first_token,
                prompt_tokens=record.prompt_tokens,
                id=inp.request_id,
                finish_reason=record.finish_reason or "stop",
                max_tokens=inp.max_tokens,
                score=record.score,
                predicted_tokens=record.predicted_tokens,
                dispatches=record.dispatches,
                scheduler_preemptions=record.preemptions,
                prefills=[list(p) for p in record.prefills],
            )
        )

    async def _status(self) -> Any:
        return await asyncio.wait_for(self.scheduler.status.remote(), STATUS_TIMEOUT_S)

    # ---- HTTP -------------------------------------------------------------------------------

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse(
            oa.models_list(self.config.model_name, self.created, self.config.engine.max_model_len)
        )

    def _degraded(self) -> list[str]:
        """What serves on a fallback now, with why (requests are served either way)."""
        reason = self.scorer.degraded()
        return [reason] if reason else []

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """Liveness: this ingress answers. (Whether it can serve is /ready.)"""
        return JSONResponse({"status": "ok", "degraded": self._degraded()})

    @api.get("/ready")
    async def ready(self) -> JSONResponse:
        try:
            status = await self._status()
        except TimeoutError:
            body = {"ready": False, "error": "the scheduler is starting, or too busy to answer"}
            return JSONResponse({**body, "degraded": self._degraded()}, status_code=503)
        except Exception as e:  # noqa: BLE001 - the scheduler is away (Ray restarts it)
            body = {"ready": False, "error": f"scheduler unavailable: {type(e).__name__}"}
            return JSONResponse({**body, "degraded": self._degraded()}, status_code=503)
        up = sum(r.alive for r in status.replicas)
        body = {
            "ready": status.ready,
            "replicas_up": up,
            "replicas": len(status.replicas),
            "degraded": self._degraded(),
        }
        return JSONResponse(body, status_code=200 if status.ready else 503)

    @api.get("/status")
    async def status(self) -> JSONResponse:
        try:
            body = asdict(await self._status())
        except Exception as e:  # noqa: BLE001 - the scheduler is away (Ray restarts it)
            err = oa.APIError(f"scheduler unavailable: {type(e).__name__}", 503, "server_error")
            return _error(err)
        return JSONResponse(
            {**body, "scorer": self.scorer.describe(), "degraded": self._degraded()}
        )

    @api.get("/metrics")
    async def metrics_text(self) -> Response:
        """Prometheus' text format: this ingress's request metrics, the scheduler's and the
        predictor's (docs/metrics.md)."""
        text = await self.metrics.scrape(
            self.scheduler.status.remote(), self.scorer.health(), self.scorer.degraded() is not None
        )
        return Response(text, media_type=CONTENT_TYPE)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._generate(request, oa.CompletionBody, self.inputs.completion, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._generate(request, oa.ChatBody, self.inputs.chat, chat=True)

    async def _generate(
        self,
        request: Request,
        body_type: type[oa._Body],
        to_input: Callable[[Any], GenerationInput],
        chat: bool,
    ) -> Any:
        trace = self.tracing.http(request.method, request.url.path, request.headers)
        try:
            raw = await request.body()
            with trace.span("ingress.parse"):
                body, inp = await self.inputs.from_http(
                    raw, body_type, to_input, request.headers.get(SLO_HEADER)
                )
        except oa.APIError as e:
            trace.refused(e)
            return _error(e)
        record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids), trace=trace)
        if body.stream:
            return await self._sse(inp, record, body, chat=chat)
        return await self._unary(inp, record, body, chat=chat)

    async def _unary(
        self, inp: GenerationInput, record: GenerationRecord, body: oa._Body, chat: bool
    ) -> JSONResponse:
        parts: list[str] = []
        finish = None
        try:
            async for text, _, reason in self._run(inp, record):
                parts.append(text)
                finish = reason
        except oa.APIError as e:
            return _error(e)
        build = oa.chat_response if chat else oa.completion_response
        n = len(record.output_token_ids)
        return JSONResponse(
            build(inp.request_id, body.model, "".join(parts), finish, record.prompt_tokens, n)
        )

    async def _sse(
        self, inp: GenerationInput, record: GenerationRecord, body: oa._Body, chat: bool
    ) -> JSONResponse | StreamingResponse:
        rid, model = inp.request_id, body.model
        chunks = self._run(inp, record)
        # The response's status waits for the first chunk: a request refused by admission
        # control, or dropped at its queue deadline, is answered 429 / 408 (not 200 and an
        # error event). The queue's bounds bound that wait.
        try:
            first = [await anext(chunks)]
        except oa.APIError as e:
            return _error(e)
        except StopAsyncIteration:
            first = []

        async def rest() -> AsyncIterator[tuple[str, int, str | None]]:
            for chunk in first:
                yield chunk
            async for chunk in chunks:
                yield chunk

        async def events() -> AsyncIterator[str]:
            if chat:
                yield oa.sse(oa.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
            try:
                async for text, _, reason in rest():
                    if chat:
                        delta = {"content": text} if text else {}
                        yield oa.sse(oa.chat_chunk(rid, model, delta, reason))
                    else:
                        yield oa.sse(oa.completion_chunk(rid, model, text, reason))
            except oa.APIError as e:
                yield oa.sse_error(e)  # and no [DONE]: the stream ends here, said why
                return
            if body.include_usage():
                obj = "chat.completion.chunk" if chat else "text_completion"
                n = len(record.output_token_ids)
                yield oa.sse(oa.usage_chunk(rid, model, obj, record.prompt_tokens, n))
            yield oa.sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- gRPC (method names are the RPC names of rankserve.proto) ---------------------------

    async def _grpc_input(
        self, name: str, request: pb.GenerateRequest, grpc_context: Any
    ) -> tuple[GenerationInput, GenerationRecord]:
        self.front_door.check_grpc(grpc_context)  # before a trace: no spans for the keyless
        trace = self.tracing.grpc(name, grpc_context)
        try:
            with trace.span("ingress.parse"):
                inp = await self.inputs.from_grpc(request)
        except oa.APIError as e:
            trace.refused(e)
            raise
        return inp, GenerationRecord(prompt_tokens=len(inp.prompt_token_ids), trace=trace)

    async def Generate(self, request: pb.GenerateRequest, grpc_context: Any) -> pb.GenerateReply:
        try:
            inp, record = await self._grpc_input("Generate", request, grpc_context)
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            return pb.GenerateReply()
        parts: list[str] = []
        finish = ""
        try:
            async for text, _, reason in self._run(inp, record):
                parts.append(text)
                finish = reason or finish
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            return pb.GenerateReply()
        return pb.GenerateReply(
            id=inp.request_id,
            text="".join(parts),
            finish_reason=finish,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=len(record.output_token_ids),
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, grpc_context: Any
    ) -> AsyncIterator[pb.GenerateChunk]:
        # A streaming call keeps the status set on its context only if it then raises.
        try:
            inp, record = await self._grpc_input("GenerateStream", request, grpc_context)
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            raise
        try:
            async for text, n, reason in self._run(inp, record):
                yield pb.GenerateChunk(
                    id=inp.request_id, text=text, num_tokens=n, finish_reason=reason or ""
                )
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            raise

    async def Health(self, request: pb.HealthRequest, grpc_context: Any) -> pb.HealthReply:
        try:
            self.front_door.check_grpc(grpc_context)
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            return pb.HealthReply(ready=False)
        try:
            status = await self._status()
        except Exception as e:  # noqa: BLE001
            error = oa.APIError(f"scheduler unavailable: {type(e).__name__}", 503)
            _grpc_error(grpc_context, error)
            return pb.HealthReply(ready=False)
        return pb.HealthReply(
            ready=status.ready,
            replicas_up=sum(r.alive for r in status.replicas),
            queued=status.queued,
            policy=status.policy,
            degraded=self._degraded(),
        )
