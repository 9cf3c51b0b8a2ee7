"""The `slo` policy's search (Huang et al. 2025): simulated annealing over the order of the
queued requests and each replica's concurrency limit, maximising G = n / t, where n is the
(weighted) number of requests expected to meet their SLO and t the sum of all their expected
latencies, queued and running. A request whose SLO is already lost still adds its latency to
t, so the search keeps moving it forward instead of starving it.

Latency model (per plan, `Problem`): each replica r runs up to c_r requests, each decode step
taking tau_r = step(c_r) (`LatencyModel`); a queued request's work is its prefill plus its
predicted tokens times the slot-weighted mean tau. Waiting is a fluid estimate: the first F
requests in the order take the free slots at once; the k-th after them waits for the queued
work before it to drain through the M = sum(c_r) slots. The running requests' remaining work
is not added: while the slots stay full, the work in service is about the same at any time
(as one request ends another starts), so the queue moves at M slot-seconds per second from
the first slot that frees. (Adding it made every queued request look a mean residual late,
9 s with 1,024 slots on the mix of docs/benchmarks.md, so that every TTFT looked lost.)
The warm start comes from `most_on_time` when it scores better than the last plan. Only the first `horizon` positions are reordered: reordering
them leaves the work ahead of every later request, hence its latency, unchanged, so an order
move costs O(horizon) whatever the queue's length; a concurrency move re-evaluates all.

Moves, each proposal drawn at random:
  swap       two positions of the horizon, near each other (within 8) half the time: local
             reordering, which is where most of G is won once the warm start is good;
  insert     one request taken out and put back earlier or later: promotes a request about to
             lose its SLO past several others in one step, which swaps would need a chain for;
  limit      one replica's concurrency limit times or over 1.25 (at least +-1), within
             [min_concurrency, max_num_seqs]: fewer running requests give a faster step
             (TPOT bounds) at the cost of waiting, the batch-size search of the paper. A
             lower limit must still complete 1.25x the recent arrival rate (or 90% of what
             the full limits complete, when those cannot keep up): the model sees only the
             requests here now, and without this floor lowered the limits at 0.6x load, so
             that the arrivals queued (89.7% attainment against fcfs's 99.7%).
Temperature: the change in G is taken relative to the best G so far (scale-free: G is in
1/seconds and varies with load), accepted when it improves, else with probability
exp(delta / T); T falls geometrically from 2% to 0.01% over the iteration budget, so early
proposals that lose a couple of per cent are taken (to leave a local optimum) and the last
ones are greedy. Stopping: the iteration budget, or the wall-time budget (checked before each
proposal; without one the search is deterministic for a seed). The best plan seen is kept.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cluster.config import SLOSearchConfig

T_START = 0.02
T_END = 1e-4
NEAR = 8
LIMIT_STEP = 1.25
ARRIVAL_HEADROOM = 1.25  # limits must serve this many times the recent arrival rate...
FULL_SHARE = 0.9  # ...or, when not even the full limits can, this share of their throughput


@dataclass(slots=True)
class Problem:
    """One plan's inputs: queued requests (index order = the warm start), running requests,
    and the replicas. Bounds are +inf where a class has none."""

    now: float
    arrival: np.ndarray  # queued
    prefill_s: np.ndarray
    tokens: np.ndarray  # predicted tokens still to generate
    e2e_bound: np.ndarray
    ttft_bound: np.ndarray
    tpot_bound: np.ndarray
    weight: np.ndarray
    run_replica: np.ndarray  # running: replica index of each
    run_elapsed: np.ndarray  # now - arrival
    run_ttft: np.ndarray  # their TTFT (measured, or estimated when not yet started)
    run_tokens: np.ndarray  # predicted tokens still to generate
    run_e2e_bound: np.ndarray
    run_ttft_bound: np.ndarray
    run_tpot_bound: np.ndarray
    run_weight: np.ndarray
    max_seqs: np.ndarray  # per replica
    step_s: Callable[[int, int], float]  # (replica, batch) -> decode step time
    arrival_rate: float = 0.0  # requests/s arriving lately: the limits must keep up with it
    kv_seqs: np.ndarray | None = None  # per replica: how many mean requests its KV cache holds


@dataclass(frozen=True, slots=True)
class Plan:
    order: np.ndarray  # indices into the problem's queued arrays, best first
    limits: np.ndarray  # per replica
    objective: float
    iterations: int
    elapsed_s: float


class _Evaluator:
    """G of an order and limits; the fixed parts (suffix, running) cached per limits."""

    def __init__(self, p: Problem, horizon: int) -> None:
        self.p = p
        self.n = len(p.arrival)
        self.h = min(horizon, self.n)
        self.wait0 = p.now - p.arrival
        self.running_per_replica = np.bincount(p.run_replica, minlength=len(p.max_seqs))
        # The most a limit may be: beyond what the KV cache holds, the engine only queues (or
        # preempts) in its own order, where the plan's order no longer reaches.
        self.cap = (
            p.max_seqs.copy()
            if p.kv_seqs is None
            else np.clip(p.kv_seqs.astype(np.int64), 1, p.max_seqs)
        )
        self.full_throughput = self.throughput(self.cap)

    def tau(self, limits: np.ndarray) -> np.ndarray:
        return np.array([self.p.step_s(r, int(c)) for r, c in enumerate(limits)])

    def tau_mean(self, limits: np.ndarray) -> float:
        """The slot-weighted mean decode step at these limits."""
        return float((limits * self.tau(limits)).sum()) / float(limits.sum())

    def throughput(self, limits: np.ndarray) -> float:
        """Requests/s these limits complete, each replica c_r at a time, the mean request's
        work (mean prefill and tokens of what waits, else of what runs) at its step time."""
        p = self.p
        tokens = p.tokens if len(p.tokens) else p.run_tokens
        if not len(tokens):
            return math.inf
        prefill = float(p.prefill_s.mean()) if len(p.prefill_s) else 0.0
        return float((limits / (prefill + float(tokens.mean()) * self.tau(limits))).sum())

    def keeps_up(self, limits: np.ndarray) -> bool:
        """Whether lowering the limits to these leaves room for the arrivals: a lower limit
        speeds the steps of what runs, and the latency model, seeing only the requests here
        now, would always take it, while the arrivals still to come would queue behind it."""
        need = min(ARRIVAL_HEADROOM * self.p.arrival_rate, FULL_SHARE * self.full_throughput)
        return self.throughput(limits) >= need

    def fixed(self, order: np.ndarray, limits: np.ndarray) -> tuple[float, float, float]:
        """(n, t) of the running requests and of the queued ones past the horizon, with the
        mean tau, for these limits."""
        p = self.p
        tau_mean = self.tau_mean(limits)
        # What runs now keeps its batch until it drains: a lower limit only slows admissions.
        held = np.maximum(limits, self.running_per_replica)
        run_tau = self.tau(held)[p.run_replica] if len(p.run_replica) else np.zeros(0)
        run_e2e = p.run_elapsed + p.run_tokens * run_tau
        run_met = (
            (run_e2e <= p.run_e2e_bound)
            & (p.run_ttft <= p.run_ttft_bound)
            & (run_tau <= p.run_tpot_bound)
        )
        n = float((p.run_weight * run_met).sum())
        t = float(run_e2e.sum())
        if self.h < self.n:
            idx = order
            work = p.prefill_s[idx] + p.tokens[idx] * tau_mean
            ahead = np.concatenate(([0.0], np.cumsum(work)[:-1]))
            h = self.h
            n2, t2 = self._score(idx[h:], work[h:], ahead[h:], limits, tau_mean, first=h)
            n, t = n + n2, t + t2
        return n, t, tau_mean

    def _score(self, idx, work, ahead, limits, tau_mean, first: int = 0):
        p = self.p
        free = int(np.maximum(0, limits - self.running_per_replica).sum())
        pos = np.arange(first, first + len(idx))
        wait = np.where(pos < free, 0.0, ahead / float(limits.sum()))
        e2e = self.wait0[idx] + wait + work
        ttft = self.wait0[idx] + wait + p.prefill_s[idx]
        met = (
            (e2e <= p.e2e_bound[idx])
            & (ttft <= p.ttft_bound[idx])
            & (tau_mean <= p.tpot_bound[idx])
        )
        return float((p.weight[idx] * met).sum()), float(e2e.sum())

    def prefix(self, head: np.ndarray, limits, tau_mean: float):
        work = self.p.prefill_s[head] + self.p.tokens[head] * tau_mean
        ahead = np.concatenate(([0.0], np.cumsum(work)[:-1]))
        return self._score(head, work, ahead, limits, tau_mean)


def score(p: Problem, order: np.ndarray, limits: np.ndarray) -> tuple[float, float]:
    """(n, t) of this order and these limits: the weighted count of requests expected to meet
    their SLO and the sum of all expected latencies (the whole queue evaluated)."""
    ev = _Evaluator(p, len(order))
    n, t, tau_mean = ev.fixed(order, limits)
    n2, t2 = ev.prefix(order, limits, tau_mean)
    return n + n2, t + t2


def objective(p: Problem, order: np.ndarray, limits: np.ndarray) -> float:
    """G = n / t of this order and these limits."""
    n, t = score(p, order, limits)
    return n / t if t > 0 else 0.0


def most_on_time(p: Problem, limits: np.ndarray, slack_reserve: float = 0.5) -> np.ndarray:
    """An order that meets as many SLOs as the latency model allows at these limits, and with
    that the least total latency, in the fluid model (one machine of M slot-seconds per
    second), where both rules below are exact:
    - which requests can be on time: Moore and Hodgson's rule. Take the requests by due time;
      whenever the one just taken would be late, drop the taken one with the most work per
      weight. The rest are dropped too: their SLO is lost whatever the order.
    - their order: Smith's backward rule for the least sum of completion times under
      deadlines. From the last place forward, put there the request with the most work among
      those whose deadline that place still meets; dropped requests have no deadline, so they
      fill every place that no kept request needs, instead of all waiting at the end.
    `slack_reserve`: the share of each kept request's slack that the second rule may not give
    to the requests placed before it."""
    ev = _Evaluator(p, 0)
    tau_mean = ev.tau_mean(limits)
    slots = float(limits.sum())
    work = p.prefill_s + p.tokens * tau_mean
    # Request j is on time while the queued work before it is <= slots * its latest start
    # (s from now), i.e. while the work up to and including it is <= `due`.
    latest = np.minimum(p.e2e_bound - ev.wait0 - work, p.ttft_bound - ev.wait0 - p.prefill_s)
    savable = (latest >= 0) & (tau_mean <= p.tpot_bound)
    due = np.where(savable, slots * latest + work, np.inf)
    w, d, per_weight = work.tolist(), due.tolist(), (work / p.weight).tolist()  # fast scalars
    by_due = np.flatnonzero(savable)[np.argsort(due[savable], kind="stable")]
    taken: list[tuple[float, int]] = []  # max-heap of (-work per weight, index)
    total = 0.0
    for j in by_due.tolist():
        heapq.heappush(taken, (-per_weight[j], j))
        total += w[j]
        if total > d[j]:
            _, late = heapq.heappop(taken)
            total -= w[late]
            d[late] = math.inf
    kept = np.isfinite(np.array(d))
    # Smith's deadlines. A kept request lends only part of its slack: the rest is held for the
    # tight requests still to arrive, which will go ahead of it (with all of it lent, 1.2x the
    # mix's capacity met 80% instead of 92%). Never earlier than its end in the kept requests'
    # due-time order, which meets them all: so the rule always has a request to place.
    on_time = by_due[kept[by_due]]
    deadline = np.full(ev.n, np.inf)
    deadline[on_time] = np.maximum(
        np.cumsum(work[on_time]), slots * latest[on_time] * (1 - slack_reserve) + work[on_time]
    )
    # Past the last kept deadline only dropped requests are eligible: the longest go last.
    dropped = np.flatnonzero(~kept)
    dropped = dropped[np.argsort(-work[dropped], kind="stable")]
    ends = float(work.sum()) - np.concatenate(([0.0], np.cumsum(work[dropped])[:-1]))
    last_due = float(deadline[on_time].max()) if on_time.size else -math.inf
    tail = dropped[: int(np.searchsorted(-ends, -last_due, side="left"))]
    end_of_place = float(work.sum() - work[tail].sum())
    in_tail = np.zeros(ev.n, dtype=bool)
    in_tail[tail] = True
    rest = np.flatnonzero(~in_tail)
    latest_first = rest[np.argsort(-deadline[rest], kind="stable")].tolist()
    dl = deadline.tolist()
    eligible: list[tuple[float, int]] = []  # max-heap of (-work, index)
    backwards: list[int] = []
    k = 0
    while len(backwards) < len(latest_first):
        while k < len(latest_first) and (
            dl[latest_first[k]] >= end_of_place * (1 - 1e-12) or not eligible
        ):
            heapq.heappush(eligible, (-w[latest_first[k]], latest_first[k]))
            k += 1
        _, j = heapq.heappop(eligible)
        backwards.append(j)
        end_of_place -= w[j]
    return np.concatenate((np.array(backwards[::-1], dtype=np.int64), tail[::-1]))


def anneal(
    p: Problem,
    limits: np.ndarray,
    *,
    iterations: int,
    horizon: int,
    min_concurrency: int,
    rng: random.Random,
    max_wall_s: float | None = None,
    order: np.ndarray | None = None,
) -> Plan:
    """Search from the warm start: `order` (indices into the queued arrays; default their own
    order) and `limits`."""
    start = time.perf_counter()
    ev = _Evaluator(p, horizon)
    order = np.arange(ev.n) if order is None else order.astype(np.int64)
    limits = np.minimum(limits, ev.cap)
    limits = limits if ev.keeps_up(limits) else ev.cap.copy()
    lo = np.minimum(min_concurrency, ev.cap)
    fixed = ev.fixed(order, limits)
    head = order[: ev.h].copy()

    def value(head, limits, fixed) -> float:
        n, t, tau_mean = fixed
        n2, t2 = ev.prefix(head, limits, tau_mean)
        return (n + n2) / (t + t2) if t + t2 > 0 else 0.0

    current = best = value(head, limits, fixed)
    best_head, best_limits = head.copy(), limits.copy()
    tunable = [r for r in range(len(limits)) if ev.cap[r] > lo[r]]
    done = 0
    for done in range(1, iterations + 1):
        if max_wall_s is not None and time.perf_counter() - start > max_wall_s:
            break
        temp = T_START * (T_END / T_START) ** (done / max(1, iterations))
        kind = rng.random()
        new_head, new_limits, new_fixed = head, limits, fixed
        if (kind < 0.2 or ev.h < 2) and tunable:
            r = rng.choice(tunable)
            c = int(limits[r])
            step = max(1, round(c * (LIMIT_STEP - 1)))
            c = c + step if rng.random() < 0.5 else c - step
            c = min(int(ev.cap[r]), max(int(lo[r]), c))
            if c == limits[r]:
                continue
            new_limits = limits.copy()
            new_limits[r] = c
            if c < limits[r] and not ev.keeps_up(new_limits):
                continue
            full = np.concatenate((head, order[ev.h :]))
            new_fixed = ev.fixed(full, new_limits)
        elif ev.h >= 2:
            i = rng.randrange(ev.h)
            if rng.random() < 0.5:
                j = min(ev.h - 1, max(0, i + rng.randint(-NEAR, NEAR)))
            else:
                j = rng.randrange(ev.h)
            if i == j:
                continue
            new_head = head.copy()
            if kind < 0.6:
                new_head[i], new_head[j] = new_head[j], new_head[i]
            else:
                moved = new_head[i]
                new_head = np.insert(np.delete(new_head, i), j, moved)
        else:
            break
        candidate = value(new_head, new_limits, new_fixed)
        delta = (candidate - current) / best if best > 0 else candidate - current
        if delta >= 0 or rng.random() < math.exp(delta / temp):
            head, limits, fixed, current = new_head, new_limits, new_fixed, candidate
            if current > best:
                best, best_head, best_limits = current, head.copy(), limits.copy()
    return Plan(
        order=np.concatenate((best_head, order[ev.h :])),
        limits=best_limits,
        objective=best,
        iterations=done,
        elapsed_s=time.perf_counter() - start,
    )


def plan(
    p: Problem,
    limits: np.ndarray,
    config: SLOSearchConfig,
    rng: random.Random,
    warm: np.ndarray | None = None,
    started: float | None = None,
) -> Plan:
    """One plan under `config`'s budget (its wall time covers all of it): the annealer started
    from the last plan carried forward (`warm`, default the queued arrays' own order) or from
    `most_on_time` anew, whichever scores better now (arrivals and the clock may have turned
    the old plan's bets). `started`: the perf_counter time the budget counts from (default
    now; the policy passes when it began building the problem)."""
    start = time.perf_counter() if started is None else started
    fresh = most_on_time(p, limits, config.slack_reserve)
    warm = np.arange(len(p.arrival)) if warm is None else warm
    order = max((warm, fresh), key=lambda o: objective(p, o, limits))
    wall = None if config.max_wall_ms is None else config.max_wall_ms / 1000.0
    return anneal(
        p,
        limits,
        iterations=config.iterations,
        horizon=config.horizon,
        min_concurrency=config.min_concurrency,
        rng=rng,
        max_wall_s=None if wall is None else max(0.0, wall - (time.perf_counter() - start)),
        order=order,
    )
