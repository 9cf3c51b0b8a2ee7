"""Scheduler-driven preemption's live parts without a cluster: the replica ending a dispatch
early (on the simulated engine, in real time), the delivery of the scheduler's early ends, the
guarded lease round, and KV offloading, which only GPU replicas take."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytest.importorskip("ray")

from cluster.clock import VirtualClock  # noqa: E402
from cluster.events import FinishReason  # noqa: E402
from cluster.runtime.early_ends import EarlyEndDelivery  # noqa: E402
from cluster.runtime.lease_watch import CLIENT_GONE, LeaseWatch  # noqa: E402
from cluster.runtime.leases import IngressLeases  # noqa: E402
from cluster.runtime.protocol import GenerateCall, SubmitRequest, TokenChunk  # noqa: E402
from cluster.runtime.replica import EngineReplica  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, ReplicaSpec  # noqa: E402
from cluster.swaps import EarlyEnd  # noqa: E402
from serve_app.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("our_loggers")


def call(rid: str, dispatch_no: int, max_new: int, generated: int = 0) -> GenerateCall:
    prompt = [1, 2, 3]
    submit = SubmitRequest(rid, len(prompt), 1000)
    return GenerateCall(submit, dispatch_no, prompt + [0] * generated, max_new, 0, False)


async def consume(replica: EngineReplica, c: GenerateCall, after: int, act) -> list[TokenChunk]:
    """The dispatch's chunks; `act(replica)` is awaited once `after` tokens have come."""
    chunks, tokens, acted = [], 0, False
    async for chunk in replica.generate(c):
        chunks.append(chunk)
        tokens += len(chunk.token_ids)
        if tokens >= after and not acted:
            acted = True
            await act(replica)
    return chunks


def run_replica(scenario):
    async def main():
        spec = ReplicaSpec("replica-0", "/m", replica=ReplicaConfig(kind="simulated"))
        replica = EngineReplica(spec)
        await replica.start()
        try:
            return await scenario(replica)
        finally:
            replica.shutdown()

    return asyncio.run(main())


def test_a_preempted_dispatch_ends_once_with_preempt_and_keeps_its_tokens():
    answers = []

    async def preempt(replica):
        answers.append(await replica.preempt("r1", 2))
        answers.append(await replica.preempt("r1", 2))  # a repeat changes nothing

    async def scenario(replica):
        chunks = await consume(replica, call("r1", 2, 500, generated=7), 5, preempt)
        return chunks, replica._take_report()

    chunks, report = run_replica(scenario)
    assert answers == [True, False]
    reasons = [c.finish_reason for c in chunks if c.finish_reason is not None]
    assert reasons == [FinishReason.PREEMPT] and chunks[-1].finish_reason is FinishReason.PREEMPT
    produced = sum(len(c.token_ids) for c in chunks)
    assert 5 <= produced < 500
    # What the scheduler hears: the tokens the caller got, and one PREEMPT end (not an abort).
    assert report.events.tokens == {"r1": produced}
    assert report.events.ended == {"r1": FinishReason.PREEMPT}


def test_a_stale_preempt_is_ignored_and_the_dispatch_runs_to_its_end():
    answers = []

    async def preempt_older(replica):
        answers.append(await replica.preempt("r1", 1))  # dispatch 1 ended long ago
        answers.append(await replica.preempt("other", 1))  # not here at all

    async def scenario(replica):
        chunks = await consume(replica, call("r1", 2, 12), 3, preempt_older)
        late = await replica.preempt("r1", 2)  # after its own end
        return chunks, late

    chunks, late = run_replica(scenario)
    assert answers == [False, False] and late is False
    assert sum(len(c.token_ids) for c in chunks) == 12
    assert chunks[-1].finish_reason is FinishReason.SLICE


def test_a_client_abort_is_still_an_abort():
    async def abort(replica):
        await replica.abort("r1")

    chunks = run_replica(lambda replica: consume(replica, call("r1", 1, 500), 2, abort))
    assert chunks[-1].finish_reason is FinishReason.ABORT


class _Handle:
    def __init__(self, answer=None, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.preempt = self  # handle.preempt.remote(...)
        self._answer, self._error = answer, error

    def remote(self, request_id: str, dispatch_no: int):
        self.calls.append((request_id, dispatch_no))

        async def result():
            if self._error is not None:
                raise self._error
            return self._answer

        return result()


def test_early_ends_reach_their_replica_and_a_failed_delivery_is_logged(caplog):
    good, gone = _Handle(answer=True), _Handle(error=RuntimeError("actor died"))
    delivery = EarlyEndDelivery({"a": good, "b": gone})

    async def main():
        delivery.send(EarlyEnd("r1", "a"), 3)
        delivery.send(EarlyEnd("r2", "b"), 1)
        delivery.send(EarlyEnd("r3", "c"), 1)  # its replica left the fleet meanwhile
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="cluster.runtime.early_ends"):
        asyncio.run(main())
    assert good.calls == [("r1", 3)] and gone.calls == [("r2", 1)]
    assert delivery.sent == 1 and delivery.undelivered == 2
    lost = [r.getMessage() for r in caplog.records]
    assert any("r2" in m and "actor died" in m for m in lost)
    assert any("r3" in m and "not in the fleet" in m for m in lost)


def test_a_failing_lease_round_is_logged_and_the_next_round_runs(caplog):
    clock = VirtualClock()
    leases = IngressLeases(5.0, stall_s=100.0)
    leases.open(clock.now())
    leases.track("req-1", "ingress-1", clock.now())
    aborted: list[tuple[str, str]] = []
    rounds = []

    def schedule():
        rounds.append(clock.now())
        if len(rounds) == 1:
            raise RuntimeError("bad round")

    async def abort(rid: str, why: str) -> None:
        aborted.append((rid, why))

    watch = LeaseWatch(leases, clock, schedule, abort, lambda: True)
    watch.INTERVAL_S = 0.01

    async def main():
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        clock.advance_to(10.0)  # the ingress went silent past its lease
        await asyncio.sleep(0.05)
        task.cancel()

    with caplog.at_level(logging.ERROR, logger="cluster.runtime.lease_watch"):
        asyncio.run(main())
    assert any("lease round failed" in r.getMessage() for r in caplog.records)
    assert len(rounds) > 2 and aborted == [("req-1", CLIENT_GONE)]


def test_kv_offloading_is_for_gpu_vllm_replicas_only():
    assert ReplicaConfig(device="gpu", kv_offload_gib=8).kv_offload_gib == 8
    with pytest.raises(ValueError, match="GPU vLLM replicas only"):
        ReplicaConfig(device="cpu", kv_offload_gib=8)
    with pytest.raises(ValueError, match="GPU vLLM replicas only"):
        ServeConfig.from_dict({"model": "/m", "replica": {"kv_offload_gib": 2}})
    with pytest.raises(ValueError, match="> 0"):
        ReplicaConfig(device="gpu", kv_offload_gib=0)
