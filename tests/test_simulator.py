"""Whole simulations: every request finishes exactly once with exactly its tokens, for every
policy, with and without slices, on one or several replicas, with either routing; KV blocks are conserved after
every engine step; stop conditions; determinism."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig
from cluster.policies import POLICIES
from cluster.routing import ROUTINGS
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.prompts import PromptRecord
from cluster.workload.workload import WorkloadItem, build_workload
from tests.sim_audit import Ledger, assert_conserved

PROFILE = load_profile("a100-llama3-8b")


def workload(
    n: int,
    seed: int,
    arrivals: str = "poisson:40",
    max_prompt: int = 300,
    max_output: int = 200,
    noise: float = 0.5,
) -> list[WorkloadItem]:
    """Random lengths; ltr scores and ssjf/hrrn predictions are the true length with
    multiplicative noise, so that the predicted order is good but not exact."""
    rng = np.random.default_rng(seed)
    prompts = [
        PromptRecord(
            prompt=f"prompt {i}",
            output_tokens=int(rng.integers(1, max_output + 1)),
            prompt_tokens=int(rng.integers(1, max_prompt + 1)),
        )
        for i in range(n)
    ]
    items = build_workload(prompts, arrivals, n, seed)
    factors = np.exp(rng.normal(0.0, noise, size=n))
    return [
        dataclasses.replace(
            it, score=math.log(it.output_tokens * f), predicted_tokens=float(it.output_tokens * f)
        )
        for it, f in zip(items, factors, strict=True)
    ]


def config(
    policy: str = "fcfs",
    *,
    replicas: int = 1,
    slice_tokens: int | None = None,
    num_kv_blocks: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    starvation_threshold: int = 200,
    priority_quantum: int = 10,
    policy_options: dict | None = None,
    routing: str = "global",
    **kw,
) -> SimulationConfig:
    policy_config = PolicyConfig(
        name=policy,
        starvation_threshold=starvation_threshold,
        priority_quantum=priority_quantum,
        **(policy_options or {}),
    )
    return SimulationConfig(
        SchedulerConfig(policy=policy_config, slice_tokens=slice_tokens, routing=routing),
        EngineConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            num_kv_blocks=num_kv_blocks,
        ),
        PROFILE,
        replicas=replicas,
        **kw,
    )


@pytest.mark.parametrize("routing", ROUTINGS.names)
@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("slice_tokens", [None, 16])
@pytest.mark.parametrize("policy", POLICIES.names)
def test_conservation(policy, slice_tokens, replicas, routing):
    items = workload(80, seed=7)
    cfg = config(
        policy,
        replicas=replicas,
        routing=routing,
        slice_tokens=slice_tokens,
        num_kv_blocks=48,
        max_num_seqs=12,
        max_num_batched_tokens=256,
        starvation_threshold=6,
        priority_quantum=4,
    )
    ledger = Ledger()
    result = simulate(items, cfg, engine_factory=ledger.engine_factory)
    assert_conserved(items, result, ledger)
    assert len(ledger.engines) == replicas
    assert all(e.steps > 0 for e in ledger.engines)  # placement spread the work
    by_id = {it.request_id: it.output_tokens for it in items}
    dispatches = {r.request_id: r.num_dispatches for r in result.requests}
    if policy != "ltr":  # ltr's promotions add slices of their own
        per = slice_tokens or max(by_id.values())
        assert dispatches == {rid: -(-n // per) for rid, n in by_id.items()}
        assert result.slices == sum(d - 1 for d in dispatches.values())


def test_a_small_cache_forces_preemptions_and_everything_still_finishes():
    items = workload(60, seed=3, arrivals="burst")
    ledger = Ledger()
    result = simulate(items, config("fcfs", num_kv_blocks=40), engine_factory=ledger.engine_factory)
    assert_conserved(items, result, ledger)
    assert result.engine_preemptions > 0 and sum(ledger.reacquired.values()) > 0


def test_ltr_promotions_make_extra_slices_and_still_conserve():
    items = workload(60, seed=11, arrivals="burst")
    cfg = config("ltr", max_num_seqs=4, starvation_threshold=3, priority_quantum=5)
    ledger = Ledger()
    result = simulate(items, cfg, engine_factory=ledger.engine_factory)
    assert_conserved(items, result, ledger)
    assert result.slices > 0  # promoted requests ran quantum-token slices
    assert any(r.num_dispatches > 1 for r in result.requests)


def test_same_order_same_results():
    """A policy whose keys are all equal falls back to arrival order: exactly fcfs (as long as
    no promotion or aging reorders it)."""
    items = [
        dataclasses.replace(it, score=1.0, predicted_tokens=50.0)
        for it in workload(50, seed=5, arrivals="poisson:30")
    ]
    kw = {"num_kv_blocks": 40, "max_num_seqs": 8}
    fcfs = simulate(items, config("fcfs", **kw))
    ltr = simulate(items, config("ltr", starvation_threshold=10**6, **kw))
    no_aging = {"ssjf_max_wait_s": math.inf, "ssjf_wait_factor": math.inf}
    ssjf = simulate(items, config("ssjf", policy_options=no_aging, **kw))
    assert fcfs.engine_preemptions > 0
    for other in (ltr, ssjf):
        assert [t.finish for t in other.timings] == [t.finish for t in fcfs.timings]


def test_until_completions_stops_at_the_kth_answer_of_the_full_run():
    items = workload(60, seed=2, arrivals="burst")
    full = simulate(items, config("oracle", max_num_seqs=8))
    k = 10
    part = simulate(items, config("oracle", max_num_seqs=8, until_completions=k))
    finishes = sorted(t.finish for t in full.timings)
    assert part.stopped_by == "until_completions"
    assert part.time_to_k_s == finishes[k - 1]
    done = sorted(t.finish for t in part.timings)
    assert len(done) >= k and done == [f for f in finishes if f <= part.time_to_k_s]
    assert part.unfinished == len(items) - part.metrics.completions
    assert part.to_dict()["time_to_k_s"] == part.time_to_k_s
    assert part.metrics.duration_s == part.time_to_k_s  # from the burst at 0 to the k-th answer


def test_time_limit_keeps_what_finished_within_it():
    items = workload(60, seed=2, arrivals="poisson:20")
    full = simulate(items, config("fcfs", max_num_seqs=8))
    limit = full.virtual_time_s / 2
    part = simulate(items, config("fcfs", max_num_seqs=8, time_limit_s=limit))
    assert part.stopped_by == "time_limit" and part.virtual_time_s == limit
    assert sorted(t.finish for t in part.timings) == sorted(
        t.finish for t in full.timings if t.finish <= limit
    )
    assert 0 < part.metrics.completions < len(items)
    assert part.unfinished == len(items) - part.metrics.completions
    # Throughput over the whole window, even when the first arrival is still running.
    assert part.metrics.duration_s == limit


def test_deterministic_for_a_seed():
    def run(seed: int) -> dict:
        out = simulate(
            workload(50, seed=seed, arrivals="gamma:30:2"),
            config("hrrn", replicas=2, num_kv_blocks=40, slice_tokens=32),
        ).to_dict()
        out.pop("wall_time_s")
        return out

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_result_dict_has_the_documented_metrics():
    result = simulate(workload(20, seed=1), config("fcfs"))
    d = result.to_dict()
    for key in ("e2e_latency_s", "per_token_latency_s", "ttft_s", "tpot_s", "max_wait_s"):
        assert set(d[key]) >= {"mean", "p50", "p90", "p99"}
        assert d[key]["p50"] <= d[key]["p90"] <= d[key]["p99"]
    for key in ("throughput_rps", "throughput_tps", "completions", "preemptions"):
        assert d[key] >= 0
    assert d["policy"] == "fcfs" and d["completions"] == 20
    assert d["throughput_tps"] * d["duration_s"] == pytest.approx(
        sum(t.output_tokens for t in result.timings)
    )


def test_replicas_must_be_positive():
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        config(replicas=0)


@pytest.mark.parametrize("routing", ROUTINGS.names)
def test_a_mixed_cluster_conserves_and_the_global_queue_fills_the_bigger_replicas(routing):
    a100, h100 = PROFILE, load_profile("h100-llama3-8b")
    items = workload(3000, seed=2, arrivals="burst", max_output=64)
    cfg = dataclasses.replace(
        config("fcfs", replicas=4, routing=routing), replica_profiles=(a100, h100, a100, h100)
    )
    ledger = Ledger()
    result = simulate(items, cfg, engine_factory=ledger.engine_factory)
    assert_conserved(items, result, ledger)
    served = {e.replica_id: 0 for e in ledger.engines}
    for r in result.requests:
        served[r.replica_id] += 1
    big, small = served["r1"] + served["r3"], served["r0"] + served["r2"]
    if routing in ("global", "prefix_aware"):  # the global queue: free slots wherever they
        assert big > 2 * small  # are, and an H100 has 4x an A100's
    else:  # Ray Serve balances request counts whatever the replica
        assert abs(big - small) < 0.2 * len(items)


def test_replica_profiles_must_match_the_replica_count():
    with pytest.raises(ValueError, match="2 replica profiles for 3 replicas"):
        dataclasses.replace(config(replicas=3), replica_profiles=(PROFILE, PROFILE))
