"""The ingress: a Ray Serve deployment with the OpenAI-compatible HTTP API (FastAPI) and the gRPC
service of serve_app/proto/rankserve.proto, both over one GenerationPath.

HTTP: POST /v1/completions, POST /v1/chat/completions (SSE streaming with "stream": true),
GET /v1/models, GET /health (the ingress and the scheduler answer), GET /ready (an engine
replica is up), GET /status (the scheduler's view of the cluster).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from cluster.runtime.scheduler_actor import get_or_create
from predictor_actor.request_log import RequestLogEntry, RequestLogWriter
from predictor_actor.text import conversation_prompt
from serve_app import openai_protocol as oa
from serve_app.config import ServeConfig
from serve_app.generation import (
    GenerationFailed,
    GenerationInput,
    GenerationPath,
    GenerationRecord,
    check_lengths,
)
from serve_app.proto import rankserve_pb2 as pb
from serve_app.scoring import make_scorer

logger = logging.getLogger(__name__)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
STATUS_TIMEOUT_S = 5.0

api = FastAPI(title="rankserve", description="OpenAI-compatible LLM serving with global ranking")


# Helpers used by the deployment are defined above it: Serve pickles the deployment class when
# it is decorated, with the module globals that exist at that point.
def _error(e: oa.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _grpc_error(context: Any, e: oa.APIError) -> None:
    import grpc

    codes = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        404: grpc.StatusCode.NOT_FOUND,
        503: grpc.StatusCode.UNAVAILABLE,
    }
    context.set_code(codes.get(e.status, grpc.StatusCode.INTERNAL))
    context.set_details(e.message)


@serve.deployment(name="RankServeIngress", max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        self.config = ServeConfig.from_dict(config)
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.model)
        self.created = int(time.time())
        self.scheduler = get_or_create(self.config.scheduler, self.config.replica_specs())
        # A scheduler that outlived an earlier deployment takes this one's settings. Engines take
        # a while to start; readiness (/ready, Health) reports when one is up.
        self._starting = self.scheduler.reconcile.remote(
            self.config.scheduler, self.config.replica_specs()
        )
        scorer = make_scorer(self.config.predictor)
        self.scorer = scorer
        self.path = GenerationPath(self.scheduler, scorer)
        self.request_log = (
            RequestLogWriter(self.config.request_log, self.config.request_log_max_bytes)
            if self.config.request_log
            else None
        )
        logger.info(
            "ingress up: scorer=%s, policy=%s",
            scorer.describe(),
            self.config.scheduler.policy.name,
        )

    # ---- shared -----------------------------------------------------------------------------

    def _check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise oa.model_not_found(name)

    def _encode(self, text: str, chat: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as e:  # a template may refuse an odd role order
            raise oa.APIError(f"The messages cannot be rendered: {e}", param="messages") from None

    def _input(
        self,
        body: oa._Body,
        request_id: str,
        prompt_text: str,
        prompt_ids: list[int],
        max_tokens: int | None,
        default_max: int,
    ) -> GenerationInput:
        limit = self.config.engine.max_model_len
        if max_tokens is None:
            max_tokens = max(1, min(default_max, limit - len(prompt_ids)))
        check_lengths(len(prompt_ids), max_tokens, limit)
        return GenerationInput(
            request_id=request_id,
            prompt_text=prompt_text,
            prompt_token_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            ignore_eos=body.ignore_eos,
            slo=body.slo,
            tenant=body.tenant or body.user,
            priority_hint=body.priority,
        )

    def _completion_input(self, body: oa.CompletionBody) -> GenerationInput:
        self._check_model(body.model)
        if isinstance(body.prompt, str):
            text, ids = body.prompt, self._encode(body.prompt, chat=False)
        else:
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for t in body.prompt):
                raise oa.APIError(f"Token ids must be in [0, {vocab}).", param="prompt")
            text, ids = self.tokenizer.decode(body.prompt), list(body.prompt)
        return self._input(
            body, oa.new_id("cmpl"), text, ids, body.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS
        )

    def _chat_input(self, body: oa.ChatBody) -> GenerationInput:
        self._check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = self._encode(self._chat_text(messages), chat=True)
        max_tokens = (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens
        )
        return self._input(
            body,
            oa.new_id("chatcmpl"),
            conversation_prompt(messages),
            ids,
            max_tokens,
            self.config.default_max_tokens,
        )

    async def _run(
        self, inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[tuple[str, int, str | None]]:
        """(text delta, new tokens, finish reason) per chunk; logs the finished request."""
        async for chunk in self.path.stream(inp, record):
            reason = chunk.finish_reason
            yield chunk.text, len(chunk.token_ids), reason.value if reason else None
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
            )
        )

    async def _status(self) -> Any:
        return await asyncio.wait_for(self.scheduler.status.remote(), STATUS_TIMEOUT_S)

    async def check_health(self) -> None:
        """Serve's health check: the scheduler actor must answer."""
        await self._status()

    # ---- HTTP -------------------------------------------------------------------------------

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse(
            oa.models_list(self.config.model_name, self.created, self.config.engine.max_model_len)
        )

    @api.get("/health")
    async def health(self) -> JSONResponse:
        try:
            await self._status()
        except Exception as e:  # noqa: BLE001 - report, do not crash the probe
            return JSONResponse({"status": "unhealthy", "error": str(e)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @api.get("/ready")
    async def ready(self) -> JSONResponse:
        try:
            status = await self._status()
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"ready": False, "error": str(e)}, status_code=503)
        up = sum(r.alive for r in status.replicas)
        body = {"ready": status.ready, "replicas_up": up, "replicas": len(status.replicas)}
        return JSONResponse(body, status_code=200 if status.ready else 503)

    @api.get("/status")
    async def status(self) -> JSONResponse:
        return JSONResponse({**asdict(await self._status()), "scorer": self.scorer.describe()})

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._generate(request, oa.CompletionBody, self._completion_input, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._generate(request, oa.ChatBody, self._chat_input, chat=True)

    async def _generate(
        self,
        request: Request,
        body_type: type[oa._Body],
        to_input: Callable[[Any], GenerationInput],
        chat: bool,
    ) -> Any:
        try:
            body = oa.parse_body(await request.body(), body_type)
            inp = to_input(body)
        except oa.APIError as e:
            return _error(e)
        record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids))
        if body.stream:
            return self._sse(inp, record, body, chat=chat)
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
        except GenerationFailed as e:
            return _error(oa.APIError(f"Generation failed: {e}", 500, "server_error"))
        build = oa.chat_response if chat else oa.completion_response
        n = len(record.output_token_ids)
        return JSONResponse(
            build(inp.request_id, body.model, "".join(parts), finish, record.prompt_tokens, n)
        )

    def _sse(
        self, inp: GenerationInput, record: GenerationRecord, body: oa._Body, chat: bool
    ) -> StreamingResponse:
        rid, model = inp.request_id, body.model

        async def events() -> AsyncIterator[str]:
            if chat:
                yield oa.sse(oa.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
            try:
                async for text, _, reason in self._run(inp, record):
                    if chat:
                        delta = {"content": text} if text else {}
                        yield oa.sse(oa.chat_chunk(rid, model, delta, reason))
                    else:
                        yield oa.sse(oa.completion_chunk(rid, model, text, reason))
            except GenerationFailed as e:
                err = oa.APIError(f"Generation failed: {e}", 500, "server_error")
                yield oa.sse(err.body())
                return
            if body.include_usage():
                obj = "chat.completion.chunk" if chat else "text_completion"
                n = len(record.output_token_ids)
                yield oa.sse(oa.usage_chunk(rid, model, obj, record.prompt_tokens, n))
            yield oa.sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- gRPC (method names are the RPC names of rankserve.proto) ---------------------------

    def _grpc_input(self, req: pb.GenerateRequest) -> GenerationInput:
        self._check_model(req.model)
        fields: dict[str, Any] = {"model": req.model, "ignore_eos": req.ignore_eos}
        for name in ("max_tokens", "temperature", "top_p", "seed", "priority"):
            if req.HasField(name):
                fields[name] = getattr(req, name)
        if req.stop:
            fields["stop"] = list(req.stop)
        if req.slo:
            fields["slo"] = req.slo
        if req.tenant:
            fields["tenant"] = req.tenant
        if req.prompt and req.messages:
            raise oa.APIError("Give either prompt or messages, not both.", param="prompt")
        if req.messages:
            fields["messages"] = [{"role": m.role, "content": m.content} for m in req.messages]
            body = oa.validate_dict(fields, oa.ChatBody)
            return self._chat_input(body)
        if not req.prompt:
            raise oa.APIError("Give a prompt or messages.", param="prompt")
        fields["prompt"] = req.prompt
        return self._completion_input(oa.validate_dict(fields, oa.CompletionBody))

    async def Generate(self, request: pb.GenerateRequest, grpc_context: Any) -> pb.GenerateReply:
        try:
            inp = self._grpc_input(request)
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            return pb.GenerateReply()
        record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids))
        parts: list[str] = []
        finish = ""
        try:
            async for text, _, reason in self._run(inp, record):
                parts.append(text)
                finish = reason or finish
        except GenerationFailed as e:
            _grpc_error(grpc_context, oa.APIError(f"Generation failed: {e}", 500, "server_error"))
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
            inp = self._grpc_input(request)
        except oa.APIError as e:
            _grpc_error(grpc_context, e)
            raise
        record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids))
        try:
            async for text, n, reason in self._run(inp, record):
                yield pb.GenerateChunk(
                    id=inp.request_id, text=text, num_tokens=n, finish_reason=reason or ""
                )
        except GenerationFailed as e:
            _grpc_error(grpc_context, oa.APIError(f"Generation failed: {e}", 500, "server_error"))
            raise

    async def Health(self, request: pb.HealthRequest, grpc_context: Any) -> pb.HealthReply:
        try:
            status = await self._status()
        except Exception as e:  # noqa: BLE001
            _grpc_error(grpc_context, oa.APIError(f"scheduler unavailable: {e}", 503))
            return pb.HealthReply(ready=False)
        return pb.HealthReply(
            ready=status.ready,
            replicas_up=sum(r.alive for r in status.replicas),
            queued=status.queued,
            policy=status.policy,
        )
