"""Labelled prompts for training and evaluation, read from prompt files and request logs.

Both are JSONL with `prompt` and `output_tokens` (or the answer text `output`, counted with the
project's one tokenizer, cluster.workload.tokens.count_tokens); see docs/predictor.md. Request
logs (predictor_actor.request_log) are prompt files with extra fields, so one reader serves both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.workload.prompts import read_prompt_file


@dataclass(frozen=True, slots=True)
class LabelledPrompts:
    prompts: list[str]
    output_tokens: np.ndarray  # int64, >= 1
    sources: list[str]  # file each prompt came from

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: np.ndarray | list[int]) -> LabelledPrompts:
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledPrompts(
            [self.prompts[i] for i in idx], self.output_tokens[idx], [self.sources[i] for i in idx]
        )


def load_labelled(paths: list[str | Path]) -> LabelledPrompts:
    prompts, tokens, sources = [], [], []
    for path in paths:
        recs = read_prompt_file(path)
        prompts += [r.prompt for r in recs]
        tokens += [r.output_tokens for r in recs]
        sources += [str(path)] * len(recs)
    if not prompts:
        raise ValueError(f"no labelled prompts in {', '.join(map(str, paths))}")
    return LabelledPrompts(prompts, np.asarray(tokens, dtype=np.int64), sources)


def split_by_prompt(
    data: LabelledPrompts, fraction: float, salt: str = "val"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): a prompt goes to the held-out side by a hash of its text, so
    every row of a repeated prompt lands on the same side, in every run."""
    held = np.array(
        [
            int.from_bytes(
                hashlib.sha256(f"{salt}\0{p}".encode("utf-8", "replace")).digest()[:8], "big"
            )
            / 2**64
            < fraction
            for p in data.prompts
        ],
        dtype=bool,
    )
    return np.flatnonzero(~held), np.flatnonzero(held)
