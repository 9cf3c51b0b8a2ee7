"""Real arrival traces: the Azure LLM inference 2023 CSVs and the Mooncake JSONL traces.

Azure (Splitwise, CC-BY-4.0): header `TIMESTAMP,ContextTokens,GeneratedTokens`, wall-clock
timestamps with 100 ns resolution. Mooncake (Apache-2.0): one JSON object per line with
`timestamp` (ms, relative), `input_length`, `output_length`, `hash_ids` (the prompt's 512-token
blocks, chained: equal ids at i mean the same first i + 1 blocks; kept for prefix caching,
cluster.prefix_blocks.TraceBlocks). The format is detected
from the content; plain, .gz and .xz files are accepted. Times are returned in seconds relative
to the first request, rows sorted by time (stable, so equal timestamps keep file order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.workload.compressed import open_text_read

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceFormatError(ValueError):
    """A trace file that is neither an Azure 2023 CSV nor a Mooncake JSONL trace."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    time_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    path: Path
    format: str  # "azure" or "mooncake"
    time_s: np.ndarray  # float64, seconds since the first request, non-decreasing
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    hash_ids: tuple[tuple[int, ...], ...] | None = None  # Mooncake's, per row; None for Azure

    def __len__(self) -> int:
        return len(self.time_s)

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1]) if len(self) else 0.0

    @property
    def mean_rate(self) -> float:
        """Requests per second over the trace: (n - 1) gaps in its duration."""
        if len(self) < 2 or self.duration_s <= 0:
            raise ValueError(f"{self.path}: a rate needs at least two distinct timestamps")
        return (len(self) - 1) / self.duration_s

    def rows(self) -> list[TraceRow]:
        return [
            TraceRow(float(t), int(i), int(o))
            for t, i, o in zip(self.time_s, self.input_tokens, self.output_tokens, strict=True)
        ]


def _load_azure(f, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, None]:
    reader = csv.reader(f)
    header = next(reader)
    missing = [c for c in AZURE_COLUMNS if c not in header]
    if missing:
        raise TraceFormatError(f"{path}: Azure trace CSV lacks column(s) {', '.join(missing)}")
    cols = [header.index(c) for c in AZURE_COLUMNS]
    stamps, ins, outs = [], [], []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            stamps.append(row[cols[0]])
            ins.append(int(row[cols[1]]))
            outs.append(int(row[cols[2]]))
        except (IndexError, ValueError) as e:
            raise TraceFormatError(f"{path}:{lineno}: bad Azure trace row {row!r} ({e})") from None
    try:
        # numpy parses "2023-11-16 18:15:46.6805900" (7 fractional digits) at ns resolution.
        t = np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except ValueError as e:
        raise TraceFormatError(f"{path}: bad TIMESTAMP value ({e})") from None
    return (t - t.min()) / 1e9, np.array(ins, np.int64), np.array(outs, np.int64), None


def _load_mooncake(
    f, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    ts, ins, outs, hashes = [], [], [], []
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ts.append(float(obj["timestamp"]))
            ins.append(int(obj["input_length"]))
            outs.append(int(obj["output_length"]))
            hashes.append(tuple(int(h) for h in obj.get("hash_ids", ())))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise TraceFormatError(
                f"{path}:{lineno}: bad Mooncake trace line (needs timestamp, input_length, "
                f"output_length): {type(e).__name__}: {e}"
            ) from None
    t = np.array(ts, np.float64)
    return (t - t.min()) / 1e3, np.array(ins, np.int64), np.array(outs, np.int64), hashes


def load_trace(path: str | Path) -> Trace:
    """Load an Azure 2023 CSV or a Mooncake JSONL trace (format detected from the content)."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: no such trace file")
    with open_text_read(path) as f:
        first = f.readline()
        f.seek(0)
        if first.lstrip().startswith("{"):
            fmt, (t, i, o, h) = "mooncake", _load_mooncake(f, path)
        elif "TIMESTAMP" in first:
            fmt, (t, i, o, h) = "azure", _load_azure(f, path)
        else:
            raise TraceFormatError(
                f"{path}: unknown trace format; expected an Azure 2023 CSV (header "
                f"{','.join(AZURE_COLUMNS)}) or Mooncake JSONL (timestamp, input_length, "
                "output_length)"
            )
    if len(t) == 0:
        raise TraceFormatError(f"{path}: trace has no rows")
    order = np.argsort(t, kind="stable")
    hash_ids = None if h is None else tuple(h[k] for k in order)
    return Trace(path, fmt, t[order], i[order], o[order], hash_ids)
