"""The prompt files the benchmarks read, made from ../shared/datasets on first use.

Each file lives in runs/data (git-ignored: several sources are non-commercial) under the name
`rankserve data convert --out runs/data ...` would give it. Splits are by prompt, 80/10/10,
seed 0, as in docs/workloads.md, so every benchmark sees the same held-out prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cluster.workload.datasets import (
    answer_lengths_by_model,
    convert,
    default_shared_dir,
    split_by_prompt,
)
from cluster.workload.prompts import PromptRecord, write_prompt_file

DATA = Path(__file__).resolve().parent.parent / "runs" / "data"
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
SEED = 0


@dataclass(frozen=True)
class Source:
    dataset: str
    model: str | None = None

    @property
    def stem(self) -> str:
        return self.dataset + (f"_{self.model}" if self.model else "")


GPTEACHER = Source("gpteacher")
ARENA_GPT4 = Source("arena_hard", "gpt-4-0314")
# The same prompts as ARENA_GPT4 (arena-hard v0.1 and arena-bench-v1), labelled by the mean
# over every model that answered them (20 models; each model's own mean removed first), so
# the label is the prompt's length demand, not one model's verbosity. Same splits as ARENA_GPT4.
MEAN_OF_MODELS = "mean-of-models"
ARENA_MEAN = Source("arena_hard", MEAN_OF_MODELS)
ARENA_GPT35 = Source("arena_hard", "gpt-3.5-turbo-0125")
ARENA_O3_MINI = Source("arena_hard", "o3-mini-2025-01-31")
ALPACA_GPT4 = Source("alpaca_eval", "gpt4")  # gpt-4-0314, the model of ARENA_GPT4
ALPACA_MEAN = Source("alpaca_eval", MEAN_OF_MODELS)  # CC BY-NC: the opt-in model only
ALPACA_GPT4_TURBO = Source("alpaca_eval", "gpt4_1106_preview")
ALPACA_LLAMA3_8B = Source("alpaca_eval", "Meta-Llama-3-8B-Instruct")
ALPACA_LLAMA3_70B = Source("alpaca_eval", "Meta-Llama-3-70B-Instruct")
CODE_ALPACA = Source("code_alpaca")

# The shipped models' training data: redistributable answers only (GPTeacher: MIT; arena-hard:
# Apache-2.0 repo, GPT-4 answers under OpenAI's terms, as GPTeacher's are). AlpacaEval and Code
# Alpaca are CC BY-NC and stay out of anything the repository ships.
SHIPPED_TRAINING = (GPTEACHER, ARENA_MEAN)


def prompt_file(source: Source, split: str | None = None) -> Path:
    """Path of the source's prompt file (one split of it, or all of it), made if missing."""
    path = DATA / (f"{source.stem}_{split}.jsonl" if split else f"{source.stem}.jsonl")
    if path.is_file():
        return path
    shared = default_shared_dir()
    if not shared.is_dir():
        raise SystemExit(f"{path} is missing and so is {shared}, which it is made from")
    if source.model == MEAN_OF_MODELS:
        records = _mean_of_models(source, shared)
    else:
        records = convert(
            source.dataset, shared, model=source.model, keep_output=True, progress=False
        )
    DATA.mkdir(parents=True, exist_ok=True)
    if split is None:
        write_prompt_file(path, records)
    else:
        for name, part in split_by_prompt(records, SPLITS, SEED).items():
            write_prompt_file(DATA / f"{source.stem}_{name}.jsonl", part)
    print(f"made {path} from {shared / source.dataset}")
    return path


def split_files(sources: tuple[Source, ...], *splits: str) -> list[Path]:
    return [prompt_file(s, split) for s in sources for split in splits]


def _mean_of_models(source: Source, shared: Path) -> list[PromptRecord]:
    """The gpt-4-0314 records of `source.dataset` (its prompts, in its order, so its splits carry
    over) with the label exp(grand mean + mean over models of (log tokens - that model's mean
    log tokens)); models of other prompts (arena-hard v2.0) are left out."""
    base = ARENA_GPT4 if source.dataset == "arena_hard" else ALPACA_GPT4
    records = convert(base.dataset, shared, model=base.model, progress=False)
    wanted = {r.prompt for r in records}
    centred: dict[str, list[float]] = {p: [] for p in wanted}
    model_means = []
    for lengths in answer_lengths_by_model(source.dataset, shared).values():
        logs = {p: np.log(n) for p, n in lengths.items() if p in wanted}
        if len(logs) < 100:
            continue
        mean = float(np.mean(list(logs.values())))
        model_means.append(mean)
        for prompt, value in logs.items():
            centred[prompt].append(value - mean)
    grand = float(np.mean(model_means))
    return [
        replace(
            r,
            output_tokens=max(1, round(float(np.exp(grand + np.mean(centred[r.prompt]))))),
            source=f"{r.source} (mean of {len(centred[r.prompt])} models)",
        )
        for r in records
    ]
