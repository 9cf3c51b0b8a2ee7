"""The prompt file: one JSON object per line (JSONL, optionally .gz or .xz).

Required: `prompt` (str) and `output_tokens` (int >= 1, the true answer length). A line may give
the answer text as `output` instead of `output_tokens`; it is then counted with the project
tokenizer (cluster.workload.tokens). Optional: `prompt_tokens` (int >= 0; counted with the same
tokenizer when absent), `score` (predictor rank score, higher = longer answer),
`predicted_tokens` (float), `slo` (str), `tenant` (str), `id` (str), `source` (str), `output`
(answer text). Other keys are ignored, so request logs with extra fields read as prompt files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from cluster.workload.compressed import open_text_read, open_text_write

# 300 GPTeacher prompts (MIT; see data/README.md), installed with the package for demos.
DEMO_PROMPT_FILE = Path(__file__).resolve().parent / "data" / "demo_prompts.jsonl"


class PromptFileError(ValueError):
    """A malformed prompt file; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class PromptRecord:
    prompt: str
    output_tokens: int
    prompt_tokens: int | None = None
    score: float | None = None
    predicted_tokens: float | None = None
    slo: str | None = None
    tenant: str | None = None
    id: str | None = None
    source: str | None = None
    output: str | None = None

    def to_json(self) -> dict:
        """The record as a JSON object, without the fields that are None."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


_STR_FIELDS = ("slo", "tenant", "id", "source", "output")
_FLOAT_FIELDS = ("score", "predicted_tokens")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: object) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _parse_line(obj: object, where: str) -> tuple[dict, bool, bool]:
    """Validated keyword arguments for PromptRecord, plus whether prompt_tokens and
    output_tokens still have to be counted."""

    def bad(field: str, why: str) -> PromptFileError:
        return PromptFileError(f"{where}: field {field!r}: {why}")

    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise bad("prompt", "missing (required)")
    if not isinstance(obj["prompt"], str):
        raise bad("prompt", f"must be a string, got {type(obj['prompt']).__name__}")
    kw: dict = {"prompt": obj["prompt"]}
    for name in _STR_FIELDS:
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise bad(name, f"must be a string, got {type(v).__name__}")
        kw[name] = v
    for name in _FLOAT_FIELDS:
        v = obj.get(name)
        if v is not None and not _is_float(v):
            raise bad(name, f"must be a finite number, got {v!r}")
        kw[name] = None if v is None else float(v)
    out = obj.get("output_tokens")
    count_output = out is None
    if count_output:
        if kw["output"] is None:
            raise bad(
                "output_tokens", "missing (required unless the answer text `output` is given)"
            )
    elif not _is_int(out) or out < 1:
        raise bad("output_tokens", f"must be an integer >= 1, got {out!r}")
    kw["output_tokens"] = out
    pt = obj.get("prompt_tokens")
    if pt is not None and (not _is_int(pt) or pt < 0):
        raise bad("prompt_tokens", f"must be an integer >= 0, got {pt!r}")
    kw["prompt_tokens"] = pt
    return kw, pt is None, count_output


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Read a prompt file (.jsonl, .jsonl.gz, .jsonl.xz). Missing `prompt_tokens` (and
    `output_tokens` given as `output` text) are counted with the project tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    rows: list[dict] = []
    need_prompt: list[int] = []
    need_output: list[int] = []
    with open_text_read(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{where}: not valid JSON ({e.msg})") from None
            kw, count_prompt, count_output = _parse_line(obj, where)
            if count_prompt:
                need_prompt.append(len(rows))
            if count_output:
                need_output.append(len(rows))
            rows.append(kw)
    if need_prompt or need_output:
        from cluster.workload.tokens import count_tokens

        for i, n in zip(
            need_prompt, count_tokens([rows[i]["prompt"] for i in need_prompt]), strict=True
        ):
            rows[i]["prompt_tokens"] = n
        for i, n in zip(
            need_output, count_tokens([rows[i]["output"] for i in need_output]), strict=True
        ):
            rows[i]["output_tokens"] = max(1, n)  # an empty answer still costs its end token
    return [PromptRecord(**kw) for kw in rows]


def write_prompt_file(path: str | Path, records: list[PromptRecord]) -> None:
    """Write records as a prompt file (compressed if the name ends in .gz or .xz). Written to a
    temporary file first and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}.{path.name}")  # same suffix: same compression
    try:
        with open_text_write(tmp) as f:
            for rec in records:
                f.write(json.dumps(rec.to_json(), ensure_ascii=False))
                f.write("\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
