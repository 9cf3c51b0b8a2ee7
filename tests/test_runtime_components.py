"""The runtime's parts together on a real local Ray, below the HTTP level: the scheduler actor,
its fleet of simulated engine replicas (the simulator's engine stepped in real time) and the
ingress's GenerationPath, streaming in slices, scaling, and freeing the slot of a caller that
goes away."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

ray = pytest.importorskip("ray")

from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig  # noqa: E402
from cluster.runtime.protocol import SubmitRequest  # noqa: E402
from cluster.runtime.scheduler_actor import SchedulerActor  # noqa: E402
from cluster.runtime.scheduler_handle import scheduler_actor_options  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, replica_specs  # noqa: E402
from serve_app.generation import GenerationInput, GenerationPath, GenerationRecord  # noqa: E402
from serve_app.scoring import HeuristicScorer  # noqa: E402

SLICE = 8


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The scheduler's settings and replica specs, as an ingress deploys them."""
    replica = ReplicaConfig(
        kind="simulated", num_cpus=0.1, work_dir=str(tmp_path_factory.mktemp("sim"))
    )
    specs = replica_specs("/unused", EngineConfig(max_num_seqs=4), replica, 2)
    return SchedulerConfig(policy=PolicyConfig(name="fcfs"), slice_tokens=SLICE), specs


@pytest.fixture(scope="module")
def scheduler(ray_local, deployment):
    config, specs = deployment
    handle = (
        ray.remote(SchedulerActor).options(**scheduler_actor_options(False)).remote(config, specs)
    )
    infos = ray.get(handle.start.remote(), timeout=120)
    assert len(infos) == 2
    yield handle
    ray.get(handle.shutdown.remote(), timeout=60)
    ray.kill(handle)


def request(rid: str, max_tokens: int) -> GenerationInput:
    return GenerationInput(rid, "hello", [1, 2, 3], max_tokens, ignore_eos=True)


async def generate(path: GenerationPath, inp: GenerationInput) -> GenerationRecord:
    record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids))
    async for _ in path.stream(inp, record):
        pass
    return record


def status(scheduler) -> object:
    return ray.get(scheduler.status.remote(), timeout=30)


def wait_idle(scheduler, timeout: float = 30.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        s = status(scheduler)
        if s.queued + s.dispatched + s.running == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def wait_restarted(scheduler, timeout: float = 60.0):
    """The status of a killed scheduler (that had finished requests) from its new life: its
    counters start at 0. The kill lands a moment after `ray.kill` returns, and calls fail while
    Ray restarts the actor."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            s = status(scheduler)
            if s.finished == 0:
                return s
        except ray.exceptions.ActorUnavailableError:
            pass
        assert time.monotonic() < deadline, "the scheduler did not come back"
        time.sleep(0.2)


def test_a_sliced_request_streams_exactly_its_tokens_and_is_counted_finished(scheduler):
    before = status(scheduler)
    path = GenerationPath(scheduler, HeuristicScorer())
    record = asyncio.run(generate(path, request("one", 5 * SLICE + 3)))
    assert len(record.output_token_ids) == 5 * SLICE + 3
    assert record.dispatches == 6 and record.finish_reason == "length"
    after = wait_idle(scheduler)
    assert after.finished == before.finished + 1 and after.failed == before.failed
    assert all(r.assigned == 0 for r in after.replicas)


def test_requests_go_on_while_the_fleet_grows_and_shrinks(scheduler):
    path = GenerationPath(scheduler, HeuristicScorer())

    async def main():
        lengths = [10 + 7 * i for i in range(10)]
        tasks = [
            asyncio.create_task(generate(path, request(f"scale-{i}", n)))
            for i, n in enumerate(lengths)
        ]
        await asyncio.sleep(0.2)
        assert await scheduler.scale.remote(3) == ["replica-0", "replica-1", "replica-2"]
        await asyncio.sleep(0.2)
        assert await scheduler.scale.remote(1) == ["replica-0"]
        records = await asyncio.gather(*tasks)
        return lengths, records

    lengths, records = asyncio.run(main())
    assert [len(r.output_token_ids) for r in records] == lengths
    s = wait_idle(scheduler)
    assert [r.replica_id for r in s.replicas] == ["replica-0"]
    assert ray.get(scheduler.scale.remote(2), timeout=120) == ["replica-0", "replica-1"]


def test_a_policy_switch_waits_for_the_requests_in_flight_to_end(scheduler):
    """A switch asked for while a request streams waits for its end, then applies; the request
    keeps every token."""
    path = GenerationPath(scheduler, HeuristicScorer())

    async def main():
        streaming = asyncio.create_task(generate(path, request("during-switch", 60)))
        while (await scheduler.status.remote()).running == 0:
            await asyncio.sleep(0.01)
        await scheduler.set_policy.remote(PolicyConfig(name="ltr"))
        after = await scheduler.status.remote()
        await scheduler.set_policy.remote(PolicyConfig(name="fcfs"))
        return await streaming, after

    record, after = asyncio.run(main())
    assert len(record.output_token_ids) == 60 and record.finish_reason == "length"
    assert after.policy == "ltr" and after.queued + after.dispatched + after.running == 0


class OverBudget:
    """The scheduler actor, whose every ticket promises 5 tokens more than the request has
    left, and not as its last: as a scheduler whose count fell short of its caller's would."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    @property
    def wait_dispatch(self):
        handle = self._handle

        class Method:
            @staticmethod
            async def remote(*args):
                ticket = await handle.wait_dispatch.remote(*args)
                if ticket.error is not None:
                    return ticket
                return dataclasses.replace(
                    ticket, max_new_tokens=ticket.max_new_tokens + 5, final=False
                )

        return Method


def test_the_client_never_gets_more_than_max_tokens_whatever_the_scheduler_counted(scheduler):
    before = status(scheduler)
    path = GenerationPath(OverBudget(scheduler), HeuristicScorer())
    record = asyncio.run(generate(path, request("over-budget", 3 * SLICE + 2)))
    assert len(record.output_token_ids) == 3 * SLICE + 2 and record.finish_reason == "length"
    after = wait_idle(scheduler)
    assert after.finished == before.finished + 1 and after.failed == before.failed


def test_a_caller_that_holds_all_its_tokens_is_answered_finished(scheduler):
    """It asks for the next dispatch with all of `max_tokens` (a slice or a preemption ended on
    its last token, or the scheduler's count fell short): the request ends, counted finished."""
    before = status(scheduler)
    submit = SubmitRequest("all-held", prompt_tokens=3, max_tokens=7)

    async def main():
        assert await scheduler.submit.remote(submit) is None
        first = await scheduler.wait_dispatch.remote(submit, 0, 0)
        assert first.error is None and not first.finished
        return await scheduler.wait_dispatch.remote(submit, first.dispatch_no, 7)

    ticket = asyncio.run(main())
    assert ticket.finished and ticket.error is None
    after = wait_idle(scheduler)
    assert after.finished == before.finished + 1 and after.failed == before.failed
    assert all(r.assigned == 0 for r in after.replicas)


def test_a_caller_that_goes_away_frees_its_slot_and_counts_as_failed(scheduler):
    before = status(scheduler)
    path = GenerationPath(scheduler, HeuristicScorer())

    async def main():
        record = GenerationRecord(prompt_tokens=3)
        stream = path.stream(request("quitter", 500), record)
        async for chunk in stream:
            if chunk.token_ids:
                break
        await stream.aclose()

    asyncio.run(main())
    after = wait_idle(scheduler)
    assert after.failed == before.failed + 1 and after.finished == before.finished
    assert all(r.assigned == 0 for r in after.replicas)


def test_a_restarted_scheduler_takes_back_the_fleet_as_it_was_and_the_requests_in_flight(
    scheduler,
):
    """Killed mid-load after a scale-up: Ray restarts it, and it takes back the 3 live
    replicas and what they run."""
    path = GenerationPath(scheduler, HeuristicScorer())
    assert ray.get(scheduler.scale.remote(3), timeout=120) == [
        "replica-0",
        "replica-1",
        "replica-2",
    ]

    async def main():
        lengths = [30 + 11 * i for i in range(9)]
        tasks = [
            asyncio.create_task(generate(path, request(f"restart-{i}", n)))
            for i, n in enumerate(lengths)
        ]
        await asyncio.sleep(0.3)
        ray.kill(scheduler, no_restart=False)  # as a crash: Ray restarts it
        return lengths, await asyncio.gather(*tasks)

    lengths, records = asyncio.run(main())
    assert [len(r.output_token_ids) for r in records] == lengths
    s = wait_idle(scheduler)
    assert [r.replica_id for r in s.replicas] == ["replica-0", "replica-1", "replica-2"]
    assert all(r.alive for r in s.replicas)
    record = asyncio.run(generate(path, request("after-restart", 12)))
    assert len(record.output_token_ids) == 12


def test_an_ingress_that_restarts_leaves_the_fleet_as_scaled_and_a_new_deployment_applies(
    scheduler, deployment
):
    """Each ingress replica reconciles the scheduler to its deployment as it starts: one that
    Serve restarts re-applies the deployment applied last, which must not undo a scale-up or a
    policy switch made since; a changed deployment does apply."""
    config, specs = deployment
    ids = ["replica-0", "replica-1", "replica-2"]
    assert ray.get(scheduler.scale.remote(3), timeout=120) == ids
    ray.get(scheduler.set_policy.remote(PolicyConfig(name="ltr")), timeout=30)
    ray.get(scheduler.reconcile.remote(config, specs), timeout=120)
    assert [r.replica_id for r in status(scheduler).replicas] == ids
    assert status(scheduler).policy == "ltr"
    ray.get(scheduler.reconcile.remote(config, specs[:1]), timeout=120)
    s = status(scheduler)
    assert [r.replica_id for r in s.replicas] == ["replica-0"] and s.policy == "fcfs"
    ray.get(scheduler.reconcile.remote(config, specs), timeout=120)  # back as it began
    assert [r.replica_id for r in status(scheduler).replicas] == ["replica-0", "replica-1"]


def test_a_restarted_scheduler_keeps_the_settings_it_had_not_its_first(scheduler, deployment):
    """Ray restarts a dead actor with the arguments it was first created with (fcfs, 2
    replicas); the settings record gives it back the policy switched and the scale-down since:
    the replica scaled away is not started again."""
    path = GenerationPath(scheduler, HeuristicScorer())
    assert len(asyncio.run(generate(path, request("before-kill", 5))).output_token_ids) == 5
    wait_idle(scheduler)  # the client has its tokens a moment before the request's end is booked
    ray.get(scheduler.set_policy.remote(PolicyConfig(name="ltr")), timeout=30)
    assert ray.get(scheduler.scale.remote(1), timeout=120) == ["replica-0"]
    ray.kill(scheduler, no_restart=False)
    s = wait_restarted(scheduler)
    assert s.policy == "ltr" and [r.replica_id for r in s.replicas] == ["replica-0"]
    ray.get(scheduler.set_policy.remote(PolicyConfig(name="fcfs")), timeout=30)
    assert ray.get(scheduler.scale.remote(2), timeout=120) == ["replica-0", "replica-1"]
