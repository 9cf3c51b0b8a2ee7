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
        f"case for the graph), k = 16 neighbours per prompt, {queries:,} lookups (a batch is one search call, "
        "usearch threads at its default),
        "shared 2-core machine.",
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
