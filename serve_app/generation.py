"""One request's path through the cluster, independent of the wire protocol: score it, submit it
to the scheduler actor, wait for its dispatch, stream its tokens straight from the chosen replica,
and, when a slice ends or a replica dies, wait for the next dispatch and continue there with the
tokens generated so far. A caller that stops iterating (client gone) aborts the request
everywhere, which frees its slot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cluster.events import FinishReason
from cluster.runtime.protocol import GenerateCall, SubmitRequest, TokenChunk
from serve_app.openai_protocol import APIError
from serve_app.scoring import Scorer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationInput:
    request_id: str
    prompt_text: str  # what the predictor scores and the request log keeps
    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    slo: str | None = None
    tenant: str | None = None
    priority_hint: int | None = None


@dataclass(slots=True)
class GenerationRecord:
    """What happened to one request, for the request log and the response's usage."""

    prompt_tokens: int
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    arrival: float = field(default_factory=time.time)
    first_token: float | None = None
    finished: float | None = None
    dispatches: int = 0
    score: float | None = None
    predicted_tokens: float | None = None


class GenerationFailed(RuntimeError):
    pass


def check_lengths(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """The same limits vLLM enforces, checked before anything is queued."""
    if max_tokens < 1:
        raise APIError("max_tokens must be at least 1.", param="max_tokens")
    if prompt_tokens < 1:
        raise APIError("The prompt is empty.", param="prompt")
    if prompt_tokens + max_tokens > max_model_len:
        raise APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} in the completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if prompt_tokens < max_model_len else "prompt",
            code="context_length_exceeded",
        )


_RAY_GONE: tuple[type[BaseException], ...] = ()


def _replica_gone_errors() -> tuple[type[BaseException], ...]:
    global _RAY_GONE  # noqa: PLW0603 - a cache of imported exception types, not state
    if not _RAY_GONE:
        from ray.exceptions import ActorUnavailableError, RayActorError

        _RAY_GONE = (RayActorError, ActorUnavailableError)
    return _RAY_GONE


class GenerationPath:
    """Shared by the HTTP and gRPC front ends of one ingress replica."""

    def __init__(self, scheduler: Any, scorer: Scorer) -> None:
        self.scheduler = scheduler
        self.scorer = scorer

    async def stream(
        self, inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[TokenChunk]:
        """Yield the request's token chunks; the last one carries its finish reason (STOP or
        LENGTH). Raises GenerationFailed if the cluster gave up on it."""
        score = await self.scorer.score(inp.prompt_text)
        record.score, record.predicted_tokens = score.score, score.predicted_tokens
        submit = SubmitRequest(
            request_id=inp.request_id,
            prompt_tokens=len(inp.prompt_token_ids),
            max_tokens=inp.max_tokens,
            score=score.score,
            predicted_tokens=score.predicted_tokens,
            slo=inp.slo,
            tenant=inp.tenant,
            priority_hint=inp.priority_hint,
        )
        await self.scheduler.submit.remote(submit)
        done = False
        try:
            async for chunk in self._dispatches(inp, record):
                yield chunk
            done = True
        finally:
            if not done:
                # Client gone or failure: make sure the scheduler forgets the request and the
                # replica's slot is freed (the replica aborts when its stream is cancelled).
                with contextlib.suppress(Exception):
                    self.scheduler.abort.remote(inp.request_id)

    async def _dispatches(
        self, inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[TokenChunk]:
        after = 0
        generated = record.output_token_ids
        while True:
            # The scheduler continues from what this caller holds (the record of what was
            # delivered), and decides the dispatch's budget and whether it is a slice.
            ticket = await self.scheduler.wait_dispatch.remote(
                inp.request_id, after, len(generated)
            )
            if ticket.error is not None:
                raise GenerationFailed(ticket.error)
            after = ticket.dispatch_no
            record.dispatches += 1
            call = GenerateCall(
                request_id=inp.request_id,
                dispatch_no=ticket.dispatch_no,
                prompt_token_ids=inp.prompt_token_ids + generated,
                max_new_tokens=ticket.max_new_tokens,
                priority=ticket.priority,
                final=ticket.final,
                ignore_eos=inp.ignore_eos,
                temperature=inp.temperature,
                top_p=inp.top_p,
                seed=inp.seed,
                stop=inp.stop,
            )
            stream = ticket.replica.generate.options(num_returns="streaming").remote(call)
            try:
                async for ref in stream:
                    chunk: TokenChunk = await ref
                    if chunk.token_ids and record.first_token is None:
                        record.first_token = time.time()
                    generated.extend(chunk.token_ids)
                    reason = chunk.finish_reason
                    if reason is not None and reason.ends_request:
                        record.finish_reason = reason.value
                        record.finished = time.time()
                        yield chunk
                        return
                    if reason is FinishReason.ABORT:
                        raise GenerationFailed("aborted by the engine")
                    if chunk.token_ids or chunk.text:
                        yield TokenChunk(chunk.token_ids, chunk.text, None)
                    if reason is FinishReason.SLICE:
                        break  # back in the global queue: wait for the next dispatch
            except _replica_gone_errors() as exc:
                logger.warning(
                    "%s: replica %s lost mid-stream (%s); continuing elsewhere",
                    inp.request_id,
                    ticket.replica_id,
                    type(exc).__name__,
                )
                gone = await self.scheduler.replica_failed.remote(ticket.replica_id)
                if not gone:
                    # The replica lives but lost this stream: nothing will requeue the request.
                    raise GenerationFailed(f"stream from {ticket.replica_id} broke") from exc
            except (asyncio.CancelledError, GeneratorExit):
                import ray

                with contextlib.suppress(Exception):
                    ray.cancel(stream)
                raise
