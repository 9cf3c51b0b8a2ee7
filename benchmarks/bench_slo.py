"""SLO-aware scheduling benchmarks (issue 12).

cost   the `slo` policy's plan time (its default budget: 300 proposals, 4 ms, horizon 64)
       at 100, 1,000 and 10,000 queued requests on 4 replicas
mix    the multi-SLO mix (code_alpaca: e2e 4 s; AlpacaEval Llama-3-8B answers: TTFT 1 s +
       TPOT 40 ms; arena-hard v2 o3-mini answers: e2e 60 s; 40/40/20) on 4 a100-llama3-8b
       replicas, Poisson arrivals at multiples of capacity, every policy given
       (needs ../shared/datasets)
admission  the mix with SLO-aware admission off, reject and demote (`--modes`), judged over
       every request sent by the class it was sent with
overhead   the slo policy on the mix under the served budget (4 ms a plan): plans, their
       time, and its share of the requests' latency

  python -m benchmarks.bench_slo cost
  python -m benchmarks.bench_slo mix --loads 0.6,1.2 --seeds 0 --duration 40 [--predictor true]
  python -m benchmarks.bench_slo admission --loads 1.2,1.5 --seeds 0 --policies fcfs,slo
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.prompt_sets import ALPACA_LLAMA3_8B, ARENA_O3_MINI, CODE_ALPACA, DATA, prompt_file
from benchmarks.report import update_section
from cluster.config import (
    EngineConfig,
    PolicyConfig,
    SchedulerConfig,
    SLOClass,
    SLOConfig,
    SLOSearchConfig,
)
from cluster.latency_model import LatencyModel
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.slo_search import Problem, plan
from cluster.workload.prompts import read_prompt_file, write_prompt_file
from cluster.workload.scoring import with_true_lengths
from cluster.workload.slo_mix import MixPart, mix_prompts
from cluster.workload.workload import build_workload

PROFILE = "a100-llama3-8b"
REPLICAS = 4
SLOS = SLOConfig(
    (
        SLOClass("code", e2e_s=4.0),
        SLOClass("chat", ttft_s=1.0, tpot_s=0.04),
        SLOClass("longform", e2e_s=60.0),
    ),
    default="chat",
)
MAX_OUTPUT = 2048
MIX_FILE = DATA / "slo_mix.jsonl"
IMG = Path(__file__).resolve().parent.parent / "docs" / "img" / "slo_attainment.png"


def cost() -> None:
    rng = np.random.default_rng(0)
    model = LatencyModel.named(PROFILE)
    search = SLOSearchConfig()
    rows = [
        "| queued | plans | plan p50 (ms) | plan p99 (ms) | proposals p50 |",
        "|---|---|---|---|---|",
    ]
    for n in (100, 1000, 10_000):
        times, iters = [], []
        for k in range(30):
            tokens = rng.integers(5, 1500, n).astype(float)
            e2e = np.where(rng.random(n) < 0.6, rng.uniform(2, 60, n), np.inf)
            running = 4 * 200
            p = Problem(
                now=10.0,
                arrival=rng.uniform(0, 10, n),
                prefill_s=rng.uniform(0.005, 0.1, n),
                tokens=tokens,
                e2e_bound=e2e,
                ttft_bound=np.where(np.isinf(e2e), 1.0, np.inf),
                tpot_bound=np.where(np.isinf(e2e), 0.04, np.inf),
                weight=np.ones(n),
                run_replica=rng.integers(0, 4, running),
                run_elapsed=rng.uniform(0, 20, running),
                run_ttft=rng.uniform(0, 1, running),
                run_tokens=rng.integers(1, 800, running).astype(float),
                run_e2e_bound=np.full(running, 30.0),
                run_ttft_bound=np.full(running, np.inf),
                run_tpot_bound=np.full(running, np.inf),
                run_weight=np.ones(running),
                max_seqs=np.full(4, 256),
                step_s=lambda _r, b: model.decode_step_s(b, 640),
            )
            start = time.perf_counter()
            result = plan(p, np.full(4, 256), search, random.Random(k))
            times.append((time.perf_counter() - start) * 1000)
            iters.append(result.iterations)
        p50, p99 = np.percentile(times, [50, 99])
        print(
            f"{n} queued: plan p50 {p50:.2f} ms, p99 {p99:.2f} ms, {np.median(iters):.0f} proposals"
        )
        rows.append(f"| {n:,} | 30 | {p50:.2f} | {p99:.2f} | {np.median(iters):.0f} |")
    update_section(
        "slo-cost",
        "### SLO policy: search cost per plan\n\nOne core of this 2-core machine, default budget "
        f"({search.iterations} proposals, {search.max_wall_ms:g} ms wall for the whole plan, "
        f"horizon {search.horizon}), 4 replicas with 800 running requests; a plan is the "
        "most-on-time construction and the annealing from the better start.\n\n" + "\n".join(rows),
    )


def mix_file() -> list:
    if not MIX_FILE.is_file():
        parts = [
            MixPart(read_prompt_file(prompt_file(CODE_ALPACA)), "code", 0.4),
            MixPart(read_prompt_file(prompt_file(ALPACA_LLAMA3_8B)), "chat", 0.4),
            MixPart(read_prompt_file(prompt_file(ARENA_O3_MINI)), "longform", 0.2),
        ]
        write_prompt_file(MIX_FILE, mix_prompts(parts, 3000, 0))
    return read_prompt_file(MIX_FILE)


def capacity(records) -> float:
    """Requests/s the 4 replicas sustain full (vLLM's 256 sequences each): slots over the mean
    request's time, prefill plus its tokens at the full batch's step time (the latency model
    on the mix's own lengths)."""
    model = LatencyModel.named(PROFILE)
    out = np.minimum([r.output_tokens for r in records], MAX_OUTPUT)
    prompt = np.array([r.prompt_tokens for r in records])
    step = model.decode_step_s(256, int(prompt.mean() + out.mean() / 2))
    service = np.mean([model.prefill_s(int(p)) for p in prompt]) + out.mean() * step
    return REPLICAS * 256 / service


def shipped_predictions(records) -> dict[str, tuple[float, float]]:
    """The shipped models' (rank score, predicted tokens) of each of the mix's prompts."""
    from predictor_actor.scoring import ModelScorer

    prompts = sorted({r.prompt for r in records})
    scores, lengths = ModelScorer(None, None).predict(prompts)
    return {t: (float(s), float(n)) for t, s, n in zip(prompts, scores, lengths, strict=True)}


def with_mix_predictions(items, predictions):
    if predictions is None:
        return with_true_lengths(items)
    return [
        dataclasses.replace(
            it, score=predictions[it.prompt][0], predicted_tokens=predictions[it.prompt][1]
        )
        for it in items
    ]


def mix(
    loads: list[float], seeds: list[int], duration: float, policies: list[str], predictor: str
) -> None:
    records = mix_file()
    cap = capacity(records)
    print(f"capacity {cap:.1f} req/s")
    predictions = shipped_predictions(records) if predictor == "shipped" else None
    rows = [
        "| load | rate (req/s) | seed | policy | SLO attainment | code | chat | longform "
        "| goodput (req/s) | mean e2e (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    got: dict[tuple[float, str], list[tuple[float, float]]] = {}  # (attainment, mean e2e)
    for load in loads:
        rate = load * cap
        for seed in seeds:
            items = build_workload(
                records, f"poisson:{rate}", int(rate * duration), seed, max_output_tokens=MAX_OUTPUT
            )
            items = with_mix_predictions(items, predictions)
            for name in policies:
                config = SimulationConfig(
                    SchedulerConfig(
                        policy=PolicyConfig(
                            name=name, slo_search=SLOSearchConfig(max_wall_ms=None, seed=seed)
                        ),
                        slo=SLOS,
                    ),
                    EngineConfig(),
                    load_profile(PROFILE),
                    replicas=REPLICAS,
                )
                r = simulate(items, config)
                m = r.metrics
                got.setdefault((load, name), []).append((m.slo_attainment, m.e2e_latency_s.mean))
                by = {k: f"{100 * v.attainment:.1f}%" for k, v in m.slo_classes.items()}
                line = (
                    f"| {load:g}x | {rate:.1f} | {seed} | {name} | {100 * m.slo_attainment:.1f}% | "
                    f"{by.get('code', '-')} | {by.get('chat', '-')} | {by.get('longform', '-')} | "
                    f"{m.goodput_rps:.2f} | {m.e2e_latency_s.mean:.2f} |"
                )
                print(line, f"(wall {r.wall_time_s:.0f} s)", flush=True)
                rows.append(line)
    mean = {k: np.mean(v, axis=0) for k, v in got.items()}
    summary = [
        "| load | " + " | ".join(f"{n} attainment (mean e2e s)" for n in policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for load in loads:
        summary.append(
            f"| {load:g}x | "
            + " | ".join(
                f"{100 * mean[load, n][0]:.1f}% ({mean[load, n][1]:.2f})" for n in policies
            )
            + " |"
        )
    checks = _target_checks(loads, mean) if {"fcfs", "ltr", "edf", "slo"} <= set(policies) else []
    img = _plot(loads, policies, mean, duration)
    update_section(
        "slo-mix",
        "### SLO policy: multi-SLO mix in the simulator\n\n4 a100-llama3-8b replicas (vLLM "
        f"defaults: 256 sequences), Poisson arrivals for {duration:g} s, then the queue drained; "
        + (
            "predictions from the shipped models (ltr ranks by their score, the slo policy's "
            "latency model reads their predicted tokens; fcfs and edf read none)"
            if predictions is not None
            else "true lengths as predictions"
        )
        + f", answers capped at {MAX_OUTPUT} tokens. Classes: code e2e 4 s (code_alpaca), chat "
        "TTFT 1 s + TPOT 40 ms (AlpacaEval, Llama-3-8B answers), longform e2e 60 s (arena-hard "
        "v2.0, o3-mini answers; the shipped models trained on arena-hard's train split, labelled "
        "by other models' answers); mix 40/40/20. Capacity (the latency model's estimate, "
        f"`capacity()`): {cap:.1f} req/s. Attainment counts every request sent. Mean over "
        f"seeds {', '.join(map(str, seeds))}:\n\n"
        + "\n".join(summary)
        + ("\n\nTargets (issue 12):\n\n" + "\n".join(checks) if checks else "")
        + f"\n\n![SLO attainment against load]({img})\n\nEach run:\n\n"
        + "\n".join(rows),
    )


def _target_checks(loads, mean) -> list[str]:
    lines = []
    for load in loads:
        slo, fcfs = mean[load, "slo"], mean[load, "fcfs"]
        best = max(mean[load, "ltr"][0], mean[load, "edf"][0])
        ltr_e2e = mean[load, "ltr"][1]
        if load >= 1.2:
            lines.append(
                f"- {load:g}x: slo / fcfs attainment {slo[0] / fcfs[0]:.2f} (target >= 3; at "
                f"most {1 / fcfs[0]:.2f} were every request to meet its SLO), "
                f"slo / best of ltr, edf {slo[0] / best:.2f} (>= 1.3), mean e2e slo / ltr "
                f"{slo[1] / ltr_e2e:.2f} (<= 1.10)"
            )
        elif load <= 0.6:
            lines.append(
                f"- {load:g}x: slo {100 * slo[0]:.1f}% vs fcfs {100 * fcfs[0]:.1f}% attainment, "
                f"mean e2e {slo[1]:.2f} vs {fcfs[1]:.2f} s (target: no worse than fcfs)"
            )
    return lines


def _plot(loads, policies, mean, duration: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in policies:
        ax.plot(loads, [100 * mean[load, name][0] for load in loads], marker="o", label=name)
    ax.set_xlabel("offered load (x capacity)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"Multi-SLO mix, 4 A100 replicas, {duration:g} s of Poisson arrivals")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMG, dpi=110)
    return f"img/{IMG.name}"


def overhead(loads: list[float], seed: int, duration: float, predictor: str) -> None:
    """The slo policy under the served scheduler's own budget (300 proposals or 4 ms a plan,
    wall time), on the mix: what planning costs its host against the requests' latency."""
    records = mix_file()
    cap = capacity(records)
    predictions = shipped_predictions(records) if predictor == "shipped" else None
    search = SLOSearchConfig(seed=seed)
    rows = [
        "| load | SLO attainment | plans | mean plan (ms) | planning per simulated s | "
        "planning / sum of e2e |",
        "|---|---|---|---|---|---|",
    ]
    for load in loads:
        rate = load * cap
        items = with_mix_predictions(
            build_workload(
                records, f"poisson:{rate}", int(rate * duration), seed, max_output_tokens=MAX_OUTPUT
            ),
            predictions,
        )
        scheduler = SchedulerConfig(policy=PolicyConfig(name="slo", slo_search=search), slo=SLOS)
        r = simulate(
            items, SimulationConfig(scheduler, EngineConfig(), load_profile(PROFILE), REPLICAS)
        )
        plans, plan_s = r.extra["plans"], r.extra["plan_s"]
        e2e = sum(t.e2e for t in r.timings)
        line = (
            f"| {load:g}x | {100 * r.metrics.slo_attainment:.1f}% | {plans:,} | "
            f"{1000 * plan_s / plans:.2f} | {plan_s / r.virtual_time_s:.3f} s | "
            f"{100 * plan_s / e2e:.3f}% |"
        )
        print(line, flush=True)
        rows.append(line)
    update_section(
        "slo-overhead",
        "### SLO policy: planning overhead on the mix\n\nThe mix above at each load, seed "
        f"{seed}, {duration:g} s of arrivals, the served scheduler's budget ({search.iterations} "
        f"proposals or {search.max_wall_ms:g} ms a plan, wall time on this 2-core machine). A plan "
        "runs before each scheduling round in which the queue changed. Planning per simulated "
        "second: the share of one core the search would take live at this rate; planning / sum "
        "of e2e: the plans' total time over the requests' total latency (target < 1%).\n\n"
        + "\n".join(rows),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["cost", "mix", "admission", "overhead"])
    p.add_argument("--loads", default="0.6,0.9,1.2,1.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--policies", default="fcfs,ltr,edf,slo")
    p.add_argument(
        "--predictor",
        choices=["shipped", "true"],
        default="shipped",
        help="what the policies rank by: the shipped models, or the true lengths",
    )
    p.add_argument("--modes", default="off,reject,demote", help="admission: slo_unreachable")
    a = p.parse_args()
    if a.what == "cost":
        cost()
    elif a.what == "overhead":
        overhead([float(x) for x in a.loads.split(",")], 0, a.duration, a.predictor)
    elif a.what == "admission":
        from benchmarks.slo_admission import admission

        admission(
            [float(x) for x in a.loads.split(",")],
            [int(x) for x in a.seeds.split(",")],
            a.duration,
            a.policies.split(","),
            a.modes.split(","),
            a.predictor,
        )
    else:
        mix(
            [float(x) for x in a.loads.split(",")],
            [int(x) for x in a.seeds.split(",")],
            a.duration,
            a.policies.split(","),
            a.predictor,
        )


if __name__ == "__main__":
    main()
