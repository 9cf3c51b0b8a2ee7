"""Scheduler-driven preemption through the live runtime on a real local Ray, below HTTP: the
scheduler actor with preemption on, one simulated engine replica (the simulator's engine in
real time) whose two slots long requests hold, and the ingress's GenerationPath. A short request
arriving then takes a long one's slot: it finishes first, and the preempted request still gets
exactly its tokens, in one stream, its preemption counted in the status."""

from __future__ import annotations

import asyncio
import time

import pytest

ray = pytest.importorskip("ray")

from cluster.config import (  # noqa: E402
    EngineConfig,
    PolicyConfig,
    PreemptionConfig,
    SchedulerConfig,
)
from cluster.runtime.scheduler_actor import SchedulerActor  # noqa: E402
from cluster.runtime.scheduler_handle import scheduler_actor_options  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, replica_specs  # noqa: E402
from serve_app.generation import GenerationInput, GenerationPath, GenerationRecord  # noqa: E402
from serve_app.scoring import Score  # noqa: E402

LONG, SHORT = 400, 6


class KnownLengths:
    """A predictor that knows: prompts say how long their answers are."""

    async def score(self, prompt: str) -> Score:
        n = LONG if prompt == "long" else SHORT
        return Score(float(n), float(n))

    def describe(self) -> str:
        return "known lengths"


@pytest.fixture(scope="module")
def scheduler(ray_local, tmp_path_factory):
    replica = ReplicaConfig(
        kind="simulated", num_cpus=0.1, work_dir=str(tmp_path_factory.mktemp("sim"))
    )
    specs = replica_specs("/unused", EngineConfig(max_num_seqs=2), replica, 1)
    preemption = PreemptionConfig(enabled=True, min_run_tokens=4, min_gain_ratio=2.0)
    config = SchedulerConfig(policy=PolicyConfig(name="ltr"), preemption=preemption)
    handle = (
        ray.remote(SchedulerActor).options(**scheduler_actor_options(False)).remote(config, specs)
    )
    assert len(ray.get(handle.start.remote(), timeout=120)) == 1
    yield handle
    ray.get(handle.shutdown.remote(), timeout=60)
    ray.kill(handle)


async def generate(path: GenerationPath, inp: GenerationInput) -> tuple[GenerationRecord, int]:
    """The request's record and the tokens its stream delivered."""
    record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids))
    delivered = 0
    async for chunk in path.stream(inp, record):
        delivered += len(chunk.token_ids)
    return record, delivered


def idle(scheduler, timeout: float = 30.0):
    """The status once the replica's last reports are in."""
    deadline = time.monotonic() + timeout
    while True:
        s = ray.get(scheduler.status.remote(), timeout=30)
        if s.queued + s.dispatched + s.running == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def test_a_short_request_takes_a_long_ones_slot_and_every_token_arrives_once(scheduler):
    path = GenerationPath(scheduler, KnownLengths())

    async def main():
        longs = [
            asyncio.create_task(
                generate(
                    path, GenerationInput(f"long-{i}", "long", [1, 2, 3], LONG, ignore_eos=True)
                )
            )
            for i in range(2)
        ]
        await asyncio.sleep(1.0)  # both slots busy, each well past min_run_tokens
        short = GenerationInput("short", "short", [4, 5], SHORT, ignore_eos=True)
        short_record, short_tokens = await generate(path, short)
        status = await scheduler.status.remote()  # while the victim is still in flight
        return short_record, short_tokens, await asyncio.gather(*longs), status

    short_record, short_tokens, longs, during = asyncio.run(main())
    assert short_tokens == SHORT == len(short_record.output_token_ids)
    assert all(short_record.finished < r.finished for r, _ in longs)
    for record, delivered in longs:
        assert delivered == LONG == len(record.output_token_ids)
        assert record.finish_reason == "length"
        assert record.dispatches == 1 + record.preemptions
    assert sum(r.preemptions for r, _ in longs) >= 1
    assert during.scheduler_preemptions >= 1
    assert set(during.preempted) <= {"long-0", "long-1"} and during.preempted
    after = idle(scheduler)
    assert after.scheduler_preemptions == sum(r.preemptions for r, _ in longs)
    assert after.finished == 3 and after.failed == 0
    # The cost model learned how long a resume waits; before that, it expected nothing kept.
    assert after.preemption_resume_wait_s is not None and after.preemption_resume_wait_s > 0
