"""rankserve's request log: the served model's real answer lengths, for retraining the
predictor on a deployment's own traffic (`rankserve predictor train --data LOG...`).

One JSON object per line; a request log is a prompt file (cluster.workload.prompts) with extra
fields, so every reader of prompt files reads it. Fields (docs/predictor.md):

    prompt            str    the prompt; a chat is flattened with text.conversation_prompt
    output_tokens     int    answer length in the served model's tokens (>= 1)
    model             str    served model name
    arrival_time      float  Unix time (s) the request arrived
    finish_time       float  Unix time (s) its last token was produced
    first_token_time  float  Unix time (s) of its first token (optional)
    prompt_tokens     int    prompt length in the served model's tokens (optional)
    id                str    request id (optional)
    finish_reason     str    "stop" (end of sequence) or "length" (hit max_tokens)
    max_tokens        int    the request's cap (optional)
    score             float  the predictor's rank score at arrival (optional)
    predicted_tokens  float  the predictor's length prediction at arrival (optional)
    source            str    "rankserve-request-log"

Only finished requests are logged (failed or cancelled ones say nothing about lengths). The
log is bounded: when the file would pass `max_bytes` it is rotated to `PATH.1` (older backups
shift up to `backups`), or, with `backups=0`, writing stops; so the log never takes more than
(backups + 1) x max_bytes. Writing never raises into the serving path: an I/O error is logged
and the entry dropped.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from predictor_actor.text import clean_prompt

log = logging.getLogger(__name__)
SOURCE = "rankserve-request-log"
FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    prompt: str
    output_tokens: int
    model: str
    arrival_time: float
    finish_time: float
    first_token_time: float | None = None
    prompt_tokens: int | None = None
    id: str | None = None
    finish_reason: str = "stop"
    max_tokens: int | None = None
    score: float | None = None
    predicted_tokens: float | None = None
    dispatches: int | None = None
    scheduler_preemptions: int | None = None  # dispatches the scheduler ended early
    # Per dispatch: [context tokens, of which found in the engine's prefix cache]
    prefills: list[list[int]] | None = None

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["prompt"] = clean_prompt(self.prompt)
        d["source"] = SOURCE
        return {k: v for k, v in d.items() if v is not None}


class RequestLogWriter:
    """Appends entries to a JSONL request log, bounded in size; thread-safe."""

    def __init__(self, path: str | Path, max_bytes: int = 100 * 2**20, backups: int = 1) -> None:
        if max_bytes < 1024:
            raise ValueError("max_bytes must be >= 1024")
        if backups < 0:
            raise ValueError("backups must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._file = None
        self._size = 0
        self.written = 0
        self.dropped = 0  # entries not written: log full, unusable entry, or I/O error
        self.full = False

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write(self, entry: RequestLogEntry) -> bool:
        """Append one finished request; False if it was not written (see class doc)."""
        if entry.finish_reason not in FINISH_REASONS or entry.output_tokens < 1:
            self.dropped += 1
            return False
        line = json.dumps(entry.to_json(), ensure_ascii=False) + "\n"
        size = len(line.encode("utf-8"))
        with self._lock:
            try:
                if self._file is None and not self.full:
                    self._open()
                if size > self.max_bytes or self.full:
                    self.dropped += 1
                    return False
                if self._size + size > self.max_bytes:
                    if self.backups == 0:
                        self.full = True
                        log.warning(
                            "request log %s reached %d bytes; logging stopped",
                            self.path,
                            self.max_bytes,
                        )
                        self.dropped += 1
                        return False
                    self._rotate()
                self._file.write(line)
                self._file.flush()
                self._size += size
                self.written += 1
                return True
            except OSError as e:
                self.dropped += 1
                log.warning("request log %s: entry dropped: %s", self.path, e)
                return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> RequestLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
