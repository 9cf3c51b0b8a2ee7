"""A multi-node Ray cluster on this one machine, for trying node failures (the node-failure test,
the chaos benchmark): each node is a `ray start --block` in a process group of its own, on a
loopback address of its own (127.0.0.2, 127.0.0.3, ...: Ray turns 127.0.0.1 into the
machine's outward address), so that killing the group is a node dying and all traffic stays on
loopback. Token authentication is off for these throwaway clusters."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from serve_app.launcher import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# Workers at nice 0, as in the launcher's local clusters (Ray's default of 15 starves a starting
# engine behind the load's other processes on a shared machine).
NODE_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}
CURRENT_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")


class LocalCluster:
    def __init__(self, head_cpus: int) -> None:
        self.port = free_port("127.0.0.2")
        self.address = f"127.0.0.2:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self._start(
            "127.0.0.2",
            "--head",
            f"--port={self.port}",
            f"--num-cpus={head_cpus}",
            "--include-dashboard=false",
        )
        status = [RAY, "status", f"--address={self.address}"]
        deadline = time.monotonic() + 90
        while subprocess.run(status, env=NODE_ENV, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the head node at {self.address} did not come up")
            time.sleep(1.0)

    def _start(self, ip: str, *args: str) -> None:
        cmd = [RAY, "start", "--block", f"--node-ip-address={ip}", "--disable-usage-stats"]
        self.nodes[ip] = subprocess.Popen(
            [*cmd, *args],
            env=NODE_ENV,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def add_node(self, cpus: int, join_timeout: float = 180.0, tries: int = 3) -> str:
        """Start a worker node and wait until the cluster lists it alive (the caller is
        connected to the cluster); returns its address. A node whose `ray start` exits before
        it joins is started again: on a loaded machine a raylet gives up when its agents are
        slow to come up (seen here: 'Timed out waiting for file ... metrics_agent_port')."""
        ip = f"127.0.0.{2 + len(self.nodes)}"
        args = (f"--address={self.address}", f"--num-cpus={cpus}")
        deadline = time.monotonic() + join_timeout
        self._start(ip, *args)
        while not _alive_at(ip):
            if self.nodes[ip].poll() is not None:
                tries -= 1
                if tries == 0:
                    raise RuntimeError(f"the node at {ip} exited before it joined, every try")
                self._start(ip, *args)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node at {ip} did not join in {join_timeout:g} s")
            time.sleep(1.0)
        return ip

    def kill_node(self, ip: str) -> None:
        """SIGKILL every process of the node at once: its raylet, workers, actors and their
        children (an engine's EngineCore). Ray puts each worker in a process group of its own,
        so the node's group alone would leave them, and the engine's processes go on computing
        after their raylet is gone."""
        with contextlib.suppress(psutil.NoSuchProcess):
            node = psutil.Process(self.nodes[ip].pid)
            for proc in [node, *node.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes[ip].pid, signal.SIGKILL)

    def stop(self) -> None:
        for ip in reversed(list(self.nodes)):
            self.kill_node(ip)
        # `ray start` leaves this behind, and a later plain `ray.init()` would try that cluster.
        CURRENT_CLUSTER_FILE.unlink(missing_ok=True)


def _alive_at(ip: str) -> bool:
    import ray

    return any(n["Alive"] and n["NodeManagerAddress"] == ip for n in ray.nodes())
