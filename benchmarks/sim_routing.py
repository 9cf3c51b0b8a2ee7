"""`python -m benchmarks.bench_simulator routing`: the global queue against Ray Serve's default
power-of-two routing, on 4 equal replicas and on a mixed A100 + H100 cluster (needs
../shared/datasets)."""

from __future__ import annotations

import numpy as np

from benchmarks.prompt_sets import (
    SHIPPED_TRAINING,
    split_files,
)
from benchmarks.report import update_section
from benchmarks.sim_common import AZURE_CONV, with_predictor
from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig
from cluster.routing import ROUTINGS
from cluster.sim.simulator import SimulationConfig, SimulationResult, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.datasets import default_shared_dir
from cluster.workload.scoring import with_true_lengths
from cluster.workload.workload import WorkloadItem, build_workload


def routing(seeds: int) -> None:
    """The global queue against Ray Serve's default routing (power of two choices, each replica
    queuing for itself), same engines, same workloads, same policies; on equal replicas and on
    a mixed cluster."""
    shared = default_shared_dir()
    if not shared.is_dir():
        raise SystemExit(f"routing needs the data sets in {shared}")
    from cluster.workload.prompts import read_prompt_file

    a100, h100 = load_profile("a100-llama3-8b"), load_profile("h100-llama3-8b")
    clusters = {
        "4 x A100": (a100,) * 4,
        "2 x A100 + 2 x H100": (a100, h100, a100, h100),
    }

    def run_routed(
        items: list[WorkloadItem], policy: str, how: str, seed: int, profiles: tuple
    ) -> SimulationResult:
        config = SimulationConfig(
            SchedulerConfig(policy=PolicyConfig(name=policy), routing=how, routing_seed=seed),
            EngineConfig(),
            profiles[0],
            replicas=len(profiles),
            replica_profiles=profiles,
        )
        return simulate(items, config)

    held_out = [
        r for f in split_files(SHIPPED_TRAINING, "val", "test") for r in read_prompt_file(f)
    ]
    trace = f"trace:{shared / AZURE_CONV}"
    workloads = [
        (
            "8,000-request burst of held-out GPTeacher + arena-hard prompts (GPT-4 answers), "
            "ltr scored by the shipped model",
            lambda seed: with_predictor(
                build_workload(held_out, "burst", 8000, seed=seed, max_output_tokens=2048),
                None,
                None,
            ),
            ("fcfs", "ltr", "oracle"),
        ),
        *(
            (
                f"Azure 2023 conversation trace at {rate:g} req/s, first 5,000 requests, lengths "
                "from the trace, ssjf fed the true lengths",
                lambda seed, rate=rate: with_true_lengths(
                    build_workload(
                        None, trace, 5000, seed=seed, target_rate=rate, lengths_from_trace=True
                    )
                ),
                ("fcfs", "ssjf", "oracle"),
            )
            for rate in (22.0, 40.0)
        ),
    ]
    body = [
        "a100-llama3-8b and h100-llama3-8b replicas with vLLM's defaults (A100: 256 sequences, "
        "2,048 batched tokens; H100: 1,024 / 8,192). `global`: rankserve's one cluster-wide "
        "queue, dispatched in policy order to the least KV-loaded replica with a free slot. "
        "`power_of_two`: Ray Serve's default router, the baseline: each request goes at once to "
        "the less busy (fewer requests) of two random replicas, whose vLLM engine queues it and "
        "admits by the dispatched priority, so the policy still orders each replica's own queue. "
        f"Mean per-token latency (s/token), mean over {seeds} seeds (workload draw and routing "
        "choices); in brackets p99 max wait (s), the LTR paper's fairness metric; last the ratio "
        "power_of_two / global. On 4 A100s the trace is near capacity at 22 req/s and "
        "overloaded at 40.",
    ]
    for cluster, profiles in clusters.items():
        for title, make, policies in workloads:
            ptl: dict[tuple[str, str], list[float]] = {}
            wait: dict[tuple[str, str], list[float]] = {}
            for seed in range(seeds):
                items = make(seed)
                for policy in policies:
                    for how in ROUTINGS.names:
                        m = run_routed(items, policy, how, seed, profiles).metrics
                        ptl.setdefault((policy, how), []).append(m.per_token_latency_s.mean)
                        wait.setdefault((policy, how), []).append(m.max_wait_s.p99)
            rows = [
                "| policy | global | power_of_two (Ray Serve default) | power_of_two / global |",
                "|---|---:|---:|---:|",
            ]
            for policy in policies:
                g, p = np.mean(ptl[policy, "global"]), np.mean(ptl[policy, "power_of_two"])
                gw, pw = np.mean(wait[policy, "global"]), np.mean(wait[policy, "power_of_two"])
                rows.append(
                    f"| {policy} | {g:.4f} ({gw:.1f}) | {p:.4f} ({pw:.1f}) | **{p / g:.2f}** |"
                )
                print(f"{cluster}, {title[:30]} {policy}: global {g:.4f}, power_of_two {p:.4f}")
            body += ["", f"### {cluster}: {title}", "", *rows]
    update_section(
        "simulator-routing",
        "\n".join(body),
        f"python -m benchmarks.bench_simulator routing --seeds {seeds}",
    )
