"""A scheduling decision, as the engines receive it, and what making one does to the request and
the replica's view."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.replicas import ReplicaView
from cluster.request import Request, RequestState

_INT64_MAX = 2**62


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A decision: run `request` on `replica_id` for at most `max_new_tokens` tokens. `final`:
    the budget reaches the request's own end, so the engine's length limit is the request's
    (else the dispatch is a slice and the request comes back to the queue)."""

    request: Request
    replica_id: str
    priority: int  # vLLM's priority (lower first): the global order, carried into the engine
    max_new_tokens: int
    final: bool


def engine_priority(value: float) -> int:
    """vLLM takes an integer priority; keep three decimals of the policy's key."""
    return max(-_INT64_MAX, min(_INT64_MAX, round(value * 1000)))


def dispatch(request: Request, view: ReplicaView, budget: int, priority: float) -> Dispatch:
    """Send `request` to `view`'s replica for `budget` tokens at the policy's `priority`: it is
    dispatched there, and its prompt's blocks are pending on the view until the replica's
    reports show them."""
    request.transition(RequestState.DISPATCHED)
    request.replica_id = view.replica_id
    request.num_dispatches += 1
    request.dispatch_start_tokens, request.dispatch_priority = request.generated, priority
    view.assign(request.request_id, view.blocks_for(request.context))
    final = budget >= request.remaining_tokens
    return Dispatch(request, view.replica_id, engine_priority(priority), budget, final=final)
