"""`rankserve bench`: replay a workload against a live rankserve endpoint and report the same
metrics as `rankserve simulate` (cluster.metrics), per scheduling policy.

Each request asks for exactly its true answer length (`max_tokens` = the prompt file's
`output_tokens`, with `ignore_eos`), names its SLO class (the body field `slo`, from the prompt
file's `slo` column), streams, and is timed on the client: arrival (when sent), first token,
every gap between tokens, finish. SLO attainment is judged on the client's timings against the
classes given with `--slo-class` (the service's own, `scheduler.slo`). Policies are switched on the running cluster
between runs (the scheduler actor's `set_policy`), so every policy meets the same engines.
Runs inside the cluster (`ray job submit -- rankserve bench ...`) or beside it (`--ray-address`).

With `--simulate PROFILE`, the simulator replays the same workload (the prompt lengths the
server counted, the same scores) with the same engine limits, and its prediction is printed
beside each live run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cluster.config import PolicyConfig, SLOConfig
from cluster.metrics import RequestTiming, ServingMetrics, summarize
from cluster.policies import POLICIES
from cluster.workload.workload import WorkloadItem

IDLE_TIMEOUT_S = 120.0


@dataclass(slots=True)
class LiveRun:
    policy: str
    metrics: ServingMetrics
    timings: list[RequestTiming]
    prompt_tokens: dict[str, int]  # request id -> prompt length the server counted
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "source": "live", **self.metrics.to_dict()}


def register(subparsers: Any, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="rankserve HTTP endpoint")
    p.add_argument("--model", default=None, help="model name (default: the one served)")
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="prompt file (JSONL with prompt, output_tokens); default: the demo file",
    )
    p.add_argument("--arrivals", default="burst", help="burst | poisson:RATE | gamma:RATE:CV")
    p.add_argument("-n", "--num-requests", type=int, default=100)
    p.add_argument("--max-output-tokens", type=int, default=256, help="cap true lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--policy",
        action="append",
        default=None,
        help="policies to run in turn (repeat or comma-separate); default: the running one only",
    )
    p.add_argument(
        "--ray-address",
        default="auto",
        help="Ray cluster to switch policies on ('auto': the one this job runs in)",
    )
    p.add_argument(
        "--simulate",
        default=None,
        metavar="PROFILE",
        help="also predict each run with the simulator on this step-time profile",
    )
    p.add_argument(
        "--slo-class",
        action="append",
        default=None,
        metavar="NAME:BOUNDS",
        help="the service's SLO classes (as `rankserve simulate --slo-class`), to judge "
        "attainment by; requests name theirs in the prompt file's slo column",
    )
    p.add_argument("--slo-default", default=None, help="class of requests that name none")
    p.add_argument("--json", action="store_true", help="print one JSON object per run")
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.set_defaults(func=run)


def load_workload(
    prompts: Path | None, arrivals: str, n: int, seed: int, max_output_tokens: int
) -> list[WorkloadItem]:
    from cluster.workload.prompts import DEMO_PROMPT_FILE, read_prompt_file
    from cluster.workload.workload import build_workload

    records = read_prompt_file(prompts or DEMO_PROMPT_FILE)
    return build_workload(records, arrivals, n, seed, max_output_tokens=max_output_tokens)


async def _one(
    client: Any, model: str, item: WorkloadItem, start: float, timeout: float, run: LiveRun
) -> RequestTiming | None:
    delay = start + item.arrival_time - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    body = {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": item.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if item.slo is not None:
        body["slo"] = item.slo
    arrival = time.monotonic()
    first = last = None
    gap = 0.0
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                run.errors.append(f"{item.request_id}: HTTP {r.status_code} {await r.aread()!r}")
                return None
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                now = time.monotonic()
                if "error" in event:
                    run.errors.append(f"{item.request_id}: {event['error']['message']}")
                    return None
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                    run.prompt_tokens[item.request_id] = event["usage"]["prompt_tokens"]
                if event["choices"]:
                    if first is None:
                        first = now
                    elif now - last > gap:
                        gap = now - last
                    last = now
    except Exception as e:  # noqa: BLE001 - one failed request is a measured failure
        run.errors.append(f"{item.request_id}: {type(e).__name__}: {e}")
        return None
    if first is None or tokens != item.output_tokens:
        run.errors.append(f"{item.request_id}: got {tokens} tokens, wanted {item.output_tokens}")
        return None
    return RequestTiming(arrival, first, last, tokens, gap, slo=item.slo)


async def replay(
    url: str,
    model: str,
    items: list[WorkloadItem],
    policy: str,
    timeout: float,
    progress: bool = True,
    slos: SLOConfig | None = None,
) -> LiveRun:
    import httpx

    run = LiveRun(policy, summarize([]), [], {}, [])
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    key = os.environ.get("RANKSERVE_API_KEY")  # a service with API keys on
    headers = {"authorization": f"Bearer {key}"} if key else None
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:
        start = time.monotonic() + 0.5  # every task is waiting before the first arrival
        tasks = [asyncio.create_task(_one(client, model, it, start, timeout, run)) for it in items]
        bar = tqdm(total=len(tasks), desc=f"{policy}", disable=not progress, file=sys.stderr)
        results = []
        for task in asyncio.as_completed(tasks):
            results.append(await task)
            bar.update()
        bar.close()
    run.timings = [t for t in results if t is not None]
    run.metrics = summarize(run.timings, failed=len(results) - len(run.timings), slos=slos)
    return run


def wait_idle(url: str, timeout: float = IDLE_TIMEOUT_S) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/status", timeout=10).json()
        if status["queued"] + status["dispatched"] + status["running"] == 0:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not go idle in {timeout:.0f} s: {status}")
        time.sleep(0.5)


def set_policy(ray_address: str, policy: str) -> None:
    import ray

    from cluster.runtime.names import NAMESPACE, SCHEDULER_ACTOR

    if not ray.is_initialized():
        ray.init(address=ray_address, namespace=NAMESPACE, log_to_driver=False)
    scheduler = ray.get_actor(SCHEDULER_ACTOR, namespace=NAMESPACE)
    ray.get(scheduler.set_policy.remote(PolicyConfig(name=policy)))


def scores_like_server(scorer: str, prompts: list[str]) -> tuple[list[float], list[float]]:
    """The scores and predicted lengths the server's scorer gives these prompts."""
    from predictor_actor.heuristic import heuristic_lengths, heuristic_scores

    if "heuristic" not in scorer:
        from predictor_actor.model import ModelLoadError
        from predictor_actor.scoring import predict_lengths, score_prompts

        try:  # the predictor actor serves the shipped model, or the heuristic if it has none
            return list(score_prompts(None, prompts)), list(predict_lengths(None, prompts))
        except ModelLoadError:
            pass
    return list(heuristic_scores(prompts)), list(heuristic_lengths(prompts))


def simulate_like(
    run: LiveRun,
    items: list[WorkloadItem],
    status: dict,
    profile: str,
    scorer: str,
    slos: SLOConfig | None = None,
    policy: PolicyConfig | None = None,
) -> ServingMetrics:
    """The simulator's prediction of `run`: same requests (with the prompt lengths the server
    counted), same scores, same policy (`policy`'s settings under the run's name), SLO classes,
    replicas and engine limits."""
    from cluster.config import EngineConfig, SchedulerConfig
    from cluster.sim.simulator import SimulationConfig, simulate
    from cluster.sim.step_time import load_profile

    scores, lengths = scores_like_server(scorer, [it.prompt or "" for it in items])
    sim_items = [
        dataclasses.replace(
            it,
            prompt_tokens=run.prompt_tokens.get(it.request_id, it.prompt_tokens),
            score=s,
            predicted_tokens=p,
        )
        for it, s, p in zip(items, scores, lengths, strict=True)
    ]
    info = next(r["info"] for r in status["replicas"] if r["info"])
    engine = EngineConfig(
        max_num_seqs=info["max_num_seqs"],
        max_num_batched_tokens=info["max_num_batched_tokens"],
        block_size=info["block_size"],
        num_kv_blocks=info["total_kv_blocks"],
        max_model_len=info["max_model_len"],
    )
    config = SimulationConfig(
        scheduler=SchedulerConfig(
            policy=dataclasses.replace(policy or PolicyConfig(), name=run.policy),
            slo=slos or SLOConfig(),
        ),
        engine=engine,
        profile=load_profile(profile),
        replicas=sum(r["alive"] for r in status["replicas"]),
    )
    return simulate(sim_items, config).metrics


def run_policies(
    url: str,
    model: str | None,
    items: list[WorkloadItem],
    policies: list[str],
    ray_address: str,
    timeout: float,
    progress: bool = True,
    slos: SLOConfig | None = None,
) -> list[LiveRun]:
    """Replay `items` on the live endpoint once per policy, switching policies in between."""
    import httpx

    model = model or httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    runs = []
    for policy in policies:
        status = wait_idle(url)
        if policy != status["policy"]:
            set_policy(ray_address, policy)
            wait_idle(url)
        runs.append(asyncio.run(replay(url, model, items, policy, timeout, progress, slos)))
    return runs


def result_dict(
    run: LiveRun,
    items: list[WorkloadItem],
    status: dict,
    simulate_profile: str | None,
    slos: SLOConfig | None = None,
    policy: PolicyConfig | None = None,
) -> dict[str, Any]:
    """The live run's metrics, with the simulator's prediction of it when a profile is given."""
    out = run.to_dict()
    out["errors"] = run.errors[:10]
    if simulate_profile:
        scorer = status.get("scorer", "")
        sim = simulate_like(run, items, status, simulate_profile, scorer, slos, policy)
        out["simulated"] = {"profile": simulate_profile, **sim.to_dict()}
    return out


def run(args: argparse.Namespace) -> int:
    from cluster.sim.cli import slo_config

    items = load_workload(
        args.prompts, args.arrivals, args.num_requests, args.seed, args.max_output_tokens
    )
    try:
        policies = POLICIES.parse_list(args.policy or [])
        slos = slo_config(args.slo_class, args.slo_default)
        for name in sorted({it.slo for it in items if it.slo is not None}):
            slos.get(name)  # a class the prompt file names must be one given
    except ValueError as e:
        print(f"rankserve bench: error: {e}", file=sys.stderr)
        return 2
    if not policies:
        import httpx

        policies = [httpx.get(f"{args.url}/status", timeout=10).json()["policy"]]
    import httpx

    runs = run_policies(
        args.url, args.model, items, policies, args.ray_address, args.timeout, slos=slos
    )
    status = httpx.get(f"{args.url}/status", timeout=10).json()
    results = [result_dict(r, items, status, args.simulate, slos) for r in runs]
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(format_row(r, args.arrivals))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any(r["failed"] for r in results) else 0


def format_row(r: dict[str, Any], workload: str) -> str:
    line = (
        f"{workload} {r['policy']}: {r['completions']} done, {r['failed']} failed; "
        f"e2e mean {r['e2e_latency_s']['mean']:.2f} s p99 {r['e2e_latency_s']['p99']:.2f} s; "
        f"per-token {r['per_token_latency_s']['mean'] * 1e3:.1f} ms; "
        f"TTFT mean {r['ttft_s']['mean']:.2f} s; {r['throughput_tps']:.0f} tok/s; "
        f"SLO {100 * r['slo_attainment']:.1f}%"
    )
    if len(r["slo_classes"]) > 1:
        line += (
            " ("
            + ", ".join(
                f"{name} {100 * c['attainment']:.1f}%" for name, c in r["slo_classes"].items()
            )
            + ")"
        )
    line += f", goodput {r['goodput_rps']:.2f} req/s"
    if "simulated" in r:
        sim = r["simulated"]["e2e_latency_s"]["mean"]
        live = r["e2e_latency_s"]["mean"]
        line += f"; simulated e2e mean {sim:.2f} s ({(sim - live) / live:+.0%})"
    return line
