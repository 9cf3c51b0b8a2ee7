"""Each scheduling policy's rules, on its queue and, for LTR's rounds, through the Scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.config import PolicyConfig
from cluster.policies import make_queue
from cluster.policies.base import PROMOTED_PRIORITY
from cluster.request import Request

# Binary-exact times: predicted service = tokens x 0.25 s + 0.5 s.
EXACT = {"per_token_time_s": 0.25, "base_time_s": 0.5}


def req(
    i: int,
    *,
    output: int = 10,
    score: float | None = None,
    predicted: float | None = None,
    arrival: float = 0.0,
    prompt: int = 8,
) -> Request:
    """A request as the scheduler would queue it (it numbers arrivals with `seq`)."""
    r = Request(
        f"r{i}",
        prompt,
        output,
        arrival,
        output_tokens=output,
        score=score,
        predicted_tokens=predicted,
    )
    r.seq = i
    return r


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


# ---- fcfs ---------------------------------------------------------------------------------


def test_fcfs_orders_by_arrival_and_a_requeued_request_keeps_its_place():
    q = make_queue(PolicyConfig(name="fcfs"))
    reqs = [req(i, output=100 - i, arrival=0.0 if i < 2 else float(i)) for i in range(5)]
    for r in reversed(reqs):
        q.add(r, 0.0)
    assert ids(q.ordered(0.0)) == ["r0", "r1", "r2", "r3", "r4"]  # r0, r1 tie: by seq
    q.remove(reqs[1])
    assert reqs[1] not in q and len(q) == 4
    assert ids(q.ordered(0.0)) == ["r0", "r2", "r3", "r4"]
    # Back from a slice: ahead of everything that arrived after it.
    q.add(reqs[1], 5.0)
    assert ids(q.ordered(5.0)) == ["r0", "r1", "r2", "r3", "r4"]
    assert q.priority(reqs[3], 5.0) < q.priority(reqs[4], 5.0)
    # Taken back by a restarted scheduler (a later seq), it keeps its place by arrival.
    late = req(9, arrival=2.5)
    q.add(late, 6.0)
    assert ids(q.ordered(6.0)) == ["r0", "r1", "r2", "r9", "r3", "r4"]


def test_ordered_iteration_does_not_consume_the_queue():
    q = make_queue(PolicyConfig(name="fcfs"))
    for i in range(3):
        q.add(req(i), 0.0)
    first = ids(q.ordered(0.0))
    it = q.ordered(0.0)
    next(it)
    it.close()  # abandoned half-way, as a scheduling round that stops early does
    assert ids(q.ordered(0.0)) == first == ["r0", "r1", "r2"]


# ---- oracle -------------------------------------------------------------------------------


def test_oracle_runs_shortest_remaining_true_length_first():
    q = make_queue(PolicyConfig(name="oracle"))
    a, b, c, d = req(0, output=50), req(1, output=10), req(2, output=30), req(3, output=10)
    partly_done = req(4, output=200)
    partly_done.generated = 195  # 5 tokens left: shortest remaining, whatever its total
    for r in (a, b, c, d, partly_done):
        q.add(r, 0.0)
    assert ids(q.ordered(0.0)) == ["r4", "r1", "r3", "r2", "r0"]  # ties by arrival
    assert q.priority(partly_done, 0.0) == 5.0


def test_oracle_needs_true_lengths():
    q = make_queue(PolicyConfig(name="oracle"))
    r = Request("live", 8, 100, 0.0)  # a live request: no true length
    with pytest.raises(ValueError, match="oracle policy needs the true output length of live"):
        q.add(r, 0.0)


# ---- ltr ----------------------------------------------------------------------------------


def test_ltr_orders_by_score_lowest_first_ties_by_arrival():
    q = make_queue(PolicyConfig(name="ltr"))
    for i, s in enumerate([0.3, -1.0, 2.5, 0.3, 1.0]):
        q.add(req(i, score=s), 0.0)
    assert ids(q.ordered(0.0)) == ["r1", "r0", "r3", "r4", "r2"]


def test_ltr_without_a_score_is_a_clear_error():
    q = make_queue(PolicyConfig(name="ltr"))
    with pytest.raises(ValueError, match="ltr policy needs a predictor score for r0"):
        q.add(req(0), 0.0)


# ---- ssjf ---------------------------------------------------------------------------------


def test_ssjf_orders_by_predicted_time():
    q = make_queue(PolicyConfig(name="ssjf", **EXACT))
    reqs = [req(i, predicted=n) for i, n in enumerate([40.0, 2.0, 400.0, 2.0, 10.0])]
    for r in reqs:
        q.add(r, 0.0)
    assert ids(q.ordered(0.0)) == ["r1", "r3", "r4", "r0", "r2"]
    assert q.priority(reqs[4], 0.0) == 10 * 0.25 + 0.5


def test_ssjf_needs_a_predicted_length():
    q = make_queue(PolicyConfig(name="ssjf"))
    with pytest.raises(ValueError, match="ssjf policy needs a predicted output length for r0"):
        q.add(req(0), 0.0)


def test_ssjf_aging_by_max_wait_is_strictly_over_the_bound():
    q = make_queue(PolicyConfig(name="ssjf", ssjf_max_wait_s=100.0, ssjf_wait_factor=10.0, **EXACT))
    long = req(0, predicted=1000.0)  # 250.5 s predicted: 10x is far beyond the 100 s bound
    q.add(long, 0.0)
    short = req(1, predicted=2.0, arrival=99.0)  # 1 s predicted: ages 10 s after arrival
    q.add(short, 99.0)
    assert not q.is_aged(long, 100.0)  # waited exactly 100 s: not over
    assert ids(q.ordered(100.0)) == ["r1", "r0"]
    just_over = float(np.nextafter(100.0, np.inf))
    assert q.is_aged(long, just_over)
    assert ids(q.ordered(just_over)) == ["r0", "r1"]
    assert q.priority(long, just_over) == PROMOTED_PRIORITY
    assert q.priority(short, just_over) == 1.0


def test_ssjf_aging_by_wait_factor_is_strictly_over_the_bound():
    q = make_queue(PolicyConfig(name="ssjf", ssjf_max_wait_s=100.0, ssjf_wait_factor=10.0, **EXACT))
    mid = req(0, predicted=6.0)  # 2 s predicted: ages after waiting over 20 s
    q.add(mid, 0.0)
    short = req(1, predicted=0.0, arrival=19.0)  # 0.5 s predicted
    q.add(short, 19.0)
    assert not q.is_aged(mid, 20.0)
    assert ids(q.ordered(20.0)) == ["r1", "r0"]
    just_over = float(np.nextafter(20.0, np.inf))
    assert q.is_aged(mid, just_over) and not q.is_aged(short, just_over)
    assert ids(q.ordered(just_over)) == ["r0", "r1"]


def test_ssjf_aged_requests_go_longest_overdue_first():
    q = make_queue(PolicyConfig(name="ssjf", ssjf_max_wait_s=100.0, ssjf_wait_factor=10.0, **EXACT))
    a = req(0, predicted=1000.0)  # ages at 100 s (the max-wait bound)
    b = req(1, predicted=6.0, arrival=85.0)  # ages at 105 s (10 x 2 s)
    c = req(2, predicted=0.0, arrival=119.0)  # ages at 124 s
    for r in (c, b, a):  # queued in another order than they age
        q.add(r, r.arrival_time)
    assert ids(q.ordered(120.0)) == ["r0", "r1", "r2"]
    q.remove(a)
    assert ids(q.ordered(120.0)) == ["r1", "r2"]


# ---- hrrn ---------------------------------------------------------------------------------


def test_hrrn_ratio_and_order():
    q = make_queue(PolicyConfig(name="hrrn", **EXACT))
    long = req(0, predicted=38.0)  # 10 s predicted service
    short = req(1, predicted=2.0)  # 1 s
    for r in (long, short):
        q.add(r, 0.0)
    assert ids(q.ordered(0.0)) == ["r0", "r1"]  # both ratio 1 on arrival: by arrival
    assert q.ratio(long, 5.0) == 1.5 and q.ratio(short, 5.0) == 6.0
    assert ids(q.ordered(5.0)) == ["r1", "r0"]
    assert q.priority(short, 5.0) == -6.0


def test_hrrn_long_job_overtakes_fresh_short_jobs_as_it_waits():
    q = make_queue(PolicyConfig(name="hrrn", **EXACT))
    long = req(0, predicted=38.0, arrival=0.0)  # 10 s service
    q.add(long, 0.0)
    s1 = req(1, predicted=2.0, arrival=4.0)  # 1 s service, has waited 1 s at t=5: ratio 2
    q.add(s1, 4.0)
    assert ids(q.ordered(5.0)) == ["r1", "r0"]  # long: (5 + 10) / 10 = 1.5
    q.remove(s1)
    s2 = req(2, predicted=2.0, arrival=14.0)  # ratio 2 at t=15; long: 2.5 by then
    q.add(s2, 14.0)
    assert ids(q.ordered(15.0)) == ["r0", "r2"]


def test_hrrn_ties_go_by_arrival_in_large_queues():
    """Equal ratios (a burst with equal predictions) must keep arrival order, also beyond the
    first batch the queue sorts, and after removals have shuffled its storage."""
    q = make_queue(PolicyConfig(name="hrrn", **EXACT))
    reqs = [req(i, predicted=10.0 if i % 3 else 30.0) for i in range(300)]
    for r in reqs:
        q.add(r, 0.0)
    for r in reqs[:60:2]:
        q.remove(r)
    left = [r for r in reqs if r in q]
    now = 7.0
    expected = sorted(left, key=lambda r: (-q.ratio(r, now), r.seq))
    assert ids(q.ordered(now)) == ids(expected)


# ---- every policy -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcfs", "oracle", "ltr", "ssjf", "hrrn"])
def test_every_queue_adds_removes_and_iterates_each_request_once(name):
    q = make_queue(PolicyConfig(name=name))
    rng = np.random.default_rng(3)
    reqs = [
        req(
            i,
            output=int(rng.integers(1, 500)),
            score=float(rng.normal()),
            predicted=float(rng.integers(1, 500)),
            arrival=float(i) / 10,
        )
        for i in range(150)
    ]
    for r in reqs:
        q.add(r, r.arrival_time)
    for r in reqs[::4]:
        q.remove(r)
    q.remove(reqs[0])  # removing twice is harmless
    left = {r.request_id for r in reqs} - {r.request_id for r in reqs[::4]}
    assert len(q) == len(left)
    order = ids(q.ordered(20.0))
    assert len(order) == len(set(order)) and set(order) == left
    assert all((r in q) == (r.request_id in left) for r in reqs)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="unknown policy 'sjf'"):
        PolicyConfig(name="sjf")
    with pytest.raises(ValueError, match="must be >= 1"):
        PolicyConfig(name="ltr", starvation_threshold=0)
