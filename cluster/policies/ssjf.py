"""Speculative shortest job first (Qiu et al. 2024): order by predicted execution time
(predicted tokens x per-token time + a constant). Aging: a request that has waited more than
`ssjf_max_wait_s`, or more than `ssjf_wait_factor` times its predicted time, goes first, in the
order in which they aged."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cluster.policies.base import PROMOTED_PRIORITY, LazyHeap, RequestQueue
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import PolicyConfig


def predicted_service_s(request: Request, config: PolicyConfig) -> float:
    if request.predicted_tokens is None:
        raise ValueError(
            f"{config.name} policy needs a predicted output length for {request.request_id}: "
            "give the workload predicted_tokens, a length predictor, or true lengths"
        )
    # What is left of it: a request back from a slice has done part of its predicted work.
    remaining = max(1.0, request.predicted_tokens - request.generated)
    return remaining * config.per_token_time_s + config.base_time_s


class SSJFQueue(RequestQueue):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self._by_time = LazyHeap()
        self._deadline: dict[int, float] = {}
        self._deadline_heap: list[tuple[float, int, Request]] = []
        self._aged: dict[int, Request] = {}  # insertion order = order in which they aged

    def add(self, request: Request, now: float) -> None:
        service = predicted_service_s(request, self.config)
        self._by_time.push(request, service)
        max_wait = min(self.config.ssjf_max_wait_s, self.config.ssjf_wait_factor * service)
        deadline = request.arrival_time + max_wait
        self._deadline[id(request)] = deadline
        heapq.heappush(self._deadline_heap, (deadline, request.seq, request))

    def remove(self, request: Request) -> None:
        self._by_time.discard(request)
        self._deadline.pop(id(request), None)
        self._aged.pop(id(request), None)

    def __len__(self) -> int:
        return len(self._by_time)

    def __contains__(self, request: Request) -> bool:
        return request in self._by_time

    def _age(self, now: float) -> None:
        # Strictly over the bound, as the rule says: at exactly the bound a request has not aged.
        heap = self._deadline_heap
        while heap and heap[0][0] < now:
            deadline, _, request = heapq.heappop(heap)
            if self._deadline.get(id(request)) == deadline:
                del self._deadline[id(request)]
                self._aged[id(request)] = request

    def is_aged(self, request: Request, now: float) -> bool:
        self._age(now)
        return id(request) in self._aged

    def ordered(self, now: float) -> Iterator[Request]:
        self._age(now)
        yield from list(self._aged.values())
        for request in self._by_time.ordered():
            if id(request) not in self._aged:
                yield request

    def priority(self, request: Request, now: float) -> float:
        if self.is_aged(request, now):
            return PROMOTED_PRIORITY
        return self._by_time.key(request)
