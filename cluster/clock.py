"""Clocks injected into the scheduling core: one core, two clocks (wall and virtual)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    """Monotonic seconds, for the live scheduler actor."""

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """Simulated seconds, advanced only by the simulator's event loop."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        if t < self._now:
            raise ValueError(f"virtual time cannot go back: {t} < {self._now}")
        self._now = t
