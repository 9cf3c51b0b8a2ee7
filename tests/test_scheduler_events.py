"""The scheduler's input side: engine events applied (what ended, aborts, late news, a dropped
replica's load), the dispatch's final/slice decision, the ingress's record of delivered tokens,
and reconfiguration when idle."""

from __future__ import annotations

import pytest

from cluster.config import SchedulerConfig
from cluster.events import FinishReason
from cluster.request import RequestState
from tests.support import events, make_request, report_load, run_through
from tests.support import make_scheduler as scheduler

request = make_request
report = report_load


def test_a_dispatch_is_final_only_when_its_budget_reaches_the_request_end():
    sched, _ = scheduler("fcfs", slice_tokens=10)
    sched.add_replica("a", max_num_seqs=4, total_kv_blocks=1000, block_size=16)
    sched.submit(request("long", output=25))
    sched.submit(request("short", output=10))
    long, short = sched.schedule()
    assert (long.max_new_tokens, long.final) == (10, False)
    assert (short.max_new_tokens, short.final) == (10, True)
    run_through(sched, "long", 10, FinishReason.SLICE)
    (again,) = sched.schedule()
    assert (again.max_new_tokens, again.final) == (10, False)
    run_through(sched, "long", 10, FinishReason.SLICE)
    (last,) = sched.schedule()
    assert (last.max_new_tokens, last.final) == (5, True)


def test_apply_returns_what_ended_and_an_abort_is_a_failure():
    sched, _ = scheduler()
    sched.add_replica("a", max_num_seqs=4, total_kv_blocks=1000, block_size=16)
    for rid in ("done", "gone", "broke", "sliced"):
        sched.submit(request(rid, output=20))
    sched.schedule()
    ended = sched.apply(
        events(
            started=["done", "gone", "broke", "sliced"],
            tokens={"done": 20, "gone": 3, "broke": 1, "sliced": 4},
            ended={
                "done": FinishReason.STOP,
                "gone": FinishReason.ABORT,
                "sliced": FinishReason.SLICE,
            },
            failed={"broke": "EngineRequestError: boom"},
        )
    )
    assert [r.request_id for r in ended] == ["done", "gone", "broke"]
    assert sched.get("done").state is RequestState.FINISHED
    assert (sched.get("gone").state, sched.get("gone").error) == (RequestState.FAILED, "aborted")
    assert sched.get("broke").error == "EngineRequestError: boom"
    assert sched.get("sliced").state is RequestState.QUEUED and sched.get("sliced").generated == 4
    stats = sched.stats()
    assert (stats.finished, stats.failed, stats.slices, stats.queued) == (1, 2, 1, 1)


def test_the_load_of_a_dropped_replica_is_ignored():
    sched, _ = scheduler()
    sched.add_replica("a", max_num_seqs=4, total_kv_blocks=100, block_size=16)
    sched.remove_replica("a")
    report(sched, "a", 10, 100)  # a late report of a replica that is gone: no error
    assert sched.replica_ids == []


def test_resume_from_sets_the_count_to_what_the_caller_holds_and_takes_back_a_stale_dispatch():
    sched, _ = scheduler("fcfs")
    sched.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    sched.add_replica("b", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    sched.submit(request("q", output=30))
    (d,) = sched.schedule()
    sched.apply(events(d.replica_id, started=["q"], tokens={"q": 4}))  # later reports were lost
    sched.remove_replica(d.replica_id)  # ... because the replica died
    (again,) = sched.schedule()  # dispatched on the 4 tokens the scheduler heard of
    assert again.max_new_tokens == 26
    assert not sched.resume_from("q", 4)  # the caller holds as many: the dispatch stands
    assert sched.resume_from("q", 9)  # it holds 9: the stale dispatch is taken back
    r = sched.get("q")
    assert r.state is RequestState.QUEUED and r.generated == 9 and r.replica_id is None
    (fresh,) = sched.schedule()
    assert (fresh.max_new_tokens, fresh.final) == (21, True)
    sched.apply(events(fresh.replica_id, started=["q"]))
    assert not sched.resume_from("q", 0)  # running: its replica's reports are the record


def test_a_caller_that_holds_all_its_tokens_finishes_the_request_wherever_it_waits():
    """Whatever the scheduler counted (a replayed report can leave its count short), a caller
    that holds `max_tokens` ends the request: no dispatch runs for tokens nobody asked for."""
    sched, _ = scheduler("fcfs")
    sched.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    sched.submit(request("dispatched", output=30))
    sched.submit(request("queued", output=20))
    assert len(sched.schedule()) == 1  # "queued" waits: the replica has one slot
    assert sched.resume_from("dispatched", 30) and sched.resume_from("queued", 20)
    for rid in ("dispatched", "queued"):
        assert sched.get(rid).state is RequestState.FINISHED and sched.get(rid).generated
    stats = sched.stats()
    assert (stats.finished, stats.in_flight, sched.schedule()) == (2, 0, [])
    assert sched.is_idle("a")


def test_reconfigure_only_when_idle_and_counters_stay():
    sched, _ = scheduler("fcfs")
    sched.add_replica("a", max_num_seqs=4, total_kv_blocks=1000, block_size=16)
    sched.submit(request("q", output=5))
    sched.schedule()
    with pytest.raises(RuntimeError, match="1 requests in flight"):
        sched.reconfigure(SchedulerConfig())
    run_through(sched, "q", 5)
    rounds = sched.stats().rounds
    sched.reconfigure(SchedulerConfig(routing="power_of_two"))
    assert sched.config.policy.name == "ltr" and sched.replica_ids == ["a"]
    stats = sched.stats()
    assert (stats.finished, stats.rounds) == (1, rounds)
    sched.submit(request("next", output=5, score=1.0))
    assert [d.request.request_id for d in sched.schedule()] == ["next"]
    assert sched.stats().rounds == rounds + 1


def test_a_restarted_host_restores_running_and_queued_requests_and_carries_on():
    """What a scheduler that died rebuilds from: a replica's snapshot (running, with tokens so
    far) and an ingress's record (queued, with what its client holds)."""
    sched, _ = scheduler("fcfs")
    sched.add_replica("a", max_num_seqs=2, total_kv_blocks=1000, block_size=16)
    running = request("running", output=30)
    running.generated, running.num_dispatches = 12, 2
    sched.restore(running, "a")
    waiting = request("waiting", output=20)
    waiting.generated = 5
    sched.restore(waiting)
    assert running.state is RequestState.RUNNING and running.replica_id == "a"
    assert waiting.state is RequestState.QUEUED and waiting in sched.queue
    with pytest.raises(ValueError, match="duplicate"):
        sched.restore(request("running"))
    (d,) = sched.schedule()  # one slot left on a: the queued one, for what it has left
    assert d.request is waiting and (d.max_new_tokens, d.final) == (15, True)
    # the running one goes on: its replica's next reports are applied as usual
    ended = sched.apply(events("a", tokens={"running": 18}, ended={"running": FinishReason.LENGTH}))
    assert ended == [running] and running.generated == 30
    assert running.num_dispatches == 2  # the dispatch it was on, not a new one
    report(sched, "a", 1000, 1000)
    run_through(sched, "waiting", 15)
    assert sched.stats().finished == 2 and sched.stats().dispatched == 0


def test_news_of_a_request_from_a_replica_it_is_not_on_is_stale():
    sched, _ = scheduler("fcfs")
    sched.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    sched.add_replica("b", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
    sched.submit(request("q", output=10))
    (d,) = sched.schedule()
    other = "b" if d.replica_id == "a" else "a"
    assert sched.apply(events(other, tokens={"q": 10}, ended={"q": FinishReason.LENGTH})) == []
    assert sched.get("q").state is RequestState.DISPATCHED and sched.get("q").generated == 0
