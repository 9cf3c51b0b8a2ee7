"""Scheduler-driven preemption: the decision's guards and cost model (`cluster.preemption`),
and the swap carried out by the scheduler and a simulated engine (`cluster.swaps`)."""

from __future__ import annotations

from cluster.clock import VirtualClock
from cluster.config import PolicyConfig, PreemptionConfig, SchedulerConfig
from cluster.events import FinishReason
from cluster.latency_model import LatencyModel
from cluster.policies.base import PROMOTED_PRIORITY
from cluster.preemption import Running, choose_swap, expected_remaining, slice_tokens
from cluster.replicas import ReplicaView
from cluster.request import Request, RequestState
from cluster.scheduler import Scheduler
from cluster.swaps import Swaps
from tests.sim_audit import Ledger, make_engine, register

LATENCY = LatencyModel.named("a100-llama3-8b")
ON = PreemptionConfig(enabled=True, min_run_tokens=8, max_per_request=2, min_gain_ratio=4.0)


def req(rid: str, predicted: float | None, generated: int = 0, max_tokens: int = 2000, **kw):
    r = Request(rid, 100, max_tokens, 0.0, predicted_tokens=predicted, **kw)
    r.generated = generated
    return r


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


def _swap_decided(swaps: Swaps, victim: Request) -> bool:
    """Whether `swaps` preempts `victim` (8,000 tokens of context, on a roomy replica with
    three requests that have no prediction) for a short waiting request."""
    view = ReplicaView("r0", 8, 10_000, 16, reported_free_blocks=5_000)
    running = {victim.request_id: victim}
    for i in range(3):
        other = Request(f"other{i}", 100, 400, 0.0)
        other.state, other.replica_id = RequestState.RUNNING, "r0"
        running[other.request_id] = other
    for rid in running:
        view.assign(rid, 0)
    waiting = req("short", 10.0)
    swaps.consider(iter([waiting]), lambda r: 0.0, [view], running)
    return bool(swaps.take_early_ends())


def test_the_resume_cost_learns_how_much_of_a_preempted_context_the_engines_kept():
    swaps = Swaps(ON, LATENCY, "a100-llama3-8b")
    for i in range(40):  # each resume found nothing cached: evicted while it waited
        # ranked first, wrongly: it overran its prediction of 20 tokens
        victim = Request(f"v{i}", 7_900, 400, 0.0, predicted_tokens=20, dispatch_priority=-5.0)
        victim.generated, victim.state, victim.num_dispatches = 100, RequestState.RUNNING, 1
        victim.replica_id = "r0"
        decided = _swap_decided(swaps, victim)
        if not decided:
            break
        victim.num_dispatches += 1  # its resume
        swaps.found_cached(victim, 0)
    # Counted retained, the 8,000 tokens cost one block's prefill and the swap pays; once
    # resumes showed they were not, their prefill (which its batch of 4 waits for) outweighs
    # the gain.
    assert i > 0 and not decided and swaps.retained_share < 0.9
    swaps.found_cached(victim, 8_000)  # no resume of a preemption in flight: no news
    assert swaps.retained_share < 0.9
