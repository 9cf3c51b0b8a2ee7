"""A scheduling decision, as the engines receive it."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.request import Request

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
