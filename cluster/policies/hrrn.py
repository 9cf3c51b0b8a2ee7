"""Highest response ratio next (as in Magnus, Cheng et al. 2024): ratio =
(wait + predicted service) / predicted service, highest first. Short jobs go early, and a long
job's ratio grows while it waits, so nothing starves.

The order changes with time, so it is recomputed for every round, vectorised over the queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from cluster.policies.base import RequestQueue
from cluster.policies.ssjf import predicted_service_s
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import PolicyConfig

# Rounds rarely dispatch many requests: sort only the best few first, the rest if asked for.
_FIRST_BATCH = 64


class HRRNQueue(RequestQueue):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self._requests: list[Request] = []
        self._index: dict[int, int] = {}
        self._arrival = np.empty(1024)
        self._service = np.empty(1024)
        self._seq = np.empty(1024, dtype=np.int64)

    def add(self, request: Request, now: float) -> None:
        i = len(self._requests)
        if i == len(self._arrival):
            self._arrival = np.resize(self._arrival, 2 * i)
            self._service = np.resize(self._service, 2 * i)
            self._seq = np.resize(self._seq, 2 * i)
        self._requests.append(request)
        self._index[id(request)] = i
        self._arrival[i] = request.arrival_time
        self._service[i] = predicted_service_s(request, self.config)
        self._seq[i] = request.seq

    def remove(self, request: Request) -> None:
        i = self._index.pop(id(request), None)
        if i is None:
            return
        last = len(self._requests) - 1
        if i != last:  # swap the last into the hole
            moved = self._requests[last]
            self._requests[i] = moved
            self._index[id(moved)] = i
            self._arrival[i] = self._arrival[last]
            self._service[i] = self._service[last]
            self._seq[i] = self._seq[last]
        self._requests.pop()

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request: Request) -> bool:
        return id(request) in self._index

    def ratio(self, request: Request, now: float) -> float:
        i = self._index[id(request)]
        return (now - self._arrival[i] + self._service[i]) / self._service[i]

    def ordered(self, now: float) -> Iterator[Request]:
        n = len(self._requests)
        if n == 0:
            return
        service = self._service[:n]
        # Negated so that argsort's ascending order is highest ratio first; seq breaks ties.
        neg_ratio = -(now - self._arrival[:n] + service) / service
        seq = self._seq[:n]
        snapshot = list(self._requests)

        def by_ratio_then_seq(idx: np.ndarray) -> np.ndarray:
            return idx[np.lexsort((seq[idx], neg_ratio[idx]))]

        k = min(_FIRST_BATCH, n)
        if k == n:
            yield from (snapshot[i] for i in by_ratio_then_seq(np.arange(n)))
            return
        # The first batch takes every request tied with the k-th best ratio: a cut through a
        # tie would let later arrivals overtake earlier ones with the same ratio.
        kth = np.partition(neg_ratio, k - 1)[k - 1]
        yield from (snapshot[i] for i in by_ratio_then_seq(np.flatnonzero(neg_ratio <= kth)))
        yield from (snapshot[i] for i in by_ratio_then_seq(np.flatnonzero(neg_ratio > kth)))

    def priority(self, request: Request, now: float) -> float:
        return -self.ratio(request, now)
