"""The versions of one served model's predictor, on disk: every model that ever served, which
one serves now, and the log of every swap and rollback, so that a restarted predictor actor
serves what was serving before, and any swap can be undone.

    ROOT/
      v0001/ ...            model directories (predictor_actor.model), v0000 is the start model
      current               the version serving now
      swaps.jsonl           one event per line: swap | refused | failed | rollback
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model module imports torch; the store is imported without it
    from predictor_actor.model import RankingModel

CURRENT = "current"
EVENTS = "swaps.jsonl"
BASE = "v0000"  # the model the deployment started from (not copied: its directory is named)


class ModelStore:
    def __init__(self, root: str | Path, base_dir: str | Path | None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_dir = base_dir  # None: the shipped default model
        self.counts: Counter[str] = Counter()  # events recorded by this process, by kind

    def _dir(self, version: str) -> Path | None:
        return self.base_dir if version == BASE else self.root / version

    @property
    def current(self) -> str:
        try:
            version = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return BASE
        return version if version == BASE or (self.root / version).is_dir() else BASE

    def _set_current(self, version: str) -> None:
        tmp = self.root / f".{CURRENT}-{os.getpid()}"
        tmp.write_text(version + "\n")
        tmp.replace(self.root / CURRENT)

    def load(self, version: str | None = None) -> RankingModel:
        from predictor_actor.model import RankingModel

        return RankingModel.load(self._dir(version or self.current))

    def versions(self) -> list[str]:
        return [BASE] + sorted(p.name for p in self.root.glob("v[0-9]*") if p.is_dir())

    def add(self, model: RankingModel) -> str:
        """Write a candidate as the next version (not yet serving)."""
        number = max(int(v[1:]) for v in self.versions()) + 1
        version = f"v{number:04d}"
        model.save(self.root / version)
        return version

    def record(self, event: dict) -> dict:
        event = {"time": round(time.time(), 3), **event}
        self.counts[event["event"]] += 1
        with open(self.root / EVENTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
        return event

    def swap(self, version: str, event: dict) -> dict:
        previous = self.current
        self._set_current(version)
        return self.record({"event": "swap", "from": previous, "to": version, **event})

    def events(self, last: int | None = None) -> list[dict]:
        try:
            lines = (self.root / EVENTS).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a crash
        return out[-last:] if last else out

    def rollback(self) -> dict:
        """Serve again the version the current one was swapped in for (the `from` of the last
        swap to it), so repeated rollbacks walk back through the swaps. Raises ModelLoadError
        when there is none."""
        from predictor_actor.model import ModelLoadError

        current = self.current
        for e in reversed(self.events()):
            if e.get("event") == "swap" and e.get("to") == current:
                target = e["from"]
                break
        else:
            raise ModelLoadError(f"nothing to roll back to: {current} is the first version")
        self.load(target)  # fails here, before the pointer moves, if it cannot serve
        self._set_current(target)
        return self.record({"event": "rollback", "from": current, "to": target})
