"""Converters from the prompt/answer data sets in ../shared/datasets to prompt files.

Token counts (prompt and answer) come from the project tokenizer (cluster.workload.tokens).
Splits are made BY PROMPT: every row of one prompt text lands in the same split.

Licences differ (see ../shared/datasets/README.md): alpaca_eval and code_alpaca are
non-commercial (CC BY-NC 4.0); arena_hard answers fall under their providers' terms; gpteacher is
MIT. Converted files therefore go outside any git repository or into a git-ignored path
(`runs/` in this repo); `check_output_path` refuses anything else.
"""

from __future__ import annotations

import csv
import json
import lzma
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cluster.workload.prompts import PromptRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
EXCLUDED_ALPACA_MODELS = ("NullModel", "gpt4_gamed")  # a constant output and an adversarial one
GPTEACHER_FILES = {
    "codegen": "codegen-instruct.json.xz",
    "roleplay": "roleplay-simple-deduped-roleplay-instruct.json.xz",
    "toolformer": "toolformer-dedupe-only-dataset.json.xz",
}


class DatasetError(ValueError):
    """A data set that is missing, or asked for in a way it cannot serve."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str
    licence: str
    needs_model: bool


DATASETS = {
    d.name: d
    for d in (
        DatasetInfo("gpteacher", "gpteacher_gpt4", "MIT (GPT-4 outputs: OpenAI terms)", False),
        DatasetInfo(
            "arena_hard",
            "arena_hard_model_answers",
            "Apache-2.0 repo; answers under each model provider's terms",
            True,
        ),
        DatasetInfo(
            "alpaca_eval", "alpaca_eval_model_outputs", "CC BY-NC 4.0 (non-commercial)", True
        ),
        DatasetInfo("code_alpaca", "code_alpaca_2k", "CC BY-NC 4.0 (non-commercial)", False),
    )
}


@dataclass(frozen=True, slots=True)
class _Row:
    prompt: str
    answer: str
    id: str
    source: str


def default_shared_dir() -> Path:
    """../shared/datasets relative to the repository root."""
    return REPO_ROOT.parent / "shared" / "datasets"


def _folder(shared_dir: Path, dataset: str) -> Path:
    if dataset not in DATASETS:
        raise DatasetError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if not shared_dir.is_dir():
        raise DatasetError(
            f"shared data directory {shared_dir} not found; pass --shared-dir pointing at the "
            "folder that holds gpteacher_gpt4/, arena_hard_model_answers/, ..."
        )
    folder = shared_dir / DATASETS[dataset].folder
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found (data set {dataset!r})")
    return folder


def _join(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp and inp.strip() else instruction


def _read_json_xz(path: Path) -> list[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _gpteacher(folder: Path) -> Iterator[_Row]:
    for tag, name in GPTEACHER_FILES.items():
        for i, r in enumerate(_read_json_xz(folder / name)):
            yield _Row(
                _join(r["instruction"], r["input"]), r["response"], f"{tag}-{i}", f"gpteacher/{tag}"
            )


def _code_alpaca(folder: Path) -> Iterator[_Row]:
    for i, r in enumerate(_read_json_xz(folder / "code_alpaca_2k.json.xz")):
        yield _Row(
            _join(r["instruction"], r["input"]), r["output"], f"code_alpaca-{i}", "code_alpaca"
        )


def _arena_hard(folder: Path, model: str) -> Iterator[_Row]:
    questions = {}
    with (folder / "questions.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            questions[(q["benchmark"], q["question_id"])] = q["prompt"]
    found = 0
    with lzma.open(folder / "answers.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            a = json.loads(line)
            if a["model"] != model:
                continue
            key = (a["benchmark"], a["question_id"])
            found += 1
            yield _Row(questions[key], a["answer"], f"{key[0]}/{key[1]}", f"arena_hard/{key[0]}")
    if not found:
        raise DatasetError(
            f"arena_hard has no answers of model {model!r}; models: "
            + ", ".join(list_models("arena_hard", folder.parent))
        )


def _alpaca_eval(folder: Path, model: str) -> Iterator[_Row]:
    if model in EXCLUDED_ALPACA_MODELS:
        raise DatasetError(f"alpaca_eval model {model!r} is excluded (constant or adversarial)")
    models = list_models("alpaca_eval", folder.parent)
    if model not in models:
        raise DatasetError(f"alpaca_eval has no model {model!r}; models: {', '.join(models)}")
    prompts = {}
    with (folder / "prompts.jsonl").open(encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            prompts[p["prompt_id"]] = (p["instruction"], p["dataset"])
    needle = f'"model": {json.dumps(model)},'  # cheap pre-filter of the 182k-row file
    with lzma.open(folder / "outputs.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            if needle not in line:
                continue
            o = json.loads(line)
            if o["model"] != model:
                continue
            instruction, subset = prompts[o["prompt_id"]]
            yield _Row(
                instruction, o["output"], f"alpaca_eval-{o['prompt_id']}", f"alpaca_eval/{subset}"
            )


def answer_lengths_by_model(dataset: str, shared_dir: Path) -> dict[str, dict[str, int]]:
    """Every model's answer length in tokens (at least 1) per prompt, for the data sets with
    several models' answers (arena_hard, alpaca_eval), in one pass over the answers file."""
    folder = _folder(shared_dir, dataset)
    if dataset == "arena_hard":
        questions = {}
        with (folder / "questions.jsonl").open(encoding="utf-8") as f:
            for line in f:
                q = json.loads(line)
                questions[q["benchmark"], q["question_id"]] = q["prompt"]
        path, text = folder / "answers.jsonl.xz", "answer"
        prompt_of = lambda a: questions[a["benchmark"], a["question_id"]]  # noqa: E731
    elif dataset == "alpaca_eval":
        with (folder / "prompts.jsonl").open(encoding="utf-8") as f:
            instructions = {p["prompt_id"]: p["instruction"] for p in map(json.loads, f)}
        path, text = folder / "outputs.jsonl.xz", "output"
        prompt_of = lambda a: instructions[a["prompt_id"]]  # noqa: E731
    else:
        raise DatasetError(f"{dataset} holds one model's answers")
    with lzma.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["model"] not in EXCLUDED_ALPACA_MODELS]
    out: dict[str, dict[str, int]] = {}
    for r, n in zip(rows, _count([r[text] for r in rows], "answers", False), strict=True):
        out.setdefault(r["model"], {})[prompt_of(r)] = max(1, n)
    return out


def list_models(dataset: str, shared_dir: Path) -> list[str]:
    """The models whose answers a data set holds (arena_hard, alpaca_eval)."""
    folder = _folder(shared_dir, dataset)
    if dataset == "alpaca_eval":
        with (folder / "models.csv").open(encoding="utf-8") as f:
            return sorted(
                (r["model"] for r in csv.DictReader(f) if r["model"] not in EXCLUDED_ALPACA_MODELS),
                key=str.lower,
            )
    if dataset == "arena_hard":
        with lzma.open(folder / "answers.jsonl.xz", "rt", encoding="utf-8") as f:
            return sorted({json.loads(line)["model"] for line in f}, key=str.lower)
    return []


def _count(texts: list[str], what: str, progress: bool) -> list[int]:
    from cluster.workload.tokens import count_tokens

    counts: list[int] = []
    step = 2048
    with tqdm(total=len(texts), desc=f"tokens ({what})", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), step):
            counts.extend(count_tokens(texts[start : start + step]))
            bar.update(min(step, len(texts) - start))
    return counts


def convert(
    dataset: str,
    shared_dir: Path,
    model: str | None = None,
    keep_output: bool = False,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[PromptRecord]:
    """Records of one data set (one per answer), with token counts. `limit` keeps the rows of
    `limit` prompts drawn at random (seeded), in file order."""
    folder = _folder(shared_dir, dataset)
    info = DATASETS[dataset]
    if info.needs_model and not model:
        raise DatasetError(
            f"{dataset} needs --model; models: {', '.join(list_models(dataset, shared_dir))}"
        )
    if not info.needs_model and model:
        raise DatasetError(f"{dataset} holds one set of answers; drop --model")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be >= 1, got {limit}")
    source = {
        "gpteacher": lambda: _gpteacher(folder),
        "code_alpaca": lambda: _code_alpaca(folder),
        "arena_hard": lambda: _arena_hard(folder, model),
        "alpaca_eval": lambda: _alpaca_eval(folder, model),
    }[dataset]
    rows = list(tqdm(source(), desc=f"read {dataset}", unit="row", disable=not progress))
    if limit is not None:
        keep = set(_shuffled_prompts(rows, seed)[:limit])
        rows = [r for r in rows if r.prompt in keep]
    prompt_tokens = _count([r.prompt for r in rows], "prompts", progress)
    output_tokens = _count([r.answer for r in rows], "answers", progress)
    return [
        PromptRecord(
            prompt=r.prompt,
            # An empty answer still costs its end-of-sequence token.
            output_tokens=max(1, n_out),
            prompt_tokens=n_in,
            id=r.id,
            source=r.source,
            output=r.answer if keep_output else None,
        )
        for r, n_in, n_out in zip(rows, prompt_tokens, output_tokens, strict=True)
    ]


def _shuffled_prompts(rows: list, seed: int) -> list[str]:
    distinct = list(dict.fromkeys(r.prompt for r in rows))  # file order, duplicates dropped
    order = np.random.default_rng(seed).permutation(len(distinct))
    return [distinct[i] for i in order]


def parse_split(text: str) -> dict[str, float]:
    """`train:0.8,val:0.1,test:0.1` -> {"train": 0.8, ...}; fractions must sum to 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, frac = part.strip().partition(":")
        if not sep or not name:
            raise DatasetError(f"split {text!r}: expected NAME:FRACTION[,NAME:FRACTION...]")
        if name in out:
            raise DatasetError(f"split {text!r}: {name!r} given twice")
        try:
            value = float(frac)
        except ValueError:
            raise DatasetError(f"split {text!r}: fraction {frac!r} is not a number") from None
        if not 0 < value <= 1:
            raise DatasetError(f"split {text!r}: fraction of {name!r} must be in (0, 1]")
        out[name] = value
    if abs(sum(out.values()) - 1) > 1e-6:
        raise DatasetError(f"split {text!r}: fractions sum to {sum(out.values()):g}, not 1")
    return out


def split_by_prompt(
    records: list[PromptRecord], fractions: dict[str, float], seed: int
) -> dict[str, list[PromptRecord]]:
    """Split records so that all rows of one prompt text land in one split. Each split gets
    its fraction of the distinct prompts (rounded); rows keep their file order."""
    prompts = _shuffled_prompts(records, seed)
    bounds = np.rint(np.cumsum(list(fractions.values())) * len(prompts)).astype(int)
    which: dict[str, str] = {}
    start = 0
    for name, end in zip(fractions, bounds, strict=True):
        for p in prompts[start:end]:
            which[p] = name
        start = end
    out: dict[str, list[PromptRecord]] = {name: [] for name in fractions}
    for rec in records:
        out[which[rec.prompt]].append(rec)
    return out


def check_output_path(path: Path) -> None:
    """Refuse to write converted data where git would pick it up: it must lie outside any git
    repository, or be ignored by it (e.g. under runs/ in this repo)."""
    path = path.resolve()
    root = next((p for p in path.parents if (p / ".git").exists()), None)
    if root is None:
        return
    res = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "-q", "--no-index", str(path)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        raise DatasetError(
            f"{path} lies inside the git repository {root} and is not git-ignored; converted "
            "data (partly non-commercial) must never be committed: write it outside the "
            "repository or under an ignored folder such as runs/"
        )
