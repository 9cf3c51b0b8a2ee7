"""`python -m benchmarks.bench_predictor memory`: the cost of the retrieval memory of served
traffic (predictor_actor.memory) when full: lookup latency per prompt and per batch at the
measured size, insertion rate, and the size on disk."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import update_section
from predictor_actor.encoder import HIDDEN
from predictor_actor.memory import MemoryConfig, RetrievalMemory


def memory_bench(stored: int, queries: int, batch: int) -> None:
    # Random unit vectors: no cluster structure to exploit, so HNSW works hardest (real
    # prompt embeddings cluster, which makes the search cheaper, not dearer).
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, HIDDEN)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    memory = RetrievalMemory(HIDDEN, MemoryConfig(capacity=stored))
    t0 = time.perf_counter()
    for start in range(0, stored, 10_000):
        n = min(10_000, stored - start)
        memory.add(unit(n), rng.integers(1, 2000, n))
    add_s = time.perf_counter() - t0
    probe = unit(queries)
    for q in probe[:50]:  # warm-up
        memory.recall(q[None])
    single = []
    for q in probe:
        t = time.perf_counter()
        memory.recall(q[None])
        single.append(time.perf_counter() - t)
    batched = []
    for start in range(0, queries - batch + 1, batch):
        t = time.perf_counter()
        memory.recall(probe[start : start + batch])
        batched.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        memory.save(tmp)
        save_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        t = time.perf_counter()
        back = RetrievalMemory.load(tmp, HIDDEN, MemoryConfig(capacity=stored))
        load_s = time.perf_counter() - t
        assert len(back) == stored
    ms = lambda xs, q: 1000 * float(np.quantile(xs, q))  # noqa: E731
    lines = [
        f"The retrieval memory holding {stored:,} entries (384-dim f16 vectors in usearch's HNSW "
        "index, cosine, connectivity 16, search breadth 64; random unit vectors, the hardest "
        f"case for the graph), k = 16 neighbours per prompt, {queries:,} lookups (a batch is "
        "one search call, usearch's default threads), shared 2-core machine.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| lookup of 1 prompt, p50 | {ms(single, 0.5):.3f} ms |",
        f"| lookup of 1 prompt, p99 | **{ms(single, 0.99):.3f} ms** |",
        f"| lookup of a batch of {batch}, p50 | {ms(batched, 0.5):.2f} ms |",
        f"| lookup of a batch of {batch}, p99 | {ms(batched, 0.99):.2f} ms |",
        f"| insertion | {stored / add_s:,.0f} entries/s |",
        f"| size on disk | {size / 2**20:.0f} MiB |",
        f"| save / load | {save_s:.2f} s / {load_s:.2f} s |",
    ]
    print("\n".join(lines))
    update_section("predictor-memory", "\n".join(lines))


def online_curve(window: int, retrain_every: int) -> None:
    """Replay arena-hard v2.0 prompts with o3-mini's answers (a distribution the shipped model
    was not trained on) in their order through the live learning loop: the scores each next
    window gets are what the predictor serves at that point (ranker + memory), then the window
    is logged as served and the learner takes it in (retrain and swap when due)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.prompt_sets import ARENA_O3_MINI, prompt_file
    from cluster.rank_agreement import kendall_tau_b
    from cluster.workload.prompts import read_prompt_file
    from predictor_actor.batching import BatchingPredictor, PredictorConfig
    from predictor_actor.learning import LearningConfig
    from predictor_actor.retrain import RetrainConfig

    records = read_prompt_file(prompt_file(ARENA_O3_MINI))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.jsonl"
        config = LearningConfig(
            request_log=str(log),
            retrain_every_requests=retrain_every,
            retrain=RetrainConfig(min_requests=2 * window),
            poll_s=1e6,  # this benchmark calls the learning pass itself, once per window
        )
        predictor = BatchingPredictor(PredictorConfig(learning=config))
        served, rows, events = 0, [], []
        for start in range(0, len(records) - window + 1, window):
            part = records[start : start + window]
            got = predictor.score_batch([r.prompt for r in part])
            tau = kendall_tau_b([p.score for p in got], [r.output_tokens for r in part])
            rows.append((served, tau, got[0].version))
            print(f"served {served}: tau on the next {window} = {tau:.3f} ({got[0].version})")
            with open(log, "a") as f:
                for r in part:
                    f.write(
                        json.dumps({"prompt": r.prompt, "output_tokens": r.output_tokens}) + "\n"
                    )
            served += len(part)
            events += predictor.learning.step()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o")
    ax.axhline(0.45, ls="--", c="grey", lw=0.8)
    ax.set_xlabel("requests served (and learned)")
    ax.set_ylabel(f"Kendall tau on the next {window}")
    ax.set_title("Online learning: arena-hard v2.0, o3-mini answers")
    fig.tight_layout()
    img = Path(__file__).resolve().parent.parent / "docs" / "img" / "online_learning_curve.png"
    fig.savefig(img, dpi=110)
    lines = [
        f"The shipped default replayed through the learning loop (BatchingPredictor with "
        f"learning on: retrieval memory + retrain every {retrain_every} labels, of two "
        "candidates, the head fine-tuned or its MLP with a ridge-fitted linear correction, the "
        "better swapped in only if it beats the serving model on the newest 20%) on the "
        f"{len(records)} arena-hard v2.0 prompts with "
        f"o3-mini's answers, in file order. Each row: tau of the scores served to the next "
        f"{window} requests, before they are learned. Target: >= 0.45 after 500 served.",
        "",
        "![online learning curve](img/online_learning_curve.png)",
        "",
        "| served before the window | version serving | tau on the window |",
        "|---:|---|---:|",
        *(f"| {s} | {v} | {t:.3f} |" for s, t, v in rows),
        "",
        "Retrain events: "
        + "; ".join(
            f"{e['event']} ({e.get('candidate', 'candidate')} "
            f"{e.get('candidate_tau', float('nan')):.3f} vs serving "
            f"{e.get('current_tau', float('nan')):.3f})"
            for e in events
        ),
    ]
    print("\n".join(lines))
    update_section("predictor-online-curve", "\n".join(lines))
