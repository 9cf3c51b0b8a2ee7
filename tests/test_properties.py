"""Property tests over random workloads: whatever the lengths, arrivals, policy, replicas,
cache size (small enough to force preemption), slices, starvation settings, scheduler-driven
preemption and prefix caching, every request finishes exactly once with exactly its tokens, no
KV block leaks, cached ones included (checked after every engine step), and a seed gives one
result."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cluster.config import (
    EngineConfig,
    PolicyConfig,
    PreemptionConfig,
    SchedulerConfig,
    SLOSearchConfig,
)
from cluster.policies import POLICIES
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.arrivals import arrival_times
from cluster.workload.workload import WorkloadItem
from tests.sim_audit import Ledger, assert_conserved

PROFILE = load_profile("a100-llama3-8b")
BLOCK = PROFILE.block_size
HEADROOM = SchedulerConfig().kv_headroom_fraction


def fast(examples: int) -> settings:
    # Small workloads and few examples: the whole file runs in well under a minute on 2 cores.
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


@st.composite
def scenarios(draw, max_requests: int = 30) -> tuple[list[WorkloadItem], SimulationConfig]:
    n = draw(st.integers(1, max_requests))
    prompt = draw(st.lists(st.integers(1, 200), min_size=n, max_size=n))
    output = draw(st.lists(st.integers(1, 120), min_size=n, max_size=n))
    arrivals = draw(st.sampled_from(["burst", "poisson:2", "poisson:40", "gamma:20:3"]))
    seed = draw(st.integers(0, 2**16))
    times = arrival_times(arrivals, n, seed)
    # Predictions: the true length with noise, so orders are good but not exact.
    noise = np.exp(np.random.default_rng(seed).normal(0.0, 0.7, size=n))
    # A few prompts shared by several requests (same text, same length): prefix-cache hits.
    shared = draw(st.lists(st.sampled_from([None, "a", "b"]), min_size=n, max_size=n))
    prompt = [60 + ord(k) if k else p for k, p in zip(shared, prompt, strict=True)]
    items = [
        WorkloadItem(
            f"q{i}",
            float(times[i]),
            shared[i],
            prompt[i],
            output[i],
            score=math.log(output[i] * noise[i]),
            predicted_tokens=float(output[i] * noise[i]),
            slo=None,
            tenant=None,
        )
        for i in range(n)
    ]
    # The cache must hold the longest request alone with the dispatch headroom kept (as vLLM
    # makes sure its cache holds max_model_len tokens), and no more than a few: requests
    # compete for blocks and get preempted.
    need = max(-(-(p + o) // BLOCK) for p, o in zip(prompt, output, strict=True))
    least = math.ceil(need / (1 - HEADROOM))
    blocks = draw(st.integers(least, 2 * least))
    policy = PolicyConfig(
        name=draw(st.sampled_from(POLICIES.names)),
        starvation_threshold=draw(st.integers(1, 6)),
        priority_quantum=draw(st.integers(1, 6)),
        ssjf_max_wait_s=draw(st.sampled_from([0.5, 5.0, 100.0])),
        # slo: iterations only, so that a seed gives one result; small horizons and limits
        # exercise the suffix and the concurrency moves.
        slo_search=SLOSearchConfig(
            iterations=draw(st.integers(0, 60)),
            max_wall_ms=None,
            horizon=draw(st.integers(2, 8)),
            min_concurrency=draw(st.integers(1, 4)),
        ),
    )
    config = SimulationConfig(
        SchedulerConfig(
            policy=policy,
            slice_tokens=draw(st.none() | st.integers(1, 40)),
            max_engine_waiting=draw(st.integers(0, 2)),
            preemption=PreemptionConfig(
                enabled=draw(st.booleans()),
                min_run_tokens=draw(st.integers(1, 8)),
                max_per_request=draw(st.integers(0, 3)),
                min_gain_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])),
                max_per_round=draw(st.integers(1, 4)),
                kv_retention=draw(st.booleans()),
            ),
        ),
        EngineConfig(
            max_num_seqs=draw(st.integers(1, 12)),
            max_num_batched_tokens=draw(st.sampled_from([16, 64, 512, 2048])),
            num_kv_blocks=blocks,
            enable_prefix_caching=(caching := draw(st.booleans())),
            # 0.01 GiB: 5 blocks, so that the host tier evicts
            host_offload_gib=draw(st.sampled_from([0.0, 0.01, 1.0])) if caching else 0.0,
        ),
        PROFILE,
        replicas=draw(st.integers(1, 3)),
    )
    return items, config


@fast(150)
@given(scenarios())
def test_every_request_finishes_once_with_exactly_its_tokens_and_no_block_leaks(scenario):
    items, config = scenario
    ledger = Ledger()
    result = simulate(items, config, engine_factory=ledger.engine_factory)
    assert_conserved(items, result, ledger)
    assert result.metrics.completions == len(items)
    for engine in ledger.engines:
        if engine.host is not None:
            assert len(engine.host) <= engine.host.capacity_blocks
    # Shown by --hypothesis-show-statistics: how often the hard paths were taken.
    event(f"preempted: {result.engine_preemptions > 0}")
    event(f"sliced: {result.slices > 0}")
    event(f"scheduler preempted: {result.scheduler_preemptions > 0}")
    event(f"prefix cache hit: {result.cached_tokens > 0}")
    assert sum(r.scheduler_preemptions for r in result.requests) == result.scheduler_preemptions
    m = result.metrics
    for d in (m.e2e_latency_s, m.per_token_latency_s, m.ttft_s, m.max_wait_s):
        assert 0 <= d.p50 <= d.p99 <= d.max


@fast(50)
@given(scenarios())
def test_a_seed_gives_one_result(scenario):
    items, config = scenario

    def run() -> str:
        out = simulate(items, config).to_dict()
        out.pop("wall_time_s")
        return json.dumps(out, sort_keys=True)  # NaN (no TPOT with 1-token answers) compares

    assert run() == run()


@fast(80)
@given(scenarios(), st.data())
def test_stopping_early_does_not_change_what_happened_before(scenario, data):
    """A time limit or a completion target cuts the run; what finished before the cut is what
    the full run finished by then, to the same instant."""
    items, config = scenario
    full = simulate(items, config)
    finishes = sorted(t.finish for t in full.timings)
    k = data.draw(st.integers(1, len(items)))
    cut = simulate(items, dataclasses.replace(config, until_completions=k))
    assert cut.time_to_k_s == finishes[k - 1]
    assert sorted(t.finish for t in cut.timings) == [f for f in finishes if f <= cut.time_to_k_s]
    limit = finishes[k - 1] * data.draw(st.sampled_from([0.5, 1.0, 1.01]))
    timed = simulate(items, dataclasses.replace(config, time_limit_s=limit))
    assert sorted(t.finish for t in timed.timings) == [f for f in finishes if f <= limit]


@fast(60)
@given(scenarios(), st.data())
def test_prefix_routings_finish_every_request_once_without_block_leaks(scenario, data):
    """The same audit with prefix-cache-aware placement, and prompts that share trace blocks
    (chained hash ids from a few conversations) as well as prompt text."""
    items, config = scenario
    routing = data.draw(st.sampled_from(["prefix_aware", "prefix_affinity"]))
    conversation = data.draw(st.lists(st.sampled_from([None, 0, 1]), min_size=len(items)))
    items = [
        dataclasses.replace(item, hash_ids=None if c is None else (c, 10 + c))
        for item, c in zip(items, conversation + [None] * len(items), strict=False)
    ]
    scheduler = dataclasses.replace(config.scheduler, routing=routing)
    config = dataclasses.replace(config, scheduler=scheduler)
    ledger = Ledger()
    result = simulate(items, config, engine_factory=ledger.engine_factory)
    assert_conserved(items, result, ledger)
    assert result.metrics.completions == len(items)
    event(f"prefix cache hit: {result.cached_tokens > 0}")
