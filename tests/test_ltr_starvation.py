"""LTR's starvation guard (Fu et al. 2024): a request passed over for `starvation_threshold`
engine rounds is promoted ahead of every score for `priority_quantum` of them, and runs a
quantum slice when dispatched so."""

from __future__ import annotations

from cluster.clock import VirtualClock
from cluster.config import PolicyConfig, SchedulerConfig
from cluster.dispatch import engine_priority
from cluster.events import FinishReason
from cluster.policies import make_queue
from cluster.policies.base import PROMOTED_PRIORITY
from cluster.request import Request, RequestState
from cluster.scheduler import Scheduler
from tests.support import run_through
from tests.test_policies import ids, req


def test_ltr_promotes_exactly_at_the_threshold_for_exactly_the_quantum():
    threshold, quantum = 5, 3
    q = make_queue(
        PolicyConfig(name="ltr", starvation_threshold=threshold, priority_quantum=quantum)
    )
    long = req(0, score=100.0)
    q.add(long, 0.0)
    history = []  # (round, counter, promoted) seen after each begin_round
    for _ in range(2 * (threshold + quantum) + 1):
        q.begin_round(0.0)
        history.append((q.round, q.starvation_counter(long), q.is_promoted(long)))

    promoted_rounds = [r for r, _, p in history if p]
    # Counter 1..4 in rounds 1..4: not promoted one round early.
    assert history[: threshold - 1] == [(r, r, False) for r in range(1, threshold)]
    # Promoted in the round its counter reaches the threshold, for `quantum` rounds; then
    # demoted with the counter reset, and promoted again another threshold later.
    first = threshold
    second = first + quantum + threshold
    assert promoted_rounds == [*range(first, first + quantum), *range(second, second + quantum)]
    demoted_at = first + quantum
    assert history[demoted_at - 1] == (demoted_at, 0, False)
    assert history[second - 2] == (second - 1, threshold - 1, False)


def test_a_promoted_request_goes_ahead_of_every_score():
    q = make_queue(PolicyConfig(name="ltr", starvation_threshold=2, priority_quantum=4))
    long = req(0, score=1e9)
    q.add(long, 0.0)
    q.begin_round(0.0)
    fresh = [req(i, score=s) for i, s in ((1, -1e9), (2, 0.0))]
    for r in fresh:
        q.add(r, 0.0)
    assert ids(q.ordered(0.0)) == ["r1", "r2", "r0"]
    q.begin_round(0.0)
    assert q.is_promoted(long) and not q.is_promoted(fresh[0])
    assert ids(q.ordered(0.0)) == ["r0", "r1", "r2"]
    assert q.priority(long, 0.0) == PROMOTED_PRIORITY < q.priority(fresh[0], 0.0)
    assert q.slice_limit(long) == 4 and q.slice_limit(fresh[0]) is None


def test_promoted_requests_keep_promotion_order():
    q = make_queue(PolicyConfig(name="ltr", starvation_threshold=3, priority_quantum=10))
    early, late = req(0, score=9.0), req(1, score=1.0)
    q.add(early, 0.0)
    q.begin_round(0.0)
    q.add(late, 0.0)
    for _ in range(3):
        q.begin_round(0.0)
    assert q.is_promoted(early) and q.is_promoted(late)
    assert ids(q.ordered(0.0)) == ["r0", "r1"]  # the longer-starved first, not by score


def test_removing_a_promoted_request_ends_its_promotion_and_requeue_restarts_the_counter():
    q = make_queue(PolicyConfig(name="ltr", starvation_threshold=2, priority_quantum=5))
    r = req(0, score=1.0)
    q.add(r, 0.0)
    q.begin_round(0.0)
    q.begin_round(0.0)
    assert q.is_promoted(r)
    q.remove(r)  # dispatched
    assert r not in q and len(q) == 0
    q.add(r, 0.0)  # back after its slice
    assert not q.is_promoted(r) and q.starvation_counter(r) == 0
    q.begin_round(0.0)
    assert not q.is_promoted(r) and q.starvation_counter(r) == 1
    q.begin_round(0.0)
    assert q.is_promoted(r)


def _ltr_starvation_run(
    threshold: int, quantum: int, prompt: int = 8, overhead=None, replicas: int = 1
):
    """`replicas` replicas with one slot each; a long request (high score, `prompt` tokens)
    competes with as many fresh short ones every round. Each round's dispatches run their whole
    slices at once. `overhead`: the slices' `slice_max_overhead` (None: the paper's fixed
    quantum)."""
    clock = VirtualClock()
    policy = PolicyConfig(
        name="ltr",
        starvation_threshold=threshold,
        priority_quantum=quantum,
        slice_max_overhead=overhead,
    )
    sched = Scheduler(SchedulerConfig(policy=policy), clock)
    for k in range(replicas):
        sched.add_replica(f"r{k}", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    long = Request("long", prompt, 25, 0.0, output_tokens=25, score=50.0)
    sched.submit(long)
    log = []  # (round, dispatch) for the long request's dispatches
    for i in range(200 * replicas):
        if long.state is RequestState.FINISHED:
            break
        clock.advance_to(float(i + 1))
        for k in range(replicas):
            sched.submit(Request(f"s{i}-{k}", 8, 1, clock.now(), output_tokens=1, score=-1.0))
        dispatches = sched.schedule()
        assert len(dispatches) == replicas
        for d in dispatches:
            if d.request is long:
                log.append((sched.stats().rounds, d))
            reason = FinishReason.LENGTH if d.final else FinishReason.SLICE
            run_through(sched, d.request.request_id, d.max_new_tokens, reason)
    return long, log


def test_ltr_starving_request_is_dispatched_exactly_at_threshold_for_a_quantum_slice():
    threshold, quantum = 4, 10
    long, log = _ltr_starvation_run(threshold, quantum)
    # Every short request beats it by score; it runs only when promoted: in the round its
    # counter reaches the threshold, for a slice of `quantum` tokens (the last one shorter).
    assert [rnd for rnd, _ in log] == [threshold, 2 * threshold, 3 * threshold]
    assert [d.max_new_tokens for _, d in log] == [quantum, quantum, 25 - 2 * quantum]
    assert all(d.priority == engine_priority(PROMOTED_PRIORITY) for _, d in log)
    assert long.state is RequestState.FINISHED and long.generated == 25
    assert long.num_dispatches == 3


def test_on_n_replicas_the_threshold_counts_rounds_of_one_engine():
    # Three replicas run three scheduling rounds for each of one engine at the same load per
    # replica: each counts a third, so the request waits as long as on one replica.
    threshold, quantum, replicas = 4, 10, 3
    long, log = _ltr_starvation_run(threshold, quantum, replicas=replicas)
    n = threshold * replicas
    assert [rnd for rnd, _ in log] == [n, 2 * n, 3 * n]
    assert [d.max_new_tokens for _, d in log] == [quantum, quantum, 25 - 2 * quantum]


def test_ltr_promotion_and_its_quantum_are_counted_in_engine_rounds():
    q = make_queue(PolicyConfig(name="ltr", starvation_threshold=2, priority_quantum=1))
    long = req(0, score=100.0)
    q.add(long, 0.0)
    promoted = []
    for _ in range(12):
        q.begin_round(0.0, replicas=3)
        promoted.append(q.is_promoted(long))
    # Promoted at 6 rounds (2 engine rounds) for 3 rounds (1), then 6 more rounds unpromoted.
    assert promoted == [False] * 5 + [True] * 3 + [False] * 3 + [False]
    assert q.starvation_counter(long) == 1 and q.round == 12


def test_a_starving_request_whose_resume_would_recompute_a_long_prompt_runs_to_its_end():
    # 4,000 tokens of prompt cost about 27 decode steps to compute again: a 10-token slice
    # would spend more on its resume than on itself.
    long, log = _ltr_starvation_run(4, 10, prompt=4000, overhead=0.1)
    assert [(rnd, d.max_new_tokens, d.final) for rnd, d in log] == [(4, 25, True)]
    assert long.state is RequestState.FINISHED and long.num_dispatches == 1


def test_rounds_count_only_when_a_replica_has_a_free_slot():
    clock = VirtualClock()
    policy = PolicyConfig(name="ltr", starvation_threshold=3, priority_quantum=2)
    sched = Scheduler(SchedulerConfig(policy=policy), clock)
    sched.add_replica("r0", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    busy = Request("busy", 8, 100, 0.0, output_tokens=100, score=0.0)
    waiting = Request("waiting", 8, 100, 0.0, output_tokens=100, score=5.0)
    sched.submit(busy)
    sched.submit(waiting)
    assert [d.request for d in sched.schedule()] == [busy]
    assert sched.stats().rounds == 1 and sched.queue.starvation_counter(waiting) == 1
    for _ in range(10):  # the only slot is taken: these are not rounds
        assert sched.schedule() == []
    assert sched.stats().rounds == 1 and sched.queue.starvation_counter(waiting) == 1
    assert not sched.queue.is_promoted(waiting)
