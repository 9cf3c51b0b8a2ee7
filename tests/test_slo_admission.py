"""SLO-aware admission (cluster.slo_admission) in the scheduler core: a request whose SLO no
replica could meet even at the head of the queue is refused 429 `slo_unreachable` (or demoted
to the best-effort class), one that some replica could still serve in time is admitted; the
settings' validation; and the refusals and demotions in the status and its metrics."""

from __future__ import annotations

import pytest

from cluster.admission import ShedReason
from cluster.clock import VirtualClock
from cluster.config import AdmissionConfig, PolicyConfig, SchedulerConfig, SLOClass, SLOConfig
from cluster.latency_model import LatencyModel
from cluster.request import Request, RequestState
from cluster.scheduler import Scheduler

PROFILE = "a100-llama3-8b"
SLOS = SLOConfig(
    (
        SLOClass("loose", e2e_s=600.0),
        SLOClass("tight", e2e_s=5.0),
        SLOClass("chat", ttft_s=1.0, tpot_s=0.05),
        SLOClass("best_effort", e2e_s=3600.0),
    ),
    default="loose",
)


def core(
    mode: str = "reject",
    replicas: int = 1,
    seqs: int = 1,
    best_effort: str | None = None,
    slos: SLOConfig = SLOS,
) -> Scheduler:
    admission = AdmissionConfig(slo_unreachable=mode, best_effort_class=best_effort)
    config = SchedulerConfig(policy=PolicyConfig("fcfs"), admission=admission, slo=slos)
    sched = Scheduler(config, VirtualClock(), latency=LatencyModel.named(PROFILE))
    for i in range(replicas):
        sched.add_replica(f"r{i}", max_num_seqs=seqs, total_kv_blocks=10_000, block_size=16)
    return sched


def req(rid: str, slo: str | None = None, max_tokens: int = 200, **kw) -> Request:
    return Request(rid, 100, max_tokens, arrival_time=0.0, slo=slo, **kw)


def fill(sched: Scheduler, n: int, tokens: int = 2000) -> None:
    """`n` long loose requests, dispatched: one per slot."""
    for i in range(n):
        assert sched.admit(req(f"long{i}", max_tokens=tokens)) is None
    assert len(sched.schedule()) == n


def test_a_tight_e2e_request_on_a_full_cluster_is_refused_at_once_with_429():
    sched = core(replicas=2)
    fill(sched, 2)  # both replicas' only slot: 2000 tokens to go each, ~25 s at one token a step
    refusal = sched.admit(req("t", "tight"))
    assert refusal is not None and refusal.reason is ShedReason.SLO_UNREACHABLE
    assert refusal.reason.http_status == 429 and refusal.reason.value == "slo_unreachable"
    assert "'tight'" in refusal.message and "e2e_s=5" in refusal.message
    assert "waiting for a slot" in refusal.message and "any of 2 replica(s)" in refusal.message
    assert refusal.retry_after_s > 5  # about when the first slot frees
    assert "t" not in {r.request_id for r in sched.requests()} and len(sched.queue) == 0
    assert sched.stats().shed == {"slo_unreachable": 1}


def test_the_same_request_is_admitted_with_a_free_slot_or_a_loose_bound():
    free = core(seqs=2)
    fill(free, 1)  # one slot of two busy: it would start at once, ~2.5 s of work
    assert free.admit(req("t", "tight")) is None
    full = core(replicas=2)
    fill(full, 2)
    assert full.admit(req("l", "loose")) is None  # waits ~25 s, well within 600 s
    one_free = core(replicas=2)
    fill(one_free, 1)  # r0 full, r1 idle: one replica that can meet it is enough
    assert one_free.admit(req("t", "tight")) is None
    assert [r.request_id for r in one_free.queue.ordered(0.0)] == ["t"]


def test_a_request_too_long_for_its_bound_even_alone_is_refused():
    sched = core(seqs=8)  # an idle replica
    refusal = sched.admit(req("t", "tight", max_tokens=4000))  # ~50 s of decode alone
    assert refusal is not None and refusal.reason is ShedReason.SLO_UNREACHABLE
    assert "waiting" not in refusal.message
    # Its predicted length, when known, is what counts: a short answer is admitted.
    assert sched.admit(req("p", "tight", max_tokens=4000, predicted_tokens=100.0)) is None


def test_a_tpot_bound_under_the_decode_step_is_unreachable():
    slos = SLOConfig(
        (SLOClass("fast", ttft_s=10.0, tpot_s=0.001), SLOClass("chat", ttft_s=10.0, tpot_s=0.05)),
        "chat",
    )
    sched = core(seqs=8, slos=slos)
    refusal = sched.admit(req("f", "fast"))
    assert refusal is not None and "tpot_s=0.001" in refusal.message and "TPOT" in refusal.message
    assert sched.admit(req("c", "chat")) is None


def test_the_time_already_waited_counts_against_the_bound():
    sched = core(seqs=8)
    sched.clock.advance_to(10.0)
    late = Request("late", 100, 50, arrival_time=4.0, slo="tight")  # 6 s gone, bound 5 s
    assert sched.admit(late).reason is ShedReason.SLO_UNREACHABLE


def test_demote_mode_admits_it_in_the_best_effort_class():
    sched = core(mode="demote", best_effort="best_effort", replicas=2)
    fill(sched, 2)
    request = req("t", "tight")
    assert sched.admit(request) is None
    assert request.slo == "best_effort" and request.state is RequestState.QUEUED
    assert sched.stats().slo_demoted == 1 and sched.stats().shed == {}
    kept = req("k", "loose")
    assert sched.admit(kept) is None and kept.slo == "loose"  # reachable: untouched
    assert sched.stats().slo_demoted == 1


def test_off_by_default_queues_whatever_its_slo():
    sched = core(mode="off", replicas=2)
    fill(sched, 2)
    assert sched.admit(req("t", "tight")) is None and sched.stats().shed == {}


def test_a_new_setting_takes_effect_and_the_demotion_count_stays():
    sched = core(mode="demote", best_effort="best_effort")
    fill(sched, 1)
    sched.admit(req("t1", "tight"))
    sched.set_admission(AdmissionConfig(slo_unreachable="reject"))
    assert sched.admit(req("t2", "tight")).reason is ShedReason.SLO_UNREACHABLE
    assert sched.stats().slo_demoted == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slo_unreachable": "shed"}, "not one of off, reject, demote"),
        ({"slo_unreachable": "demote"}, "needs admission.best_effort_class"),
    ],
)
def test_bad_admission_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdmissionConfig(**kwargs)


def test_the_best_effort_class_must_be_one_of_the_slo_classes():
    admission = AdmissionConfig(slo_unreachable="demote", best_effort_class="bulk")
    with pytest.raises(ValueError, match="best_effort_class: unknown SLO class 'bulk'; known: "):
        SchedulerConfig(admission=admission, slo=SLOS)
    SchedulerConfig(admission=admission, slo=SLOConfig((SLOClass("bulk", e2e_s=1e4),), "bulk"))
