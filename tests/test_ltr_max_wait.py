"""LTR's wait bound in seconds (`ltr_max_wait_s`): the rounds-based starvation guard bounds no
wait in seconds; an overdue request goes ahead of every score, oldest first, to its end."""

from __future__ import annotations

import pytest

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


def test_ltr_max_wait_s_runs_an_overdue_request_to_its_end_ahead_of_every_score():
    """The starvation run with rounds that never promote: the long request, outranked by a new
    short one every second, waits exactly `ltr_max_wait_s` and then runs whole, in one
    dispatch, at top priority. Without the bound it would wait for ever."""
    clock = VirtualClock()
    policy = PolicyConfig(name="ltr", starvation_threshold=10_000, ltr_max_wait_s=5.0)
    sched = Scheduler(SchedulerConfig(policy=policy), clock)
    sched.add_replica("r0", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    long = Request("long", 8, 25, 0.0, output_tokens=25, score=50.0)
    sched.submit(long)
    log = []
    for i in range(20):
        clock.advance_to(float(i + 1))
        sched.submit(Request(f"s{i}", 8, 1, clock.now(), output_tokens=1, score=-1.0))
        (d,) = sched.schedule()
        if d.request is long:
            log.append((clock.now(), d))
        reason = FinishReason.LENGTH if d.final else FinishReason.SLICE
        run_through(sched, d.request.request_id, d.max_new_tokens, reason)
    assert [(t, d.max_new_tokens, d.final) for t, d in log] == [(5.0, 25, True)]
    assert log[0][1].priority == engine_priority(PROMOTED_PRIORITY)
    assert long.state is RequestState.FINISHED and long.num_dispatches == 1


def test_ltr_overdue_requests_go_oldest_first_ahead_of_promoted_ones_and_leave_cleanly():
    q = make_queue(
        PolicyConfig(name="ltr", starvation_threshold=1, priority_quantum=5, ltr_max_wait_s=10.0)
    )
    old = req(0, score=9.0, arrival=0.0)
    older = req(1, score=8.0, arrival=-0.25)
    young = req(2, score=7.0, arrival=5.0)
    fresh = req(3, score=1.0, arrival=9.0)
    for r in (old, older, young, fresh):
        q.add(r, 9.0)
    q.begin_round(9.5)  # nobody overdue yet; the round guard promotes all four
    assert not any(q.is_overdue(r) for r in (old, older, young, fresh))
    q.begin_round(10.0)
    assert [q.is_overdue(r) for r in (old, older, young, fresh)] == [True, True, False, False]
    assert ids(q.ordered(10.0))[:2] == ["r1", "r0"]  # oldest first, ahead of every promoted
    assert q.slice_limit(old) is None and q.priority(old, 10.0) == PROMOTED_PRIORITY
    assert q.starvation_counter(old) == 0
    q.remove(older)
    assert older not in q and ids(q.ordered(10.0))[0] == "r0"
    q.begin_round(15.0)
    assert q.is_overdue(young) and not q.is_overdue(fresh)
    assert ids(q.ordered(15.0))[:2] == ["r0", "r2"]


def test_ltr_max_wait_s_must_be_positive():
    with pytest.raises(ValueError, match="ltr_max_wait_s"):
        PolicyConfig(name="ltr", ltr_max_wait_s=0.0)
