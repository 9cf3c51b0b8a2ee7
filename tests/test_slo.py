"""SLO classes, attainment and the `slo` policy's search: the annealer against brute force,
metrics against hand-computed values, and a tight-SLO request overtaking loose ones."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from cluster.config import (
    EngineConfig,
    PolicyConfig,
    SchedulerConfig,
    SLOClass,
    SLOConfig,
    SLOSearchConfig,
)
from cluster.metrics import RequestTiming, summarize
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.slo_search import Problem, anneal, objective
from cluster.workload.workload import WorkloadItem

SLOS = SLOConfig(
    (SLOClass("code", e2e_s=2.0), SLOClass("chat", ttft_s=0.5, tpot_s=0.05, weight=2.0)),
    default="code",
)


def test_attainment_and_goodput_against_hand_computed_values():
    timings = [
        RequestTiming(0.0, 0.1, 1.5, 10, slo="code"),  # e2e 1.5 <= 2: met
        RequestTiming(0.0, 0.2, 2.5, 10, slo=None),  # default class code, e2e 2.5: missed
        RequestTiming(1.0, 1.4, 1.8, 10, slo="chat"),  # ttft 0.4, tpot 0.044: met
        RequestTiming(1.0, 1.6, 2.0, 10, slo="chat"),  # ttft 0.6: missed
    ]
    m = summarize(timings, failed=1, slos=SLOS)
    assert m.slo_attainment == pytest.approx(2 / 5)  # the failure meets nothing
    assert m.goodput_rps == pytest.approx(2 / 2.5)  # over arrival 0 .. last finish 2.5
    assert (m.slo_classes["code"].requests, m.slo_classes["code"].met) == (2, 1)
    assert m.slo_classes["chat"].attainment == pytest.approx(0.5)


def test_slo_class_cli_form_and_unknown_names():
    assert SLOClass.parse("chat:ttft_s=1,tpot_s=0.05,weight=3") == SLOClass(
        "chat", ttft_s=1.0, tpot_s=0.05, weight=3.0
    )
    with pytest.raises(ValueError, match="e2e_s=S"):
        SLOClass.parse("x:deadline=3")
    with pytest.raises(ValueError, match="known: code, chat"):
        SLOS.get("batch")


def problem(n: int, seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 200, n).astype(float)
    e2e = np.where(rng.random(n) < 0.5, rng.uniform(1.0, 6.0, n), np.inf)
    ttft = np.where(np.isinf(e2e), rng.uniform(0.2, 2.0, n), np.inf)
    tpot = np.where(np.isinf(e2e), 0.05, np.inf)
    empty = np.zeros(0)
    return Problem(
        now=1.0,
        arrival=rng.uniform(0.0, 1.0, n),
        prefill_s=rng.uniform(0.01, 0.1, n),
        tokens=tokens,
        e2e_bound=e2e,
        ttft_bound=ttft,
        tpot_bound=tpot,
        weight=rng.choice([1.0, 2.0], n),
        run_replica=np.zeros(0, dtype=np.int64),
        run_elapsed=empty,
        run_ttft=empty,
        run_tokens=empty,
        run_e2e_bound=empty,
        run_ttft_bound=empty,
        run_tpot_bound=empty,
        run_weight=empty,
        max_seqs=np.array([2]),
        step_s=lambda _r, batch: 0.01 + 0.002 * batch,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_annealer_finds_the_brute_force_optimum_of_seven_requests(seed):
    p = problem(7, seed)
    limits = np.array([2])
    best = max(objective(p, np.array(o), limits) for o in itertools.permutations(range(7)))
    plan = anneal(p, limits, iterations=3000, horizon=7, min_concurrency=2, rng=random.Random(seed))
    assert plan.objective == pytest.approx(best)
    assert objective(p, plan.order, plan.limits) == pytest.approx(plan.objective)
    assert sorted(plan.order) == list(range(7))


def test_the_search_is_deterministic_for_a_seed_and_sets_limits_in_range():
    p = problem(40, 5)
    p.max_seqs = np.array([16, 16])
    runs = [
        anneal(
            p,
            np.array([16, 16]),
            iterations=400,
            horizon=16,
            min_concurrency=4,
            rng=random.Random(9),
        )
        for _ in range(2)
    ]
    assert (runs[0].order == runs[1].order).all() and (runs[0].limits == runs[1].limits).all()
    assert ((runs[0].limits >= 4) & (runs[0].limits <= 16)).all()


def items(slos: list[str]) -> list[WorkloadItem]:
    # Equal long requests queued at 0; the last one, tight, arrives a moment later.
    out = [
        WorkloadItem(f"q{i}", 0.001 * i, None, 64, 200, None, 200.0, slo, None)
        for i, slo in enumerate(slos)
    ]
    return out


@pytest.mark.parametrize("policy", ["edf", "slo"])
def test_a_tight_slo_request_overtakes_loose_ones_on_a_full_replica(policy):
    slos = SLOConfig((SLOClass("loose", e2e_s=600.0), SLOClass("tight", e2e_s=8.0)), "loose")
    config = SimulationConfig(
        SchedulerConfig(
            policy=PolicyConfig(
                name=policy, slo_search=SLOSearchConfig(max_wall_ms=None, min_concurrency=1)
            ),
            slo=slos,
        ),
        EngineConfig(max_num_seqs=1),
        load_profile("a100-llama3-8b"),
    )
    workload = items(["loose"] * 6 + ["tight"])
    by_id = {t.request_id: t for t in simulate(workload, config).requests}
    fcfs = simulate(
        workload,
        SimulationConfig(
            SchedulerConfig(policy=PolicyConfig(name="fcfs"), slo=slos),
            EngineConfig(max_num_seqs=1),
            load_profile("a100-llama3-8b"),
        ),
    )
    tight = by_id["q6"]
    assert tight.finish_time - tight.arrival_time <= 8.0  # met
    assert fcfs.metrics.slo_classes["tight"].met == 0  # behind six long ones it is not
    later = [r for r in by_id.values() if r.first_token_time > tight.first_token_time]
    assert len(later) >= 4  # it went ahead of the queued loose ones
