"""The `slo` policy's search (Huang et al. 2025): simulated annealing over the order of the
queued requests and each replica's concurrency limit, maximising G = n / t, where n is the
(weighted) number of requests expected to meet their SLO and t the sum of all their expected
latencies, queued and running. A request whose SLO is already lost still adds its latency to
t, so the search keeps moving it forward instead of starving it.

Latency model (per plan, `Problem`): each replica r runs up to c_r requests, each decode step
taking tau_r = step(c_r) (`LatencyModel`); a queued request's work is its prefill plus its
predicted tokens times the slot-weighted mean tau. Waiting is a fluid estimate: the first F
requests in the order take the free slots at once; the k-th after them waits for the work
ahead of it (the running requests' remaining work and the queued work before it) to drain
through the M = sum(c_r) slots. Only the first `horizon` positions are reordered: reordering
them leaves the work ahead of every later request, hence its latency, unchanged, so an order
move costs O(horizon) whatever the queue's length; a concurrency move re-evaluates all.

Moves, each proposal drawn at random:
  swap       two positions of the horizon, near each other (within 8) half the time: local
             reordering, which is where most of G is won once the warm start is good;
  insert     one request taken out and put back earlier or later: promotes a request about to
             lose its SLO past several others in one step, which swaps would need a chain for;
  limit      one replica's concurrency limit times or over 1.25 (at least +-1), within
             [min_concurrency, max_num_seqs]: fewer running requests give a faster step
             (TPOT bounds) at the cost of waiting, the batch-size search of the paper.
Temperature: the change in G is taken relative to the best G so far (scale-free: G is in
1/seconds and varies with load), accepted when it improves, else with probability
exp(delta / T); T falls geometrically from 2% to 0.01% over the iteration budget, so early
proposals that lose a couple of per cent are taken (to leave a local optimum) and the last
ones are greedy. Stopping: the iteration budget, or the wall-time budget (checked every 16
proposals; without one the search is deterministic for a seed). The best plan seen is kept.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

T_START = 0.02
T_END = 1e-4
NEAR = 8
LIMIT_STEP = 1.25


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

    def tau(self, limits: np.ndarray) -> np.ndarray:
        return np.array([self.p.step_s(r, int(c)) for r, c in enumerate(limits)])

    def fixed(self, order: np.ndarray, limits: np.ndarray) -> tuple[float, float, float, float]:
        """(n, t) of the running requests and of the queued ones past the horizon, with the
        mean tau and the running work, for these limits."""
        p, tau = self.p, self.tau(limits)
        slots = float(limits.sum())
        tau_mean = float((limits * tau).sum()) / slots
        # What runs now keeps its batch until it drains: a lower limit only slows admissions.
        held = np.maximum(limits, self.running_per_replica)
        run_tau = self.tau(held)[p.run_replica] if len(p.run_replica) else np.zeros(0)
        run_e2e = p.run_elapsed + p.run_tokens * run_tau
        run_met = (
            (run_e2e <= p.run_e2e_bound)
            & (p.run_ttft <= p.run_ttft_bound)
            & (run_tau <= p.run_tpot_bound)
        )
        run_work = float((p.run_tokens * run_tau).sum())
        n = float((p.run_weight * run_met).sum())
        t = float(run_e2e.sum())
        if self.h < self.n:
            idx = order
            work = p.prefill_s[idx] + p.tokens[idx] * tau_mean
            ahead = run_work + np.concatenate(([0.0], np.cumsum(work)[:-1]))
            h = self.h
            n2, t2 = self._score(idx[h:], work[h:], ahead[h:], limits, tau_mean, first=h)
            n, t = n + n2, t + t2
        return n, t, tau_mean, run_work

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

    def prefix(self, head: np.ndarray, limits, tau_mean: float, run_work: float):
        work = self.p.prefill_s[head] + self.p.tokens[head] * tau_mean
        ahead = run_work + np.concatenate(([0.0], np.cumsum(work)[:-1]))
        return self._score(head, work, ahead, limits, tau_mean)


def objective(p: Problem, order: np.ndarray, limits: np.ndarray) -> float:
    """G = n / t of this order and these limits (the whole queue evaluated)."""
    ev = _Evaluator(p, len(order))
    n, t, tau_mean, run_work = ev.fixed(order, limits)
    n2, t2 = ev.prefix(order, limits, tau_mean, run_work)
    return (n + n2) / (t + t2) if t + t2 > 0 else 0.0


def anneal(
    p: Problem,
    limits: np.ndarray,
    *,
    iterations: int,
    horizon: int,
    min_concurrency: int,
    rng: random.Random,
    max_wall_s: float | None = None,
) -> Plan:
    """Search from the warm start (the queued arrays' own order, `limits`)."""
    start = time.perf_counter()
    ev = _Evaluator(p, horizon)
    order = np.arange(ev.n)
    limits = limits.copy()
    lo = np.minimum(min_concurrency, p.max_seqs)
    fixed = ev.fixed(order, limits)
    head = order[: ev.h].copy()

    def value(head, limits, fixed) -> float:
        n, t, tau_mean, run_work = fixed
        n2, t2 = ev.prefix(head, limits, tau_mean, run_work)
        return (n + n2) / (t + t2) if t + t2 > 0 else 0.0

    current = best = value(head, limits, fixed)
    best_head, best_limits = head.copy(), limits.copy()
    tunable = [r for r in range(len(limits)) if p.max_seqs[r] > lo[r]]
    done = 0
    for done in range(1, iterations + 1):
        if max_wall_s is not None and done % 16 == 0 and time.perf_counter() - start > max_wall_s:
            break
        temp = T_START * (T_END / T_START) ** (done / max(1, iterations))
        kind = rng.random()
        new_head, new_limits, new_fixed = head, limits, fixed
        if (kind < 0.2 or ev.h < 2) and tunable:
            r = rng.choice(tunable)
            c = int(limits[r])
            step = max(1, round(c * (LIMIT_STEP - 1)))
            c = c + step if rng.random() < 0.5 else c - step
            c = min(int(p.max_seqs[r]), max(int(lo[r]), c))
            if c == limits[r]:
                continue
            new_limits = limits.copy()
            new_limits[r] = c
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
