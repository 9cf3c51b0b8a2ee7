"""Multi-SLO workloads: prompt sets, each labelled with the SLO class its requests belong to,
mixed in given shares into one prompt file (its `slo` column names the class). Arrivals are
then whatever the workload asks (Poisson, Gamma, a replayed trace): `build_workload` draws the
mixed prompts in a seeded random order, so the classes interleave."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cluster.workload.prompts import PromptRecord


@dataclass(frozen=True, slots=True)
class MixPart:
    records: list[PromptRecord]
    slo: str  # the class of these prompts' requests
    share: float  # fraction of the mix's prompts


def mix_prompts(parts: list[MixPart], size: int, seed: int) -> list[PromptRecord]:
    """`size` prompts, `share` of them from each part (drawn without replacement while a part
    has enough, then again), each labelled with its part's class, in a seeded random order."""
    if not parts or size < 1:
        raise ValueError("a mix needs parts and a size >= 1")
    shares = np.array([p.share for p in parts], dtype=float)
    if (shares <= 0).any():
        raise ValueError("mix shares must be > 0")
    counts = np.floor(shares / shares.sum() * size).astype(int)
    counts[np.argmax(shares)] += size - counts.sum()  # rounding goes to the largest part
    rng = np.random.default_rng(seed)
    out: list[PromptRecord] = []
    for part, count in zip(parts, counts, strict=True):
        if not part.records:
            raise ValueError(f"mix part {part.slo!r} has no prompts")
        picks = np.concatenate(
            [rng.permutation(len(part.records)) for _ in range(-(-int(count) // len(part.records)))]
        )[:count]
        out += [dataclasses.replace(part.records[i], slo=part.slo) for i in picks]
    return [out[i] for i in rng.permutation(len(out))]
