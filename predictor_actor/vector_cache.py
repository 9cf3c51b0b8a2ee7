"""A directory of float vectors keyed by strings (prompt hashes), kept across runs.

Used for the frozen encoder's prompt embeddings (so training runs and experiments never encode
a prompt twice) and for the scores the simulator asks for. Each `put` writes one new shard file
(written to a temporary name, then renamed), so concurrent writers never corrupt each other and
a crash leaves at most one unreadable shard, which is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


class VectorCache:
    def __init__(self, directory: str | Path, dim: int) -> None:
        self.directory = Path(directory)
        self.dim = dim
        self._rows: dict[str, np.ndarray] = {}
        self._loaded: set[str] = set()

    def _load(self) -> None:
        if not self.directory.is_dir():
            return
        for shard in sorted(self.directory.glob("shard-*.npz")):
            if shard.name in self._loaded:
                continue
            try:
                with np.load(shard) as z:
                    keys, values = z["keys"], z["values"]
            except (OSError, ValueError, KeyError) as e:
                log.warning("skipping unreadable cache shard %s: %s", shard, e)
                self._loaded.add(shard.name)
                continue
            if values.ndim != 2 or values.shape[1] != self.dim:
                log.warning("skipping cache shard %s of width %s", shard, values.shape)
            else:
                self._rows.update(zip(keys.tolist(), values, strict=True))
            self._loaded.add(shard.name)

    def get(self, keys: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors for `keys` (rows of zeros where absent) and the indices of the absent ones."""
        self._load()
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        missing = []
        for i, k in enumerate(keys):
            row = self._rows.get(k)
            if row is None:
                missing.append(i)
            else:
                out[i] = row
        return out, missing

    def put(self, keys: list[str], values: np.ndarray) -> None:
        if not keys:
            return
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(keys), self.dim):
            raise ValueError(
                f"expected values of shape {(len(keys), self.dim)}, got {values.shape}"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.directory / f".tmp-{os.getpid()}-{name}"
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys), values=values)
        tmp.replace(self.directory / name)
        self._loaded.add(name)
        self._rows.update(zip(keys, values, strict=True))
