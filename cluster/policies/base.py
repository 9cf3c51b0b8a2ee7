"""The global request queue. Each policy is a queue whose iteration order is the policy."""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import PolicyConfig, SLOConfig
    from cluster.latency_model import LatencyModel
    from cluster.replicas import ReplicaView

# Priority given to promoted (starving or aged) requests: ahead of any policy key.
PROMOTED_PRIORITY = -1e12


class RequestQueue(ABC):
    """Queued requests in dispatch order.

    `ordered(now)` yields best-first; the caller may `remove` yielded requests during or after
    the iteration. `begin_round()` marks one scheduling round in which replicas had room, and
    how many replicas serve (LTR's starvation counter counts a round as 1/N engine rounds).
    """

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.round = 0
        self.plans = 0  # `plan` calls, and the wall time they took (policies that search)
        self.plan_s = 0.0

    @classmethod
    def create(
        cls, config: PolicyConfig, slos: SLOConfig, latency: LatencyModel | None
    ) -> RequestQueue:
        """The queue for a scheduler with these SLO classes and latency model (None: the
        policy's own); only the SLO-aware policies read them."""
        return cls(config)

    def wants_plan(self, now: float) -> bool:
        """Whether `plan` should run before this round (policies that search an order)."""
        return False

    def plan(  # noqa: B027 - an optional hook: only policies whose wants_plan is true plan
        self, now: float, replicas: list[tuple[ReplicaView, list[Request]]]
    ) -> None:
        """Recompute the order from the replicas and what each holds (dispatched or running)."""

    def finished(self, request: Request) -> None:  # noqa: B027 - an optional hook
        """`request` was served to its end (policies that learn from what was served)."""

    def concurrency_limit(self, replica_id: str) -> int | None:
        """Most requests the policy lets the replica hold at once; None: its own limit."""
        return None

    def begin_round(self, now: float, replicas: int = 1) -> None:
        """One scheduling round of a cluster of `replicas` serving replicas."""
        self.round += 1

    @abstractmethod
    def add(self, request: Request, now: float) -> None: ...

    @abstractmethod
    def remove(self, request: Request) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, request: Request) -> bool: ...

    @abstractmethod
    def ordered(self, now: float) -> Iterator[Request]: ...

    @abstractmethod
    def priority(self, request: Request, now: float) -> float:
        """Lower runs first. Passed to the engine so that its local order follows ours."""

    def slice_limit(self, request: Request) -> int | None:
        """Most tokens the request may generate in its next dispatch; None: no policy limit."""
        return None


class LazyHeap:
    """A min-heap of requests by a fixed key, with O(log n) lazy removal and non-destructive
    ordered iteration (popped entries that were not removed are pushed back afterwards)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Request]] = []
        self._live: dict[int, tuple[float, int]] = {}  # id(request) -> (key, push token)
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request: Request) -> bool:
        return id(request) in self._live

    def push(self, request: Request, key: float) -> None:
        # A fresh token per push: an old entry of a request queued again must stay dead.
        token = next(self._tokens)
        self._live[id(request)] = (key, token)
        heapq.heappush(self._heap, (key, request.seq, token, request))

    def discard(self, request: Request) -> None:
        self._live.pop(id(request), None)

    def key(self, request: Request) -> float:
        return self._live[id(request)][0]

    def _is_live(self, entry: tuple[float, int, int, Request]) -> bool:
        live = self._live.get(id(entry[3]))
        return live is not None and live[1] == entry[2]

    def ordered(self) -> Iterator[Request]:
        heap, popped = self._heap, []
        try:
            while heap:
                entry = heapq.heappop(heap)
                if not self._is_live(entry):
                    continue
                popped.append(entry)
                yield entry[3]
        finally:
            for entry in popped:
                if self._is_live(entry):
                    heapq.heappush(heap, entry)


class StaticKeyQueue(RequestQueue):
    """A queue ordered by a key fixed when the request is queued."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self._heap = LazyHeap()

    @abstractmethod
    def key(self, request: Request) -> float: ...

    def add(self, request: Request, now: float) -> None:
        self._heap.push(request, self.key(request))

    def remove(self, request: Request) -> None:
        self._heap.discard(request)

    def __len__(self) -> int:
        return len(self._heap)

    def __contains__(self, request: Request) -> bool:
        return request in self._heap

    def ordered(self, now: float) -> Iterator[Request]:
        return self._heap.ordered()

    def priority(self, request: Request, now: float) -> float:
        return self.key(request)
