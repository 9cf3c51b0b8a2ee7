"""`python -m benchmarks.bench_predictor actor`: the shared predictor Ray actor under concurrent
load (prompts/s, p50/p99 latency at truncation 128, 256 and 512 tokens, in fp32, bf16 and int8)
and the tau each variant costs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np

from benchmarks.bench_predictor import CACHE, EVAL_SETS, _fmt, _load
from benchmarks.prompt_sets import (
    ARENA_GPT4,
    GPTEACHER,
)
from benchmarks.report import update_section
from cluster.rank_agreement import kendall_tau_b
from predictor_actor.embeddings import prompt_features
from predictor_actor.encoder import native_bf16
from predictor_actor.model import DEFAULT_MODEL_DIR, RankingModel

# (truncation, encoding, prompts per encoder chunk) served by the actor; chunk 64 = the whole
# batch in one padded forward pass
VARIANTS = (
    (128, "bf16", 16),
    (256, "bf16", 16),
    (512, "bf16", 16),
    (256, "fp32", 16),
    (256, "int8", 16),
    (256, "bf16", 64),
)
# encoding -> (EncoderConfig.quantize, EncoderConfig.bf16)
ENCODINGS = {"fp32": (False, False), "bf16": (False, True), "int8": (True, False)}
LOAD_SETS = {  # prompts sent to the actor: self-instruct prompts, and long real user prompts
    "gpteacher test split": (GPTEACHER, "test"),
    "arena_hard gpt-4-0314": (ARENA_GPT4, None),
}
TAU_SETS = (
    "gpteacher (test split)",
    "arena_hard gpt-4-0314 (test split)",
    "alpaca_eval Llama-3-8B-Instruct",
)


async def _closed_loop(actor, prompts: list[str], concurrency: int) -> tuple[float, np.ndarray]:
    """`concurrency` clients, each sending one prompt at a time; (wall seconds, latencies)."""
    latencies: list[float] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < len(prompts):
            prompt = prompts[next_index]
            next_index += 1
            t = time.perf_counter()
            await actor.score.remote(prompt)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t0, np.asarray(latencies)


def actor_bench(
    requests: int,
    concurrency: int,
    max_batch_size: int,
    max_wait_ms: float,
    torch_threads: int | None,
) -> None:
    import ray

    from predictor_actor.actor import start_predictor_actor
    from predictor_actor.batching import PredictorConfig

    model = RankingModel.load(DEFAULT_MODEL_DIR)
    trained = model.config.encoder
    default_encoding = "bf16" if native_bf16() else "fp32"  # PredictorConfig's default here
    default_chunk = PredictorConfig().chunk_size

    def _variant(length: int, encoding: str, chunk: int = default_chunk) -> str:
        layers = f"{trained.layers} layer{'s' if trained.layers > 1 else ''}"
        default = (length, encoding, chunk) == (256, default_encoding, default_chunk)
        return f"{length} {encoding}{' (default)' if default else ''}, {layers}"

    load_sets = {name: _load(*where).prompts for name, where in LOAD_SETS.items()}
    rows = []
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        for length, encoding, chunk in VARIANTS:
            quantize, bf16 = ENCODINGS[encoding]
            config = PredictorConfig(
                max_length=length,
                max_batch_size=max_batch_size,
                max_wait_ms=max_wait_ms,
                quantize=quantize,
                bf16=bf16,
                chunk_size=chunk,
            )
            actor = start_predictor_actor(config, name=None, torch_threads=torch_threads)
            variant = f"{_variant(length, encoding, chunk)}, chunks of {chunk}"
            health = ray.get(actor.health.remote())
            assert health["status"] == "ok", health
            for name, pool in load_sets.items():
                rng = np.random.default_rng(0)
                prompts = [pool[i] for i in rng.integers(0, len(pool), requests)]
                asyncio.run(_closed_loop(actor, prompts[:64], concurrency))  # warm up
                before = ray.get(actor.health.remote())
                wall, lat = asyncio.run(_closed_loop(actor, prompts, concurrency))
                after = ray.get(actor.health.remote())
                batches = after["batches"] - before["batches"]
                rows.append(
                    (
                        variant,
                        name,
                        requests / wall,
                        np.percentile(lat, 50) * 1e3,
                        np.percentile(lat, 99) * 1e3,
                        requests / max(batches, 1),
                    )
                )
                print(
                    f"truncation {variant} {name}: {rows[-1][2]:.0f} prompts/s, "
                    f"p50 {rows[-1][3]:.0f} ms, p99 {rows[-1][4]:.0f} ms, mean batch {rows[-1][5]:.1f}"
                )
            ray.kill(actor)
    finally:
        ray.shutdown()

    # tau of the shipped model served at each truncation and encoding
    evals = {name: _load(*EVAL_SETS[name]) for name in TAU_SETS}
    taus = {}
    tau_variants = list(dict.fromkeys((n, e) for n, e, _ in VARIANTS))
    for length, encoding in tau_variants:
        quantize, bf16 = ENCODINGS[encoding]
        enc = replace(model.config.encoder, max_length=length, quantize=quantize, bf16=bf16)
        for name, data in evals.items():
            feats = prompt_features(data.prompts, enc, cache_dir=CACHE, progress=True)
            taus[length, encoding, name] = kendall_tau_b(
                model.scores_from_features(feats), data.output_tokens
            )
    trained_at = model.config.encoder.max_length
    threads = torch_threads or "2 (the default on 2 cores)"
    lines = [
        f"One predictor actor (shipped ListMLE model: the first {trained.layers} of MiniLM's 6 "
        f"layers, trained on fp32 features at truncation {trained_at}) on a "
        f"local Ray, {concurrency} concurrent closed-loop clients each sending one prompt per "
        f"call (`actor.score.remote`), {requests} prompts per row drawn at random from the set "
        f"named; batching: at most {max_batch_size} prompts / {max_wait_ms:g} ms, each batch "
        "encoded in length-sorted chunks of the size shown. Latency is per call, as the client sees it. Encoder "
        f"threads: {threads}; the clients share the same 2 cores (no other job was running). "
        "bf16: the encoder under bfloat16 autocast (head and pooling in fp32), the default where "
        f"the CPU computes bf16 natively ({'it does here' if native_bf16() else 'not here'}); "
        "int8: dynamic quantization of the encoder's linear layers.",
        "",
        "| truncation (tokens), encoding | prompts | prompts/s | p50 latency (ms) | p99 latency (ms) "
        "| mean batch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c:.0f} | {d:.0f} | {e:.0f} | {f:.1f} |" for a, b, c, d, e, f in rows]
    names = [_variant(n, e) for n, e in tau_variants]
    lines += [
        "",
        f"Kendall tau-b of the same model (trained at {trained_at}) when prompts are truncated to "
        "each length and encoded each way:",
        "",
        "| held-out set | " + " | ".join(f"truncation {n}" for n in names) + " |",
        "|---|" + "---:|" * len(tau_variants),
    ]
    for name in TAU_SETS:
        lines.append(
            f"| {name} | " + " | ".join(_fmt(taus[n, e, name]) for n, e in tau_variants) + " |"
        )
    print("\n".join(lines))
    update_section("predictor-actor", "\n".join(lines))
