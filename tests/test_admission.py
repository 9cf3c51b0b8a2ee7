"""Admission control in the core: the queue's bounds (count, expected drain time, deadline),
tenant shares, and, over random overloads, that every request is either served exactly once
with all its tokens or refused before it produced any."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.admission import ShedReason
from cluster.clock import VirtualClock
from cluster.config import AdmissionConfig, EngineConfig, PolicyConfig, SchedulerConfig
from cluster.events import EngineEvents, FinishReason
from cluster.request import Request, RequestState
from cluster.scheduler import Scheduler
from cluster.service_rate import ServiceRate
from cluster.sim.simulator import SimulationConfig, simulate
from tests.sim_audit import Ledger
from tests.test_properties import PROFILE, fast, scenarios


def scheduler(**admission) -> tuple[Scheduler, VirtualClock]:
    clock = VirtualClock()
    config = SchedulerConfig(policy=PolicyConfig("fcfs"), admission=AdmissionConfig(**admission))
    return Scheduler(config, clock), clock


def req(i: int, tenant: str | None = None, max_tokens: int = 100, **kw) -> Request:
    return Request(f"r{i}", 10, max_tokens, arrival_time=0.0, tenant=tenant, **kw)


def test_a_full_queue_refuses_with_a_reason_and_keeps_nothing():
    core, _ = scheduler(max_queued=3)
    assert all(core.admit(req(i)) is None for i in range(3))
    refusal = core.admit(req(3))
    assert refusal is not None and refusal.reason is ShedReason.QUEUE_FULL
    assert refusal.reason.http_status == 429 and refusal.retry_after_s >= 1
    assert "max_queued=3" in refusal.message
    assert len(core.queue) == 3 and "r3" not in {r.request_id for r in core.requests()}
    assert core.stats().shed == {"queue_full": 1}


def test_the_wait_bound_holds_once_a_rate_is_measured():
    core, clock = scheduler(max_queue_wait_s=10.0)
    core.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    # Before any rate is known only a count bound could refuse: 50 x 100 tokens go in.
    assert all(core.admit(req(i)) is None for i in range(50))
    (first,) = core.schedule()
    for step in range(1, 11):  # 100 tokens/s measured over 10 s
        clock.advance_to(float(step))
        core.apply(EngineEvents("a", started=[first.request.request_id], tokens={"r0": 100}))
    refusal = core.admit(req(99))
    assert refusal is not None and refusal.reason is ShedReason.WAIT_TOO_LONG
    # 49 x 100 tokens queued at ~100 tokens/s: ~50 s to drain, 40 s over the bound.
    assert 30 <= refusal.retry_after_s <= 60
    assert "tokens/s" in refusal.message


def test_predicted_lengths_make_the_wait_estimate():
    core, clock = scheduler(max_queue_wait_s=10.0)
    core.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    core.admit(req(0, max_tokens=2000))
    core.admit(req(1, max_tokens=2000, predicted_tokens=50.0))  # waits: the rate is capacity
    (first,) = core.schedule()
    for step in range(1, 11):
        clock.advance_to(float(step))
        core.apply(EngineEvents("a", started=["r0"], tokens={"r0": 100}))
    # Short predicted answers under a large max_tokens: 9 x 50 tokens is ~5 s of work.
    for i in range(2, 10):
        assert core.admit(req(i, max_tokens=2000, predicted_tokens=50.0)) is None
    assert core.admit(req(10, max_tokens=2000)) is not None  # 2000 tokens more: too long


def test_a_trickle_does_not_make_a_burst_look_slow():
    """Light traffic is served as it comes: what the engines produce then is the demand, not
    what they can do, so a burst after it is admitted on the count bound alone."""
    core, clock = scheduler(max_queue_wait_s=10.0)
    core.add_replica("a", max_num_seqs=4, total_kv_blocks=1000, block_size=16)
    for i in range(20):  # one 2-token answer every 0.5 s, never a queue
        clock.advance_to(0.5 * i)
        core.admit(req(i, max_tokens=2))
        core.schedule()
        ended = {f"r{i}": FinishReason.LENGTH}
        core.apply(EngineEvents("a", started=[f"r{i}"], tokens={f"r{i}": 2}, ended=ended))
    assert all(core.admit(req(100 + i)) is None for i in range(30))  # 3000 tokens at once


def test_the_rate_counts_only_time_with_a_queue():
    rate = ServiceRate(window_s=60.0)
    rate.record(0.0, tokens=10, backlogged=False)
    rate.record(30.0, tokens=10, backlogged=True)  # 30 s idle before the queue formed
    assert rate.tokens_per_s(30.0) is None
    for t in range(31, 36):  # then 100 tokens a second with requests waiting
        rate.record(float(t), tokens=100, completions=2, backlogged=True)
    assert rate.tokens_per_s(35.0) == pytest.approx(100.0)
    assert rate.completions_per_s(35.0) == pytest.approx(2.0)


def test_a_scorer_that_predicts_too_short_cannot_let_the_queue_grow():
    core, clock = scheduler(max_queue_wait_s=10.0)
    for i in range(20):
        assert core.admit(req(i, predicted_tokens=1.0)) is None
    for t in range(1, 11):  # 1000 tokens/s, but only one answer a second
        clock.advance_to(float(t))
        core.rate.record(clock.now(), tokens=1000, completions=1)
    # 20 x 1 predicted token is nothing at 1000 tokens/s; 20 requests at 1/s are 20 s.
    refusal = core.admit(req(20, predicted_tokens=1.0))
    assert refusal is not None and "requests/s" in refusal.message


def test_the_queue_deadline_drops_only_requests_never_dispatched():
    core, clock = scheduler(queue_timeout_s=5.0)
    core.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    core.admit(req(0))
    core.admit(req(1))
    core.schedule()  # r0 runs, r1 waits
    clock.advance_to(6.0)
    assert core.schedule() == []
    (dropped,) = core.take_rejected()
    assert dropped.request_id == "r1" and dropped.state is RequestState.FAILED
    assert dropped.refusal.reason is ShedReason.QUEUE_TIMEOUT
    assert dropped.refusal.reason.http_status == 408
    assert core.get("r0").state is RequestState.DISPATCHED
    assert core.stats().shed == {"queue_timeout": 1}


def test_a_tenant_over_its_share_is_shed_first():
    core, _ = scheduler(max_queued=4, tenant_shares=("big=1", "small=1"))
    for i in range(4):
        assert core.admit(req(i, tenant="big")) is None
    assert core.admit(req(4, tenant="big")).reason is ShedReason.QUEUE_FULL
    assert core.admit(req(5, tenant="small")) is None  # takes the newest of big's places
    (evicted,) = core.take_rejected()
    assert evicted.request_id == "r3" and evicted.refusal.reason is ShedReason.TENANT_OVER_SHARE
    assert core.admit(req(6, tenant="small")) is None  # small is still within its half
    assert core.admit(req(7, tenant="small")).reason is ShedReason.QUEUE_FULL  # now both at 2
    queued = sorted(r.request_id for r in core.requests() if r.state is RequestState.QUEUED)
    assert queued == ["r0", "r1", "r5", "r6"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queued": -1},
        {"max_queue_wait_s": 0},
        {"queue_timeout_s": -2.0},
        {"tenant_shares": ("a",)},
        {"tenant_shares": ("a=0",)},
        {"tenant_shares": ("=1",)},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="admission"):
        AdmissionConfig(**kwargs)


@fast(60)
@given(
    scenarios(max_requests=40),
    st.integers(0, 8),
    st.none() | st.floats(0.5, 5.0),
    st.none() | st.floats(0.05, 2.0),
    st.lists(st.sampled_from(["a", "b", None]), min_size=40, max_size=40),
)
def test_overload_serves_each_request_exactly_once_or_refuses_it_untouched(
    scenario, max_queued, max_wait, timeout, tenants
):
    items, config = scenario
    items = [dataclasses.replace(it, tenant=t) for it, t in zip(items, tenants, strict=False)]
    admission = AdmissionConfig(
        max_queued=max_queued,
        max_queue_wait_s=max_wait,
        queue_timeout_s=timeout,
        tenant_shares=("a=2",),
    )
    config = dataclasses.replace(
        config, scheduler=dataclasses.replace(config.scheduler, admission=admission)
    )
    ledger = Ledger()
    result = simulate(items, config, engine_factory=ledger.engine_factory)
    ledger.assert_drained()
    want = {it.request_id: it.output_tokens for it in items}
    served = [r for r in result.requests if r.state is RequestState.FINISHED]
    for r in served:
        assert r.generated == want[r.request_id] == ledger.tokens[r.request_id]
        assert ledger.finishes[r.request_id] == 1
    refused = [r for r in result.requests if r.state is RequestState.FAILED]
    for r in refused:  # at arrival or dropped from the queue: never ran, and said why
        assert r.refusal is not None and r.num_dispatches == 0 and r.generated == 0
        assert ledger.tokens.get(r.request_id, 0) == 0
    assert len(served) + len(refused) == len(items)
    assert sum(result.shed.values()) == len(refused)
    assert result.unfinished == 0 and result.metrics.completions == len(served)
    from_queue = {ShedReason.QUEUE_TIMEOUT, ShedReason.TENANT_OVER_SHARE}
    assert result.metrics.failed == sum(r.refusal.reason in from_queue for r in refused)


def test_overload_in_the_simulator_bounds_the_wait_of_those_admitted():
    from cluster.workload.arrivals import arrival_times
    from cluster.workload.workload import WorkloadItem

    n = 3000
    times = arrival_times("poisson:200", n, 0)  # ~3x what one replica serves
    items = [
        WorkloadItem(
            f"q{i}", float(times[i]), None, 200, 60 + (i * 37) % 300, None, None, None, None
        )
        for i in range(n)
    ]

    def run(admission: AdmissionConfig):
        config = SimulationConfig(
            SchedulerConfig(policy=PolicyConfig("fcfs"), admission=admission),
            EngineConfig(),
            PROFILE,
        )
        return simulate(items, config)

    unbounded = run(AdmissionConfig())
    bounded = run(AdmissionConfig(max_queue_wait_s=5.0))
    assert unbounded.metrics.max_wait_s.p99 > 15
    assert bounded.shed.get("wait_too_long", 0) > n // 10
    assert bounded.metrics.max_wait_s.p99 < 8  # the bound, plus the estimate's error
