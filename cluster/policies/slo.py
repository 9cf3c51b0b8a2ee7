"""SLO-aware order (Huang et al. 2025): the queue's order and each replica's concurrency limit
are searched by simulated annealing to maximise G = (requests meeting their SLO) / (sum of
latencies); see `cluster.slo_search` for the latency model, the moves and the schedule.

A plan is made before a scheduling round whenever the queue changed since the last one
(arrivals, dispatches, requests back from a slice): warm-started from the previous plan, with
the requests that arrived since inserted at their earliest-deadline-first place, or from the
most-on-time order built anew when that scores better, and bounded by the configured
iterations and wall time. Between plans the order stands."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from cluster.calibration import LogRatioCalibration
from cluster.latency_model import LatencyModel, quantized_context
from cluster.policies.base import RequestQueue
from cluster.request import Request
from cluster.slo_search import Problem
from cluster.slo_search import plan as search_plan

if TYPE_CHECKING:
    from cluster.config import PolicyConfig, SLOClass, SLOConfig
    from cluster.replicas import ReplicaView

_INF = math.inf
RATE_WINDOW_S = 10.0  # the arrival rate the concurrency limits must keep up with, measured over


def _bounds(c: SLOClass) -> tuple[float, float, float]:
    return (
        c.e2e_s if c.e2e_s is not None else _INF,
        c.ttft_s if c.ttft_s is not None else _INF,
        c.tpot_s if c.tpot_s is not None else _INF,
    )


def _require_prediction(request: Request) -> None:
    if request.predicted_tokens is None:
        raise ValueError(
            f"slo policy needs a predicted output length for {request.request_id}: give "
            "the workload predicted_tokens, a length predictor, or true lengths"
        )


class SLOQueue(RequestQueue):
    def __init__(self, config: PolicyConfig, slos: SLOConfig, latency: LatencyModel) -> None:
        super().__init__(config)
        self.slos = slos
        self.latency = latency
        self.search = config.slo_search
        self._rng = random.Random(self.search.seed)
        self._members: dict[int, Request] = {}
        self._order: list[Request] = []  # the last plan, best first (may hold removed ones)
        self._new: list[Request] = []  # queued since the last plan
        self._fresh: set[int] = set()  # their ids
        self._rank: dict[int, int] = {}
        self._limits: dict[str, int] = {}
        self._arrivals: deque[float] = deque()  # arrival times of the last RATE_WINDOW_S
        self._lengths = LogRatioCalibration()  # per SLO class
        self._steps = LogRatioCalibration()  # the profile's decode step against measured TPOT
        self._batches: dict[str, int] = {}  # per replica, what it held at the last plan
        self._dirty = False

    @classmethod
    def create(
        cls, config: PolicyConfig, slos: SLOConfig, latency: LatencyModel | None
    ) -> SLOQueue:
        return cls(config, slos, latency or LatencyModel.named(config.slo_search.profile))

    def add(self, request: Request, now: float) -> None:
        _require_prediction(request)  # fail at once, not at the next plan
        self._members[id(request)] = request
        if request.num_dispatches == 0:
            self._arrivals.append(request.arrival_time)
        # A request back from a slice may still sit in the last plan: it is placed anew.
        if id(request) not in self._fresh:
            self._fresh.add(id(request))
            self._new.append(request)
        self._dirty = True

    def finished(self, request: Request) -> None:
        if request.predicted_tokens is not None:
            predicted = min(request.predicted_tokens, request.max_tokens)
            self._lengths.record(self.slos.get(request.slo).name, predicted, request.generated)
        first, end = request.first_token_time, request.finish_time
        if first is not None and end is not None and request.generated >= 2:
            batch = self._batches.get(request.replica_id or "")
            if batch is not None:
                tpot = (end - first) / (request.generated - 1)
                context = request.prompt_tokens + request.generated // 2
                self._steps.record("step", self.latency.decode_step_s(batch, context), tpot)

    def _predicted_total(self, request: Request) -> float:
        """Its whole answer's length as predicted, scaled by its class's served lengths."""
        if request.predicted_tokens is None:
            return float(request.max_tokens)
        scaled = request.predicted_tokens * self._lengths.factor(self.slos.get(request.slo).name)
        return float(max(request.generated, min(scaled, request.max_tokens)))

    def _predicted_remaining(self, request: Request) -> float:
        return max(1.0, self._predicted_total(request) - request.generated)

    def remove(self, request: Request) -> None:
        if self._members.pop(id(request), None) is not None:
            self._dirty = True

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, request: Request) -> bool:
        return id(request) in self._members

    def wants_plan(self, now: float) -> bool:
        return self._dirty

    def _deadline(self, request: Request) -> float:
        return self.slos.get(request.slo).first_token_deadline(request.arrival_time)

    def _warm_start(self) -> list[Request]:
        order = [r for r in self._order if id(r) in self._members and id(r) not in self._fresh]
        deadlines = np.array([self._deadline(r) for r in order], dtype=float)
        for request in sorted(
            (r for r in self._new if id(r) in self._members),
            key=lambda r: (self._deadline(r), r.seq),
        ):
            d = self._deadline(request)
            later = np.flatnonzero(deadlines > d)
            at = int(later[0]) if later.size else len(order)
            order.insert(at, request)
            deadlines = np.insert(deadlines, at, d)
        return order

    def plan(self, now: float, replicas: list[tuple[ReplicaView, list[Request]]]) -> None:
        start = time.perf_counter()
        order = self._warm_start()
        views = [v for v, _ in replicas]
        held = [(i, r) for i, (_, rs) in enumerate(replicas) for r in rs]
        self._batches = {v.replica_id: max(1, len(rs)) for v, rs in replicas}
        problem = self._problem(now, order, views, held)
        lo = self.search.min_concurrency
        limits = np.array(
            [
                min(v.max_num_seqs, max(lo, self._limits.get(v.replica_id, v.max_num_seqs)))
                for v in views
            ],
            dtype=np.int64,
        )
        result = search_plan(problem, limits, self.search, self._rng, started=start)
        self._order = [order[i] for i in result.order]
        self._rank = {id(r): k for k, r in enumerate(self._order)}
        self._limits = {v.replica_id: int(c) for v, c in zip(views, result.limits, strict=True)}
        self._new, self._fresh = [], set()
        self._dirty = False
        self.plans += 1
        self.plan_s += time.perf_counter() - start

    def _problem(
        self,
        now: float,
        order: list[Request],
        views: list[ReplicaView],
        held: list[tuple[int, Request]],
    ) -> Problem:
        q_bounds = np.array([_bounds(self.slos.get(r.slo)) for r in order]).reshape(-1, 3)
        r_bounds = np.array([_bounds(self.slos.get(r.slo)) for _, r in held]).reshape(-1, 3)
        speed = self._steps.factor("step")  # the engines against their profile, as measured
        prefill = speed * np.array(
            [self.latency.prefill_s(r.prompt_tokens + r.generated) for r in order]
        )
        tokens = np.array([self._predicted_remaining(r) for r in order])
        run_tokens = np.array([self._predicted_remaining(r) for _, r in held])
        run_ttft = np.array(
            [
                r.first_token_time - r.arrival_time
                if r.first_token_time is not None
                else now - r.arrival_time + speed * self.latency.prefill_s(r.prompt_tokens)
                for _, r in held
            ]
        )
        # The context a decode step reads: the mean over what runs (else what waits), halfway
        # through each answer.
        pool = [r for _, r in held] or order
        context = (
            sum(r.prompt_tokens + r.generated for r in pool) / len(pool)
            + float(np.mean(run_tokens if held else tokens)) / 2
            if pool
            else 0.0
        )
        context_q = quantized_context(context)
        # What a request holds in KV at its end: its prompt and whole predicted answer.
        mean_tokens = (
            float(np.mean([r.prompt_tokens + self._predicted_total(r) for r in pool]))
            if pool
            else 1.0
        )
        return Problem(
            now=now,
            arrival=np.array([r.arrival_time for r in order], dtype=float),
            prefill_s=prefill.astype(float),
            tokens=tokens.astype(float),
            e2e_bound=q_bounds[:, 0],
            ttft_bound=q_bounds[:, 1],
            tpot_bound=q_bounds[:, 2],
            weight=np.array([self.slos.get(r.slo).weight for r in order], dtype=float),
            run_replica=np.array([i for i, _ in held], dtype=np.int64),
            run_elapsed=np.array([now - r.arrival_time for _, r in held], dtype=float),
            run_ttft=run_ttft.astype(float),
            run_tokens=run_tokens.astype(float),
            run_e2e_bound=r_bounds[:, 0],
            run_ttft_bound=r_bounds[:, 1],
            run_tpot_bound=r_bounds[:, 2],
            run_weight=np.array([self.slos.get(r.slo).weight for _, r in held], dtype=float),
            max_seqs=np.array([v.max_num_seqs for v in views], dtype=np.int64),
            step_s=lambda _r, batch: speed * self.latency.decode_step_s(batch, context_q),
            arrival_rate=self._arrival_rate(now),
            kv_seqs=np.array(
                [v.total_kv_blocks * v.block_size / max(1.0, mean_tokens) for v in views]
            ),
        )

    def _arrival_rate(self, now: float) -> float:
        while self._arrivals and self._arrivals[0] < now - RATE_WINDOW_S:
            self._arrivals.popleft()
        if not self._arrivals:
            return 0.0
        return len(self._arrivals) / max(1.0, min(RATE_WINDOW_S, now - self._arrivals[0]))

    def ordered(self, now: float) -> Iterator[Request]:
        members, fresh = self._members, self._fresh
        planned = [r for r in self._order if id(r) not in fresh]
        for request in [*planned, *self._new]:
            if id(request) in members:
                yield request

    def priority(self, request: Request, now: float) -> float:
        return float(self._rank.get(id(request), len(self._order)))

    def concurrency_limit(self, replica_id: str) -> int | None:
        return self._limits.get(replica_id)
