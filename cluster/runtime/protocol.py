"""The messages between the ingress, the scheduler actor and the engine replicas, and the one
interface every engine implements inside a replica.

    ingress --SubmitRequest--> scheduler actor --Ticket--> ingress
    ingress --GenerateCall (carrying the SubmitRequest)--> replica --TokenChunk stream--> ingress
    replica --ReplicaReport (EngineEvents, numbered)--> scheduler actor
    scheduler actor --snapshot()--> replica: ReplicaSnapshot (what it runs, after a restart)

Every dispatch carries its request's SubmitRequest, and every ingress keeps its own, so that a
restarted scheduler can rebuild its state from the replicas and the ingresses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cluster.admission import Refusal
from cluster.events import EngineEvents, FinishReason
from cluster.replicas import ReplicaLoad
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.runtime.spec import ReplicaSpec


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """A new request, scored, as the ingress hands it to the scheduler actor (which builds the
    core's Request, with the arrival time on its own clock)."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    score: float | None = None  # rank score: higher means a longer predicted answer
    predicted_tokens: float | None = None
    slo: str | None = None
    tenant: str | None = None
    priority_hint: int | None = None
    ingress_id: str = ""  # the ingress holding the client; its lease lapsing aborts the request
    arrival_wall: float = 0.0  # time.time() when the ingress took the request
    # Chained hashes of the prompt's full KV blocks (cluster.prefix_blocks.token_block_hashes)
    # of `hash_block_size` tokens each, for prefix-cache-aware routing; () when not computed.
    block_hashes: tuple[int, ...] = ()
    hash_block_size: int | None = None  # None: the replicas' block size

    def to_request(self, arrival: float, generated: int) -> Request:
        """The core's request, arrived at `arrival` on the scheduler's clock, with `generated`
        tokens so far."""
        request = Request(
            request_id=self.request_id,
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.max_tokens,
            arrival_time=arrival,
            score=self.score,
            predicted_tokens=self.predicted_tokens,
            slo=self.slo,
            tenant=self.tenant,
            priority_hint=self.priority_hint,
            block_hashes=self.block_hashes or None,
            hash_block_size=self.hash_block_size,
        )
        request.generated = generated
        return request


@dataclass(frozen=True, slots=True)
class DispatchState:
    """One dispatch a replica is serving, as far as it has got: enough to rebuild the
    scheduler's picture of the request."""

    submit: SubmitRequest
    dispatch_no: int
    generated: int  # tokens of the request so far: earlier dispatches' and this one's
    started: bool  # the engine has produced a token of this dispatch


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """Events numbered per replica (`seq`), so that a scheduler that rebuilt itself from a
    snapshot drops the reports the snapshot already covers. `dispatches` describes each request
    that started in these events, for a scheduler that does not know it yet."""

    events: EngineEvents
    seq: int
    dispatches: tuple[DispatchState, ...] = ()


@dataclass(frozen=True, slots=True)
class Ticket:
    """The scheduler's answer to `wait_dispatch`: run the request on `replica` for at most
    `max_new_tokens`, with vLLM priority `priority`; `final` when that budget reaches the
    request's own end. Or, when `error` is set, stop; when `finished`, the request ended whole
    (its caller may already hold all of it)."""

    request_id: str
    dispatch_no: int  # 1 for the first dispatch, then 2, 3... (slices, replica failures)
    replica_id: str | None = None
    replica: Any = None  # the replica's actor handle
    priority: int = 0
    max_new_tokens: int = 0
    final: bool = True
    error: str | None = None
    refusal: Refusal | None = None  # set with `error` when admission control dropped it
    finished: bool = False


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What a started replica tells the scheduler about its capacity."""

    replica_id: str
    max_num_seqs: int
    total_kv_blocks: int
    block_size: int
    max_model_len: int
    max_num_batched_tokens: int


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    replica_id: str
    spec: Any  # the ReplicaSpec it was started with
    info: ReplicaInfo
    load: ReplicaLoad
    seq: int  # the last report it made: everything up to it is in this snapshot
    dispatches: tuple[DispatchState, ...]
    node_id: str = ""  # the Ray node it runs on


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """One dispatch, as the ingress hands it to the replica."""

    submit: SubmitRequest
    dispatch_no: int  # the scheduler's dispatch number: engine ids stay unique across slices
    prompt_token_ids: list[int]  # the prompt, plus the tokens generated by earlier slices
    max_new_tokens: int
    priority: int
    final: bool  # the ticket's: reaching max_new_tokens ends the request, not just a slice
    ignore_eos: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # The W3C trace context (`traceparent`) of the ingress's span of this dispatch; None when
    # the request is not traced.
    trace_context: dict[str, str] | None = None

    @property
    def request_id(self) -> str:
        return self.submit.request_id

    @property
    def generated_before(self) -> int:
        """Tokens of the request generated by earlier dispatches (part of the context)."""
        return len(self.prompt_token_ids) - self.submit.prompt_tokens

    @property
    def engine_request_id(self) -> str:
        return f"{self.request_id}#{self.dispatch_no}"

    def length_reason(self) -> FinishReason:
        """What reaching max_new_tokens means for this dispatch."""
        return FinishReason.LENGTH if self.final else FinishReason.SLICE


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """New tokens of one request; `finish_reason` is set on the last chunk of a dispatch."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    # On a dispatch's first tokens, where the engine says: the context tokens it found in its
    # prefix cache (the rest of the context was computed again).
    cached_tokens: int | None = None


class Engine(Protocol):
    """What a replica hosts. `on_step` is called after every engine step (the replica reports
    to the scheduler from there)."""

    def __init__(self, spec: ReplicaSpec, on_step: Callable[[], None]) -> None: ...

    async def start(self) -> ReplicaInfo: ...

    def generate(self, call: GenerateCall) -> AsyncIterator[TokenChunk]: ...

    async def abort(self, engine_request_id: str) -> None: ...

    def load(self) -> tuple[int, int, int]:
        """(running, waiting, free KV blocks) as of the engine's last step."""
        ...

    def shutdown(self) -> None: ...
