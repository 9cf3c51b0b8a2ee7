"""What the simulator benchmarks share: running one policy on a workload, synthetic workloads,
the metrics table they print, and predictions from trained models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig
from cluster.sim.simulator import SimulationConfig, SimulationResult, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.scoring import with_predictions, with_true_lengths
from cluster.workload.workload import WorkloadItem

ROOT = Path(__file__).resolve().parent.parent
AZURE_CONV = "azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"


def run(
    items: list[WorkloadItem], policy: str, replicas: int, profile: str = "a100-llama3-8b"
) -> SimulationResult:
    config = SimulationConfig(
        SchedulerConfig(policy=PolicyConfig(name=policy)),
        EngineConfig(),
        load_profile(profile),
        replicas=replicas,
    )
    return simulate(items, config)


def synthetic(n: int, rate: float | None, seed: int) -> list[WorkloadItem]:
    """Lengths like chat traffic (log-normal answers up to 2k tokens), no data set needed."""
    rng = np.random.default_rng(seed)
    out = np.minimum(2048, rng.lognormal(5.0, 1.0, n).astype(int) + 1)
    prompt = rng.integers(16, 1024, n)
    t = (
        np.zeros(n)
        if rate is None
        else np.concatenate([[0.0], np.cumsum(rng.exponential(1 / rate, n - 1))])
    )
    return with_true_lengths(
        [
            WorkloadItem(
                f"r{i}", float(t[i]), None, int(prompt[i]), int(out[i]), None, None, None, None
            )
            for i in range(n)
        ]
    )


def metrics_table(results: list[SimulationResult]) -> list[str]:
    rows = [
        "| policy | mean s/token | p99 s/token | mean e2e (s) | p99 e2e (s) | mean TTFT (s) "
        "| p99 max wait (s) | req/s | preemptions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r.metrics
        rows.append(
            f"| {r.policy} | {m.per_token_latency_s.mean:.4f} | "
            f"{m.per_token_latency_s.p99:.4f} | {m.e2e_latency_s.mean:.2f} | "
            f"{m.e2e_latency_s.p99:.2f} | {m.ttft_s.mean:.2f} | {m.max_wait_s.p99:.2f} | "
            f"{m.throughput_rps:.2f} | {r.engine_preemptions} |"
        )
    return rows


def with_predictor(
    items: list[WorkloadItem], ranker: Path | None, regressor: Path | None
) -> list[WorkloadItem]:
    """Scores from the ranking model (ltr) and predicted lengths from the regressor (ssjf);
    None: the shipped models."""
    from predictor_actor.scoring import ModelScorer

    return with_predictions(items, ModelScorer(ranker, regressor))
