"""Arrival processes, from a spec string.

    burst               all requests at t = 0 (the LTR paper's setting)
    poisson:RATE        exponential inter-arrivals, RATE requests/s
    gamma:RATE:CV       gamma inter-arrivals with mean 1/RATE and coefficient of variation CV
                        (CV > 1 is burstier than Poisson, CV = 1 is Poisson)
    trace:FILE          the timestamps of an Azure 2023 CSV or Mooncake JSONL trace
    trace:FILE@RATE     the same, time scaled so that the mean rate is RATE requests/s

The first request arrives at t = 0 in every process; times are non-decreasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.numbers import ceil_div
from cluster.workload.traces import Trace, load_trace

KINDS = ("burst", "poisson", "gamma", "trace")


class ArrivalSpecError(ValueError):
    """An arrival spec string that cannot be parsed or used."""


@dataclass(frozen=True)
class ArrivalSpec:
    kind: str  # one of KINDS
    rate: float | None = None  # requests/s: poisson and gamma; trace when scaled with @RATE
    cv: float | None = None  # gamma only
    trace_path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "burst":
            return "burst"
        if self.kind == "poisson":
            return f"poisson:{self.rate:g}"
        if self.kind == "gamma":
            return f"gamma:{self.rate:g}:{self.cv:g}"
        return f"trace:{self.trace_path}" + (f"@{self.rate:g}" if self.rate is not None else "")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _positive(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ArrivalSpecError(f"arrival spec {spec!r}: {what} {text!r} is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise ArrivalSpecError(f"arrival spec {spec!r}: {what} must be > 0, got {text}")
    return value


def parse_arrivals(spec: str) -> ArrivalSpec:
    """Parse an arrival spec string (see the module docstring)."""
    usage = "use burst, poisson:RATE, gamma:RATE:CV, trace:FILE or trace:FILE@RATE"
    kind, _, rest = spec.strip().partition(":")
    if kind == "burst":
        if rest:
            raise ArrivalSpecError(f"arrival spec {spec!r}: burst takes no arguments")
        return ArrivalSpec("burst")
    if kind == "poisson":
        parts = rest.split(":")
        if len(parts) != 1 or not parts[0]:
            raise ArrivalSpecError(f"arrival spec {spec!r}: expected poisson:RATE")
        return ArrivalSpec("poisson", rate=_positive(parts[0], "RATE", spec))
    if kind == "gamma":
        parts = rest.split(":")
        if len(parts) != 2:
            raise ArrivalSpecError(f"arrival spec {spec!r}: expected gamma:RATE:CV")
        return ArrivalSpec(
            "gamma", rate=_positive(parts[0], "RATE", spec), cv=_positive(parts[1], "CV", spec)
        )
    if kind == "trace":
        if not rest:
            raise ArrivalSpecError(f"arrival spec {spec!r}: expected trace:FILE[@RATE]")
        # A file name may itself hold '@'; only a trailing @NUMBER is a rate.
        path, at, rate_text = rest.rpartition("@")
        if not at or not _is_number(rate_text):
            path, rate_text = rest, ""
        rate = _positive(rate_text, "RATE", spec) if rate_text else None
        return ArrivalSpec("trace", rate=rate, trace_path=Path(path))
    raise ArrivalSpecError(f"arrival spec {spec!r}: unknown kind {kind!r}; {usage}")


def replay_trace(
    trace: Trace, n: int, target_rate: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times of `n` requests replaying `trace`, and the index of the trace row behind
    each. Longer than the trace, the trace repeats, each pass starting one mean gap after the
    previous one ends. With `target_rate`, time is scaled so that the mean rate of the n
    arrivals ((n - 1) / span) equals it."""
    if n < 0:
        raise ValueError(f"number of requests must be >= 0, got {n}")
    m = len(trace)
    passes = ceil_div(n, m) if n else 0
    period = trace.duration_s + (trace.duration_s / (m - 1) if m > 1 else 1.0)
    idx = np.arange(n) % m
    times = trace.time_s[idx] + period * (np.arange(n) // m)
    if passes and target_rate is not None and n > 1:
        span = times[-1] - times[0]
        if span <= 0:
            raise ArrivalSpecError(
                f"{trace.path}: the first {n} rows share one timestamp; cannot scale to a rate"
            )
        times = times * (((n - 1) / span) / target_rate)
    return times, idx


def arrival_times(
    spec: str | ArrivalSpec, n: int, seed: int, target_rate: float | None = None
) -> np.ndarray:
    """`n` arrival times in seconds (float64, non-decreasing, first at 0), deterministic for a
    seed. `target_rate` sets the mean rate of poisson, gamma and trace arrivals (for a trace
    it is the same as @RATE; giving both with different values is an error)."""
    spec = parse_arrivals(spec) if isinstance(spec, str) else spec
    if n < 0:
        raise ValueError(f"number of requests must be >= 0, got {n}")
    if target_rate is not None and (not np.isfinite(target_rate) or target_rate <= 0):
        raise ArrivalSpecError(f"target rate must be > 0, got {target_rate}")
    if spec.kind == "burst":
        if target_rate is not None:
            raise ArrivalSpecError("burst arrivals have no rate; drop the target rate")
        return np.zeros(n)
    if (
        target_rate is not None
        and spec.kind == "trace"
        and spec.rate is not None
        and spec.rate != target_rate
    ):
        raise ArrivalSpecError(
            f"arrival spec {spec} sets rate {spec.rate:g} but target rate {target_rate:g} given"
        )
    rate = target_rate if target_rate is not None else spec.rate
    if spec.kind == "trace":
        return replay_trace(load_trace(spec.trace_path), n, rate)[0]
    if n == 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    if spec.kind == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n - 1)
    else:
        shape = 1.0 / spec.cv**2  # CV of a gamma is 1/sqrt(shape)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))
