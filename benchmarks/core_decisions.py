"""`python -m benchmarks.core_decisions`: how many scheduling decisions per second the core
(cluster.scheduler, no Ray) makes with 10,000 requests queued and 64 replicas, per policy.

Steady state: every replica is full; each cycle one request finishes on one replica (an
EngineEvents applied), one new request arrives (the queue stays at its size), and one
scheduling round dispatches into the freed slot. Decisions/s = dispatches per wall second.

With the default starvation threshold (200 rounds; a round of 64 replicas counts 1/64) nobody
waits long enough here to be promoted, so ltr is also measured with a threshold of 1 round:
most of the queue is then promoted and demoted in turn, the starvation guard's worst case."""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from benchmarks.report import update_section
from cluster.clock import VirtualClock
from cluster.config import PolicyConfig, SchedulerConfig
from cluster.events import EngineEvents, FinishReason
from cluster.request import Request
from cluster.scheduler import Scheduler

DEFAULT_THRESHOLD = PolicyConfig().starvation_threshold


def measure(
    policy: str, queued: int, replicas: int, seqs: int, cycles: int, threshold: int
) -> float:
    clock = VirtualClock()
    config = PolicyConfig(name=policy, starvation_threshold=threshold)
    core = Scheduler(SchedulerConfig(policy=config), clock)
    for i in range(replicas):
        core.add_replica(f"r{i}", seqs, 1_000_000, 16)
    rng = np.random.default_rng(0)
    ids = itertools.count()

    def arrive() -> None:
        n = next(ids)
        out = int(rng.integers(16, 1024))
        core.submit(
            Request(
                f"q{n}",
                prompt_tokens=int(rng.integers(16, 1024)),
                max_tokens=out,
                arrival_time=clock.now(),
                output_tokens=out,
                score=float(rng.normal()),
                predicted_tokens=float(out),
            )
        )

    for _ in range(queued + replicas * seqs):
        arrive()
    running: dict[str, list[str]] = {f"r{i}": [] for i in range(replicas)}
    for d in core.schedule():
        running[d.replica_id].append(d.request.request_id)
    order = itertools.cycle(list(running))
    decisions = 0
    start = time.perf_counter()
    for _ in range(cycles):
        clock.advance_to(clock.now() + 0.001)
        replica = next(order)
        done = running[replica].pop(0)
        core.apply(EngineEvents(replica, ended={done: FinishReason.STOP}))
        core.forget(done)
        arrive()
        for d in core.schedule():
            running[d.replica_id].append(d.request.request_id)
            decisions += 1
    return decisions / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--policies", default="fcfs,ltr,ssjf,hrrn")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = [
        f"### Scheduling core: decisions/s with {args.queued:,} queued and {args.replicas} "
        f"replicas of {args.max_num_seqs} slots (one finish, one arrival, one round per "
        f"decision; {args.cycles} decisions)",
        "",
        "| policy | decisions/s | ms/decision |",
        "|---|---|---|",
    ]
    runs = [(policy, policy, DEFAULT_THRESHOLD) for policy in args.policies.split(",")]
    if "ltr" in args.policies.split(","):
        runs.append(("ltr, starvation threshold 1 round", "ltr", 1))
    for label, policy, threshold in runs:
        rate = measure(
            policy, args.queued, args.replicas, args.max_num_seqs, args.cycles, threshold
        )
        lines.append(f"| {label} | {rate:,.0f} | {1000 / rate:.3f} |")
        print(lines[-1], flush=True)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section("core-decisions", body)


if __name__ == "__main__":
    main()
