"""The `slo` policy's warm start and limits: the most-on-time order against brute force, a
tighter SLO never placing a request later, the concurrency floor set by the arrival rate, and
the per-class correction of predicted lengths by what was served."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from cluster.calibration import MIN_SAMPLES, WINDOW, LogRatioCalibration
from cluster.slo_search import Problem, anneal, most_on_time, score


def full_replica_problem(n: int, seed: int, weight: bool = False) -> Problem:
    """n queued behind a replica whose 2 slots are busy, so that every queued request waits
    for the queue's work before it (the fluid model most_on_time is exact for)."""
    rng = np.random.default_rng(seed)
    e2e = np.where(rng.random(n) < 0.5, rng.uniform(0.5, 4.0, n), np.inf)
    return Problem(
        now=1.0,
        arrival=rng.uniform(0.0, 1.0, n),
        prefill_s=rng.uniform(0.01, 0.1, n),
        tokens=rng.integers(5, 120, n).astype(float),
        e2e_bound=e2e,
        ttft_bound=np.where(np.isinf(e2e), rng.uniform(0.2, 2.0, n), np.inf),
        tpot_bound=np.where(np.isinf(e2e), 0.05, np.inf),
        weight=rng.choice([1.0, 2.0], n) if weight else np.ones(n),
        run_replica=np.zeros(2, dtype=np.int64),
        run_elapsed=np.full(2, 0.5),
        run_ttft=np.full(2, 0.1),
        run_tokens=np.full(2, 50.0),
        run_e2e_bound=np.full(2, np.inf),
        run_ttft_bound=np.full(2, np.inf),
        run_tpot_bound=np.full(2, np.inf),
        run_weight=np.ones(2),
        max_seqs=np.array([2]),
        step_s=lambda _r, batch: 0.01 + 0.002 * batch,
    )


@pytest.mark.parametrize("seed", range(12))
def test_most_on_time_is_the_best_order_of_seven(seed):
    p, limits = full_replica_problem(7, seed), np.array([2])
    every = [score(p, np.array(o), limits) for o in itertools.permutations(range(7))]
    most = max(n for n, _ in every)
    least = min(t for n, t in every if n == most)
    order = most_on_time(p, limits, slack_reserve=0.0)
    assert sorted(order) == list(range(7))
    n, t = score(p, order, limits)
    assert n == most  # as many SLOs met as any order meets
    assert t == pytest.approx(least)  # and, with no slack held back, the least total latency


def met(p: Problem, order: list, limits: np.ndarray, j: int) -> bool:
    """Whether request j meets its SLO in this order: what its weight adds to n."""
    without = Problem(**{f: getattr(p, f) for f in Problem.__dataclass_fields__})
    without.weight = p.weight.copy()
    without.weight[j] = 0.0
    return score(p, np.array(order), limits)[0] > score(without, np.array(order), limits)[0]


@pytest.mark.parametrize("seed", range(40))
def test_a_tighter_slo_never_moves_a_request_that_still_meets_it_later(seed):
    p, limits = full_replica_problem(30, seed), np.array([2])
    rng = random.Random(seed)
    j = rng.choice([i for i in range(30) if np.isfinite(p.e2e_bound[i])])
    before = list(most_on_time(p, limits))
    tighter = Problem(**{f: getattr(p, f) for f in Problem.__dataclass_fields__})
    tighter.e2e_bound = p.e2e_bound.copy()
    tighter.e2e_bound[j] *= 0.8
    after = list(most_on_time(tighter, limits))
    if met(p, before, limits, j) and met(tighter, after, limits, j):
        assert after.index(j) <= before.index(j)


def test_the_concurrency_floor_follows_the_arrival_rate():
    rng = np.random.default_rng(0)
    n = 40
    base = dict(
        now=5.0,
        arrival=rng.uniform(0, 5, n),
        prefill_s=np.full(n, 0.02),
        tokens=rng.integers(50, 400, n).astype(float),
        e2e_bound=np.full(n, np.inf),
        ttft_bound=np.full(n, 30.0),
        tpot_bound=np.full(n, 0.03),  # met only with small batches
        weight=np.ones(n),
        run_replica=np.repeat(np.arange(2), 60),
        run_elapsed=np.full(120, 1.0),
        run_ttft=np.full(120, 0.2),
        run_tokens=np.full(120, 100.0),
        run_e2e_bound=np.full(120, np.inf),
        run_ttft_bound=np.full(120, 30.0),
        run_tpot_bound=np.full(120, 0.03),
        run_weight=np.ones(120),
        max_seqs=np.array([64, 64]),
        step_s=lambda _r, batch: 0.01 + 0.0005 * batch,
    )

    def limits_at(rate: float) -> int:
        plan = anneal(
            Problem(**base, arrival_rate=rate),
            np.array([64, 64]),
            iterations=400,
            horizon=16,
            min_concurrency=2,
            rng=random.Random(1),
        )
        return int(plan.limits.sum())

    quiet, busy = limits_at(0.0), limits_at(1e6)
    assert quiet < 128  # nothing arriving: the TPOT bound pulls the limits down
    assert busy > quiet  # arrivals keep them up: in overload, within 10% of full throughput


def test_served_lengths_correct_the_predicted_ones_per_key():
    cal = LogRatioCalibration()
    for _ in range(MIN_SAMPLES - 1):
        cal.record("chat", 100.0, 250)
    assert cal.factor("chat") == 1.0  # too few yet
    cal.record("chat", 100.0, 250)
    assert cal.factor("chat") == pytest.approx(2.5)
    assert cal.factor("code") == 1.0
    for _ in range(WINDOW):
        cal.record("chat", 100.0, 50)
    assert cal.factor("chat") == pytest.approx(0.5)  # the old ones left the window
    cal.record("chat", float("nan"), 10)
    cal.record("chat", 100.0, 0)
    assert cal.factor("chat") == pytest.approx(0.5)
