"""The one vocabulary between engines and the scheduling core: what happened to the requests an
engine holds since its last report. The simulated engine, the live replica and the tests' audit
all produce `EngineEvents`; `Scheduler.apply` consumes them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cluster.replicas import ReplicaLoad


class FinishReason(enum.Enum):
    """Why one dispatch of a request ended. STOP and LENGTH end the request (OpenAI's
    finish_reason values); SLICE returns it to the global queue with the tokens it has."""

    STOP = "stop"  # end of sequence or a stop string
    LENGTH = "length"  # the request's max_tokens
    SLICE = "slice"  # the dispatch's token budget, with more of the request to do
    ABORT = "abort"  # aborted in the engine (client gone, or the scheduler asked)
    # The scheduler ended the dispatch early to give its slot to a request it ranks ahead
    # (cluster.preemption); like SLICE, the request returns to the queue with its tokens.
    PREEMPT = "preempt"

    @property
    def ends_request(self) -> bool:
        return self in (FinishReason.STOP, FinishReason.LENGTH)


@dataclass(slots=True)
class EngineEvents:
    """News from one replica, in the order the core applies it: preemptions, starts, tokens,
    ends, failures, then the load as of the last of them."""

    replica_id: str
    load: ReplicaLoad | None = None
    preempted: list[str] = field(default_factory=list)  # evicted by the engine, to recompute
    started: list[str] = field(default_factory=list)  # first scheduled since dispatch/eviction
    tokens: dict[str, int] = field(default_factory=dict)  # request id -> new tokens
    ended: dict[str, FinishReason] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # request id -> error
    # request id -> context tokens found in the prefix cache when it was (re)admitted
    cached: dict[str, int] = field(default_factory=dict)

    @property
    def has_events(self) -> bool:
        return bool(self.preempted or self.started or self.ended or self.failed)
