"""SLO attainment counted as requests finish: what the live scheduler reports in its status
(the simulator and the benchmarks compute the same figures from timings, `cluster.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.config import SLOConfig
from cluster.metrics import meets_slo, timing_of
from cluster.request import Request


@dataclass(frozen=True, slots=True)
class AttainmentSnapshot:
    requests: int
    met: int
    attainment: float | None  # None before any request finished
    goodput_rps: float  # met per second, first arrival to last finish
    classes: dict[str, tuple[int, int]]  # class -> (requests, met)


class SLOAttainment:
    def __init__(self, slos: SLOConfig) -> None:
        self.slos = slos
        self._counts = {name: [0, 0] for name in slos.names}
        self._first_arrival: float | None = None
        self._last_finish: float | None = None

    def record(self, request: Request) -> None:
        timing = timing_of(request)
        counts = self._counts[self.slos.get(request.slo).name]
        counts[0] += 1
        counts[1] += meets_slo(timing, self.slos)
        if self._first_arrival is None or timing.arrival < self._first_arrival:
            self._first_arrival = timing.arrival
        if self._last_finish is None or timing.finish > self._last_finish:
            self._last_finish = timing.finish

    def snapshot(self) -> AttainmentSnapshot:
        requests = sum(c[0] for c in self._counts.values())
        met = sum(c[1] for c in self._counts.values())
        span = (
            self._last_finish - self._first_arrival
            if self._first_arrival is not None and self._last_finish is not None
            else 0.0
        )
        return AttainmentSnapshot(
            requests=requests,
            met=met,
            attainment=met / requests if requests else None,
            goodput_rps=met / span if span > 0 else 0.0,
            classes={name: (c[0], c[1]) for name, c in self._counts.items() if c[0]},
        )
