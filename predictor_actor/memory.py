"""Retrieval memory of served traffic (ALISE's predictor): the encoder embeddings of requests
the deployment has served, with their real answer lengths, searched by approximate nearest
neighbours (usearch's HNSW index, cosine distance).

A prompt with close neighbours gets their (distance-weighted) mean log length, blended with the
ranker's own estimate by how many close neighbours it has:

    w = close / (close + prior)        blended = (1 - w) * ranker + w * neighbours

so a prompt like none seen before is ranked by the model alone, and a prompt asked many times
by what its answers really were. Bounded: at most `capacity` entries; past it the oldest
`evict_fraction` are removed (traffic drifts; the newest answers say most about the next).
Persisted: `save(dir)` writes the index and its labels, `RetrievalMemory.load(dir)` reads them
back (a missing or unreadable directory gives an empty memory and says why).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
INDEX_FILE = "memory.usearch"
LABELS_FILE = "memory-labels.npz"
META_FILE = "memory.json"


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    capacity: int = 50_000  # entries kept; ~40 MB of f16 vectors and graph at 384 dims
    evict_fraction: float = 0.1  # share of the oldest entries dropped when full
    neighbours: int = 16  # k searched per prompt
    radius: float = 0.12  # cosine distance under which a neighbour counts as close
    prior: float = 4.0  # close neighbours needed for the memory to weigh as much as the model
    expansion_search: int = 64  # HNSW search breadth (recall against speed)

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.neighbours < 1:
            raise ValueError("capacity and neighbours must be >= 1")
        if not 0 < self.evict_fraction <= 1:
            raise ValueError("evict_fraction must be in (0, 1]")
        if not 0 < self.radius <= 2 or self.prior <= 0:
            raise ValueError("radius must be in (0, 2] and prior > 0")


@dataclass(frozen=True, slots=True)
class Recall:
    """What the memory knows of each of a batch of prompts."""

    close: np.ndarray  # int, close neighbours found
    log_length: np.ndarray  # float, their weighted mean log1p(tokens); nan where none
    weight: np.ndarray  # float in [0, 1), the memory's share in the blend


class RetrievalMemory:
    """Thread-safe: scoring searches while the log reader adds."""

    def __init__(self, dim: int, config: MemoryConfig = MemoryConfig()) -> None:
        from usearch.index import Index

        self.dim = dim
        self.config = config
        self._index = Index(
            ndim=dim,
            metric="cos",
            dtype="f16",
            connectivity=16,
            expansion_search=config.expansion_search,
        )
        self._lock = threading.Lock()
        # Labels by key; keys are insertion numbers, so the smallest key is the oldest entry.
        self._log_length: dict[int, float] = {}
        self._next_key = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._log_length)

    def add(self, vectors: np.ndarray, tokens: np.ndarray) -> None:
        """Remember served prompts (embedding rows) with their real answer lengths."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        tokens = np.asarray(tokens, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(tokens):
            raise ValueError(f"expected [n, {self.dim}] vectors and n lengths")
        if not len(tokens):
            return
        with self._lock:
            keys = np.arange(self._next_key, self._next_key + len(tokens), dtype=np.uint64)
            self._next_key += len(tokens)
            self._index.add(keys, vectors)
            self._log_length.update(zip(keys.tolist(), np.log1p(tokens).tolist(), strict=True))
            over = len(self._log_length) - self.config.capacity
            if over > 0:
                self._evict(max(over, int(self.config.capacity * self.config.evict_fraction)))

    def _evict(self, count: int) -> None:
        """Drop the `count` oldest entries (the lock is held)."""
        oldest = sorted(self._log_length)[:count]
        self._index.remove(np.asarray(oldest, dtype=np.uint64))
        for k in oldest:
            del self._log_length[k]
        self.evicted += len(oldest)

    def recall(self, vectors: np.ndarray) -> Recall:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        close = np.zeros(n, dtype=np.int64)
        mean = np.full(n, np.nan)
        with self._lock:
            if n and self._log_length:
                k = min(self.config.neighbours, len(self._log_length))
                found = self._index.search(vectors, k)
                keys = np.asarray(found.keys).reshape(n, -1)
                dist = np.asarray(found.distances, dtype=np.float64).reshape(n, -1)
                labels = self._log_length
                for i in range(n):
                    sel = [
                        (labels[int(key)], d)
                        for key, d in zip(keys[i], dist[i], strict=True)
                        if d <= self.config.radius and int(key) in labels
                    ]
                    if sel:
                        lengths, d = np.array(sel).T
                        w = 1.0 - d / self.config.radius + 1e-6  # the closer, the heavier
                        close[i] = len(sel)
                        mean[i] = float(np.average(lengths, weights=w))
        weight = close / (close + self.config.prior)
        return Recall(close, mean, weight)

    def blend(self, log_length: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, Recall]:
        """The ranker's log-length estimates moved toward the memory's where it has close
        neighbours."""
        got = self.recall(vectors)
        out = np.asarray(log_length, dtype=np.float64).copy()
        has = got.close > 0
        out[has] = (1 - got.weight[has]) * out[has] + got.weight[has] * got.log_length[has]
        return out, got

    # --- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the memory to `directory`, each file to a temporary name and then renamed, so
        a crash mid-save leaves the previous copy readable."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            keys = np.fromiter(self._log_length, dtype=np.uint64, count=len(self._log_length))
            values = np.fromiter(self._log_length.values(), dtype=np.float64, count=len(keys))
            tmp = directory / f".tmp-{os.getpid()}-{INDEX_FILE}"
            self._index.save(str(tmp))
            tmp.replace(directory / INDEX_FILE)
            meta = {"dim": self.dim, "next_key": self._next_key, "evicted": self.evicted}
        tmp = directory / f".tmp-{os.getpid()}-{LABELS_FILE}"
        with open(tmp, "wb") as f:
            np.savez(f, keys=keys, log_length=values)
        tmp.replace(directory / LABELS_FILE)
        meta["config"] = asdict(self.config)
        (directory / META_FILE).write_text(json.dumps(meta) + "\n")

    @classmethod
    def load(
        cls, directory: str | Path, dim: int, config: MemoryConfig = MemoryConfig()
    ) -> RetrievalMemory:
        """The memory saved in `directory`; an empty one if there is none or it is unreadable
        (logged): a lost memory only costs the ranking what it had learned."""
        memory = cls(dim, config)
        directory = Path(directory)
        if not (directory / META_FILE).is_file():
            return memory
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta["dim"] != dim:
                raise ValueError(f"saved with {meta['dim']} dimensions, not {dim}")
            with np.load(directory / LABELS_FILE) as z:
                keys, values = z["keys"], z["log_length"]
            memory._index.load(str(directory / INDEX_FILE))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            log.warning("retrieval memory in %s unreadable (%s); starting empty", directory, e)
            return cls(dim, config)
        memory._log_length = dict(zip(keys.tolist(), values.tolist(), strict=True))
        memory._next_key = int(meta["next_key"])
        memory.evicted = int(meta.get("evicted", 0))
        if len(memory) > config.capacity:  # the cap may have been lowered since
            with memory._lock:
                memory._evict(len(memory) - config.capacity)
        return memory
