"""Following the request log (predictor_actor.request_log) while the service writes it: each
`read()` returns the requests finished since the last one, as length labels.

A request stopped by its `max_tokens` (finish_reason "length", or as many tokens as its cap) is
not a label: its natural length is unknown (cluster.rank_quality leaves it out the same way).
A line that is not a usable entry (torn write, foreign JSON, bad types) is skipped and counted,
never raised. A rotated log (the file replaced by a new one) is followed into the new file from
its start.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedExample:
    prompt: str
    output_tokens: int
    model: str
    finish_time: float


@dataclass(slots=True)
class TailCounts:
    labels: int = 0  # entries returned as labels
    cut: int = 0  # entries stopped by max_tokens, left out
    bad_lines: int = 0  # lines skipped as unusable


def parse_entry(line: str) -> ServedExample | None | bool:
    """The label in one log line; False when the request was cut by its cap; None when the
    line is unusable."""
    try:
        d = json.loads(line)
        prompt, tokens = d["prompt"], d["output_tokens"]
        if not isinstance(prompt, str) or isinstance(tokens, bool) or not isinstance(tokens, int):
            return None
        if tokens < 1:
            return None
        cap = d.get("max_tokens")
        if d.get("finish_reason", "stop") == "length" or (isinstance(cap, int) and tokens >= cap):
            return False
        return ServedExample(
            prompt, tokens, str(d.get("model") or ""), float(d.get("finish_time") or 0.0)
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LogTail:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.counts = TailCounts()
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    @property
    def position(self) -> tuple[int, int]:
        """(inode, offset) of the first byte not yet read, to resume from after a restart."""
        return self._inode or 0, self._offset - len(self._partial)

    def restore(self, inode: int, offset: int) -> None:
        self._inode, self._offset, self._partial = inode, offset, b""

    def read(self) -> list[ServedExample]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if st.st_ino != self._inode or st.st_size < self._offset:  # new or rotated file
            self._inode, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size == self._offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(min(st.st_size - self._offset, 64 * 2**20))
        except OSError as e:
            log.warning("request log %s unreadable: %s", self.path, e)
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        out = []
        for raw in lines:
            if not raw.strip():
                continue
            got = parse_entry(raw.decode("utf-8", errors="replace"))
            if got is None:
                self.counts.bad_lines += 1
            elif got is False:
                self.counts.cut += 1
            else:
                out.append(got)
        self.counts.labels += len(out)
        return out
