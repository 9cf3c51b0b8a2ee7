"""Scheduler-driven preemption: the decision's guards and cost model (`cluster.preemption`),
and the swap carried out by the scheduler and a simulated engine (`cluster.swaps`)."""

from __future__ import annotations

import dataclasses

import pytest

from cluster.clock import VirtualClock
from cluster.config import PolicyConfig, PreemptionConfig, SchedulerConfig
from cluster.events import FinishReason
from cluster.kv_churn import KvChurn
from cluster.latency_model import LatencyModel
from cluster.policies.base import PROMOTED_PRIORITY
from cluster.preemption import Running, choose_swap, expected_remaining, slice_tokens
from cluster.replicas import ReplicaView
from cluster.request import Request, RequestState
from cluster.routing import make_routing
from cluster.scheduler import Scheduler
from cluster.swaps import Swaps
from tests.sim_audit import Ledger, make_engine, register

LATENCY = LatencyModel.named("a100-llama3-8b")
ON = PreemptionConfig(enabled=True, min_run_tokens=8, max_per_request=2, min_gain_ratio=4.0)


def req(rid: str, predicted: float | None, generated: int = 0, max_tokens: int = 2000, **kw):
    r = Request(rid, 100, max_tokens, 0.0, predicted_tokens=predicted, **kw)
    r.generated = generated
    return r


def swaps_on() -> Swaps:
    """The swaps of a scheduler with preemption `ON` and its default routing."""
    config = SchedulerConfig(preemption=ON)
    return Swaps(config, LATENCY, make_routing(config))


def swap(waiting, victim, config=ON, waiting_priority=0.0, batch=4):
    return choose_swap(waiting, waiting_priority, [Running(victim, batch)], config, LATENCY)


def test_expected_remaining_follows_the_prediction_then_attained_service():
    assert expected_remaining(req("a", 100.0, generated=30)) == 70
    assert expected_remaining(req("a", 100.0, generated=300)) == 300  # overran: as much again
    assert expected_remaining(req("a", 100.0, generated=300, max_tokens=350)) == 50
    assert expected_remaining(req("a", None, generated=30)) is None


def test_a_long_overrun_request_gives_way_to_a_short_one():
    victim = req("long", 20.0, generated=400, dispatch_priority=-5.0)  # ranked first, wrongly
    s = swap(req("short", 20.0), victim, waiting_priority=1.0)
    assert s is not None and s.victim is victim and s.gain_s > 0


def test_guards_each_refuse_the_swap():
    short = req("short", 20.0)
    base = {"generated": 400, "dispatch_priority": 5.0}
    assert swap(short, req("v", 20.0, **base)) is not None
    # minimum run quantum: only 4 tokens into this dispatch
    assert swap(short, req("v", 20.0, dispatch_start_tokens=396, **base)) is None
    # cap on preemptions per request
    assert swap(short, req("v", 20.0, scheduler_preemptions=2, **base)) is None
    # starvation protection: a promoted request keeps its slice
    promoted = req("v", 20.0, generated=400, dispatch_priority=PROMOTED_PRIORITY)
    assert swap(short, promoted) is None
    # not long enough compared with the waiting one (ratio 4)
    assert swap(req("w", 150.0), req("v", 20.0, **base)) is None
    # no prediction: nothing to weigh
    assert swap(req("w", None), req("v", 20.0, **base)) is None


def test_the_policy_must_rank_the_waiting_one_ahead_unless_the_victim_overran():
    within = req("v", 1000.0, generated=100, dispatch_priority=1.0)  # 900 expected left
    assert swap(req("w", 20.0), within, waiting_priority=2.0) is None  # policy prefers v
    assert swap(req("w", 20.0), within, waiting_priority=0.5) is not None


def test_the_resume_cost_can_outweigh_the_gain():
    victim = req("v", 20.0, generated=90, dispatch_priority=5.0)
    victim.prompt_tokens = 7000  # a long context to recompute, in a full batch
    assert swap(req("w", 20.0), victim, batch=256) is None
    assert swap(req("w", 20.0), victim, batch=1) is not None


def misranked(preemption: PreemptionConfig):
    """One slot; a request predicted short (ranked first) but 300 tokens long runs 40 steps,
    then a short one arrives. Returns both, the engine events, the scheduler and the ledger."""
    clock = VirtualClock()
    policy = PolicyConfig(name="ltr", starvation_threshold=10_000)
    config = SchedulerConfig(policy=policy, preemption=preemption)
    scheduler = Scheduler(config, clock, latency=LATENCY)
    ledger = Ledger()
    engine = make_engine(ledger, max_num_seqs=1, num_kv_blocks=64, enable_prefix_caching=True)
    register(scheduler, engine)
    long = Request("long", 100, 300, 0.0, output_tokens=300, score=0.0, predicted_tokens=20.0)
    scheduler.submit(long)
    events = []

    def run(steps: int) -> None:
        for _ in range(steps):
            for d in scheduler.schedule():
                engine.add(d)
            for end in scheduler.take_early_ends():
                engine.end_early(end.request_id)
            if not engine.has_work():
                return
            clock.advance_to(clock.now() + 0.01)
            ev = engine.events(engine.step())
            events.append(ev)
            scheduler.apply(ev)

    run(40)
    assert long.state is RequestState.RUNNING and long.generated >= 30
    short = Request("short", 50, 10, clock.now(), output_tokens=10, score=1.0, predicted_tokens=10)
    scheduler.submit(short)
    run(10_000)
    assert long.state is short.state is RequestState.FINISHED
    assert long.generated == 300 == ledger.tokens["long"] and ledger.tokens["short"] == 10
    ledger.assert_drained()
    return long, short, events, scheduler, engine


def test_the_scheduler_swaps_a_misranked_long_request_for_a_short_one():
    long, short, events, scheduler, engine = misranked(ON)
    assert short.finish_time < long.finish_time
    assert long.scheduler_preemptions == 1 == scheduler.stats().preemptions
    assert [e.ended["long"] for e in events if "long" in e.ended] == [
        FinishReason.PREEMPT,
        FinishReason.LENGTH,
    ]
    # It resumed on the same engine and found its blocks there: all but the last partial one.
    assert long.cached_tokens >= long.prompt_tokens + 30 - 2 * engine.kv.block_size


def test_new_settings_keep_the_preemption_count_and_the_learned_retained_share():
    *_, scheduler, _ = misranked(ON)
    before = scheduler.stats()
    assert before.preemptions == 1
    scheduler.reconfigure(SchedulerConfig(preemption=PreemptionConfig(enabled=True)))
    after = scheduler.stats()
    assert (after.preemptions, after.retained_share) == (1, before.retained_share)


def test_off_by_default_the_long_request_keeps_its_slot():
    assert not SchedulerConfig().preemption.enabled
    long, short, events, scheduler, _ = misranked(SchedulerConfig().preemption)
    assert short.finish_time > long.finish_time
    assert scheduler.stats().preemptions == 0 and long.num_dispatches == 1


def _share_s(context: int, batch: int) -> float:
    return LATENCY.decode_step_s(batch, max(64, round(context / 64) * 64)) / batch


def test_a_slice_runs_until_its_resume_costs_at_most_the_overhead_of_its_engine_time():
    policy = PolicyConfig(name="ltr", slice_max_overhead=0.1)
    for context, batch in [(8, 32), (100, 32), (1000, 4), (4000, 32)]:
        r = Request("r", context, 100_000, 0.0)
        n = slice_tokens(10, r, batch, LATENCY, policy)
        resume_s = LATENCY.joined_prefill_s(context, batch - 1, max(64, round(context / 64) * 64))
        assert n >= 10 and resume_s <= 0.1 * n * _share_s(context, batch)
        if n > 10:  # and no longer than that
            assert resume_s > 0.1 * (n - 1) * _share_s(context, batch)
    short, long = Request("s", 100, 100_000, 0.0), Request("l", 4000, 100_000, 0.0)
    assert slice_tokens(10, short, 32, LATENCY, policy) < slice_tokens(
        10, long, 32, LATENCY, policy
    )


def test_slices_stay_as_the_policy_gives_them_without_an_overhead_bound_or_a_quantum():
    r = Request("r", 4000, 100_000, 0.0)
    fixed = PolicyConfig(name="ltr", slice_max_overhead=None)
    assert slice_tokens(10, r, 32, LATENCY, fixed) == 10
    assert slice_tokens(None, r, 32, LATENCY, PolicyConfig(name="ltr")) is None
    done_soon = Request("d", 4000, 5, 0.0)  # the quantum reaches its end already
    assert slice_tokens(10, done_soon, 32, LATENCY, PolicyConfig(name="ltr")) == 10


def _roomy_replica(victim: Request) -> tuple[ReplicaView, dict[str, Request]]:
    """`victim` running on a replica of 8 slots with three requests that have no prediction,
    and 5,000 of its 10,000 blocks free."""
    view = ReplicaView("r0", 8, 10_000, 16, reported_free_blocks=5_000)
    running = {victim.request_id: victim}
    for i in range(3):
        other = Request(f"other{i}", 100, 400, 0.0)
        other.state, other.replica_id = RequestState.RUNNING, "r0"
        running[other.request_id] = other
    for rid in running:
        view.assign(rid, 0)
    return view, running


def _swap_decided(swaps: Swaps, victim: Request, now: float = 0.0) -> bool:
    """Whether `swaps` preempts `victim` (on `_roomy_replica`) for a short waiting request."""
    view, running = _roomy_replica(victim)
    swaps.consider(iter([req("short", 10.0)]), lambda r: 0.0, [view], running, now)
    return bool(swaps.take_early_ends())


def _long_victim(rid: str) -> Request:
    """8,000 tokens of context, ranked first wrongly: it overran its prediction of 20."""
    victim = Request(rid, 7_900, 400, 0.0, predicted_tokens=20, dispatch_priority=-5.0)
    victim.generated, victim.state, victim.num_dispatches = 100, RequestState.RUNNING, 1
    victim.replica_id = "r0"
    return victim


def _preempt_a_short_context(swaps: Swaps, now: float = 0.0) -> Request:
    """A preemption that pays even recomputed; the victim is left queued."""
    victim = req(f"cheap@{now}", 20.0, generated=400, dispatch_priority=-5.0)
    victim.state, victim.replica_id, victim.num_dispatches = RequestState.RUNNING, "r0", 1
    assert _swap_decided(swaps, victim, now)
    victim.state, victim.replica_id = RequestState.QUEUED, None
    return victim


def _learn_a_resume_wait(swaps: Swaps, wait_s: float) -> None:
    swaps.dispatched(_preempt_a_short_context(swaps), "r0", wait_s)
    assert swaps.resume_wait_s == wait_s


def _give_kv(swaps: Swaps, seconds: range) -> None:
    """2,000 tokens a second to r0 (each request 100 + its 25 expected, 16 a second)."""
    for t in seconds:
        for i in range(16):
            swaps.dispatched(req(f"n{t}.{i}", 25.0), "r0", float(t))


def test_a_long_context_counts_retained_only_once_resumes_are_known_to_come_in_time():
    swaps = swaps_on()
    # Before any resume, its 8,000 tokens count as recomputed: a prefill its batch of 4 waits
    # for, which outweighs the gain.
    assert not _swap_decided(swaps, _long_victim("v0"))
    _learn_a_resume_wait(swaps, 0.5)
    # Little else came to its replica: its blocks stay long enough, and the swap pays.
    assert _swap_decided(swaps, _long_victim("v1"), now=1.0)


@pytest.mark.parametrize("resume_wait_s, pays", [(2.0, True), (60.0, False)])
def test_a_replica_keeps_a_paused_context_only_until_the_kv_given_to_it_since_fills_its_free_blocks(
    resume_wait_s: float, pays: bool
):
    swaps = swaps_on()
    _learn_a_resume_wait(swaps, resume_wait_s)
    _give_kv(swaps, range(60))
    view, _ = _roomy_replica(_long_victim("x"))
    assert 38 < swaps.churn.keeps_for_s(view, 59.0) < 42  # 5,000 free blocks of 16 tokens
    assert _swap_decided(swaps, _long_victim("v"), now=59.0) is pays


def test_a_victim_still_waiting_counts_in_the_wait_before_its_own_resume_is_measured():
    swaps = swaps_on()
    _learn_a_resume_wait(swaps, 0.5)
    _give_kv(swaps, range(60))  # the replica keeps a paused context about 40 s
    stuck = _preempt_a_short_context(swaps, now=59.0)
    _give_kv(swaps, range(60, 110))
    # 50 s on, it still waits: longer than the replica keeps blocks, whatever the resume
    # measured so far (0.5 s) says.
    assert not _swap_decided(swaps, _long_victim("v"), now=109.0)
    swaps.dispatched(stuck, "r0", 109.0)  # it resumes: the moving average takes its 50 s
    assert 5 < swaps.resume_wait_s < 6
    assert _swap_decided(swaps, _long_victim("w"), now=109.0)


def test_the_resume_cost_learns_how_much_of_a_preempted_context_the_engines_kept():
    swaps = swaps_on()
    _learn_a_resume_wait(swaps, 0.0)
    for i in range(40):  # each resume found nothing cached (it moved, or was evicted)
        victim = _long_victim(f"v{i}")
        decided = _swap_decided(swaps, victim)
        if not decided:
            break
        victim.num_dispatches += 1  # its resume
        swaps.found_cached(victim, 0)
    # Counted retained, the 8,000 tokens cost one block's prefill and the swap pays; once
    # resumes showed they were not, their prefill outweighs the gain.
    assert i > 0 and not decided and swaps.retained_share < 0.9
    swaps.found_cached(victim, 8_000)  # no resume of a preemption in flight: no news
    assert swaps.retained_share < 0.9


def test_kv_churn_measures_the_kv_given_to_each_replica_over_its_window():
    churn = KvChurn(window_s=10.0)
    view = ReplicaView("r0", 8, 1_000, 16, reported_free_blocks=500)
    assert churn.keeps_for_s(view, 0.0) == float("inf")  # nothing came: nothing evicts
    for t in range(10):
        churn.dispatched("r0", 800.0, float(t))
        churn.dispatched("r1", 5_000.0, float(t))  # another replica's churn is not r0's
    assert churn.tokens_per_s("r0", 9.0) == 800.0
    assert churn.keeps_for_s(view, 9.0) == 500 * 16 / 800.0
    assert churn.tokens_per_s("r0", 19.5) == 0.0  # all of it out of the window


def _resumed_on(preemption: PreemptionConfig) -> tuple[str, Request]:
    """Two replicas of one slot. Twice over, a long request misranked short runs on r0 and one
    without a prediction on r1; a short one arrives and takes r0's slot, and r1's request ends
    first. Returns where the second long request resumed, and it."""
    clock = VirtualClock()
    policy = PolicyConfig(name="ltr", starvation_threshold=10_000)
    scheduler = Scheduler(SchedulerConfig(policy=policy, preemption=preemption), clock, LATENCY)
    ledger = Ledger()
    engines = {}
    for rid in ("r0", "r1"):
        engines[rid] = make_engine(
            ledger, rid, max_num_seqs=1, num_kv_blocks=64, enable_prefix_caching=True
        )
        register(scheduler, engines[rid])
    placed: list[tuple[str, str]] = []

    def run(steps: int) -> None:
        for _ in range(steps):
            for d in scheduler.schedule():
                placed.append((d.request.request_id, d.replica_id))
                engines[d.replica_id].add(d)
            for end in scheduler.take_early_ends():
                engines[end.replica_id].end_early(end.request_id)
            active = [e for e in engines.values() if e.has_work()]
            if not active:
                return
            clock.advance_to(clock.now() + 0.01)
            for e in active:
                scheduler.apply(e.events(e.step()))

    for n in (1, 2):  # the first teaches the scheduler how long a resume waits
        now = clock.now()
        long = Request(f"long{n}", 100, 300, now, output_tokens=300, score=0.0, predicted_tokens=20)
        scheduler.submit(long)
        scheduler.submit(Request(f"other{n}", 100, 45, now, output_tokens=45, score=0.5))
        run(40)
        short = Request(f"short{n}", 50, 10, clock.now(), output_tokens=10, score=1.0)
        short.predicted_tokens = 10
        scheduler.submit(short)
        run(10_000)
        assert (
            long.scheduler_preemptions == 1
            and long.generated == 300 == ledger.tokens[long.request_id]
        )
    ledger.assert_drained()
    return [replica for rid, replica in placed if rid == "long2"][-1], long


def test_a_preempted_request_waits_for_the_replica_that_keeps_its_kv_rather_than_move():
    replica, long = _resumed_on(ON)
    assert replica == "r0" and long.cached_tokens >= 100 + 40 - 2 * 16  # found its blocks
    # Expected to find nothing cached anyway, it takes the first free slot.
    replica, long = _resumed_on(dataclasses.replace(ON, kv_retention=False))
    assert replica == "r1"
