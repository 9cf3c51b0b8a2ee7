"""Learning to rank (Fu et al. 2024): shortest predicted answer first, by the predictor's score,
with the paper's starvation prevention.

A request's starvation counter is the number of engine rounds it has spent queued: each
scheduling round (one in which some replica had room) of a cluster of N serving replicas counts
1/N. The paper counts the rounds of one engine's queue; a cluster of N replicas runs about N
scheduling rounds for every one of a single engine at the same load per replica, so that a raw
count would promote after 1/N of the wait it means (on 4 x 32 slots of the Azure conversation
trace, a raw threshold of 200 scheduled nearly as FCFS does). When the counter reaches
`starvation_threshold` the request is promoted ahead of every score for `priority_quantum`
engine rounds; then it is demoted and its counter starts again from zero. A promoted request
that is dispatched runs a slice of `priority_quantum` tokens at top priority and then returns to
the queue, ranked by its score again: the paper's "promoted for a quantum, then demoted", which
guarantees progress without letting a long request hold a slot it would not get by rank. The
scheduler lengthens a slice whose resume would cost more than `slice_max_overhead` of its engine
time (`cluster.preemption.slice_tokens`): the queue behind it holds its KV only while nothing
else needs the blocks.

Rounds bound no wait in seconds: under a sustained overload a long request is outranked by every
new short one, and progresses by one quantum per `starvation_threshold` engine rounds, so its
latency grows with its length (admission control bounds the queue's drain time, not the wait of
a request that the ranking keeps passing over). `ltr_max_wait_s` adds a bound in seconds: a
request queued longer than that since its arrival is overdue, and overdue requests go ahead of
every promoted one and every score, oldest first, each to its end (no quantum slice).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

from cluster.policies.base import PROMOTED_PRIORITY, LazyHeap, RequestQueue
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import PolicyConfig


class LTRQueue(RequestQueue):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self._by_score = LazyHeap()
        # Engine rounds so far: exact (a Fraction once a round is shared by several replicas),
        # so that a threshold of T is reached after exactly T * N rounds of N replicas.
        self.engine_round: int | Fraction = 0
        self._arm_round: dict[int, int | Fraction] = {}  # id -> engine round of its promotion
        self._arm_heap: list[tuple[int | Fraction, int, Request]] = []
        self._promoted: dict[int, Request] = {}  # insertion order = promotion order
        self._promoted_until: dict[int, int | Fraction] = {}
        self._demote_heap: list[tuple[int | Fraction, int, Request]] = []
        self._by_arrival: list[tuple[float, int, Request]] = []  # for overdue ones (lazy)
        self._overdue: dict[int, Request] = {}  # insertion order = arrival order

    def key(self, request: Request) -> float:
        if request.score is None:
            raise ValueError(
                f"ltr policy needs a predictor score for {request.request_id}: give the workload "
                "scores or a predictor model"
            )
        return request.score

    def add(self, request: Request, now: float) -> None:
        self._by_score.push(request, self.key(request))
        self._arm(request, self.engine_round + self.config.starvation_threshold)
        if self.config.ltr_max_wait_s is not None:
            heapq.heappush(self._by_arrival, (request.arrival_time, request.seq, request))

    def _arm(self, request: Request, at_round: int | Fraction) -> None:
        self._arm_round[id(request)] = at_round
        heapq.heappush(self._arm_heap, (at_round, request.seq, request))

    def remove(self, request: Request) -> None:
        rid = id(request)
        self._by_score.discard(request)
        self._arm_round.pop(rid, None)
        self._promoted.pop(rid, None)
        self._promoted_until.pop(rid, None)
        self._overdue.pop(rid, None)

    def __len__(self) -> int:
        return len(self._by_score)

    def __contains__(self, request: Request) -> bool:
        return request in self._by_score

    def starvation_counter(self, request: Request) -> int | Fraction:
        """Engine rounds since the request was queued or last demoted (0 while promoted)."""
        rid = id(request)
        if rid in self._promoted or rid in self._overdue:
            return 0
        return self.engine_round - (self._arm_round[rid] - self.config.starvation_threshold)

    def is_promoted(self, request: Request) -> bool:
        return id(request) in self._promoted or id(request) in self._overdue

    def is_overdue(self, request: Request) -> bool:
        return id(request) in self._overdue

    def begin_round(self, now: float, replicas: int = 1) -> None:
        super().begin_round(now, replicas)
        self.engine_round += 1 if replicas == 1 else Fraction(1, replicas)
        now_round = self.engine_round
        quantum, threshold = self.config.priority_quantum, self.config.starvation_threshold
        demote = self._demote_heap
        while demote and demote[0][0] <= now_round:
            until, _, request = heapq.heappop(demote)
            rid = id(request)
            if self._promoted_until.get(rid) != until:
                continue
            del self._promoted[rid], self._promoted_until[rid]
            self._arm(request, now_round + threshold)
        arm = self._arm_heap
        while arm and arm[0][0] <= now_round:
            at_round, _, request = heapq.heappop(arm)
            rid = id(request)
            if self._arm_round.get(rid) != at_round:
                continue
            del self._arm_round[rid]
            self._promoted[rid] = request
            self._promoted_until[rid] = now_round + quantum
            heapq.heappush(demote, (now_round + quantum, request.seq, request))
        self._mark_overdue(now)

    def _mark_overdue(self, now: float) -> None:
        max_wait = self.config.ltr_max_wait_s
        by_arrival = self._by_arrival
        while max_wait is not None and by_arrival and by_arrival[0][0] + max_wait <= now:
            _, _, request = heapq.heappop(by_arrival)
            rid = id(request)
            if request in self._by_score and rid not in self._overdue:  # else: left the queue
                self._overdue[rid] = request
                self._promoted.pop(rid, None)
                self._promoted_until.pop(rid, None)
                self._arm_round.pop(rid, None)

    def ordered(self, now: float) -> Iterator[Request]:
        overdue = list(self._overdue.values())
        yield from overdue
        promoted = list(self._promoted.values())
        yield from promoted
        for request in self._by_score.ordered():
            if id(request) not in self._promoted and id(request) not in self._overdue:
                yield request

    def priority(self, request: Request, now: float) -> float:
        return PROMOTED_PRIORITY if self.is_promoted(request) else self.key(request)

    def slice_limit(self, request: Request) -> int | None:
        return self.config.priority_quantum if id(request) in self._promoted else None
