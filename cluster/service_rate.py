"""How fast the cluster is serving now: tokens and finished requests per second over a sliding
window of the engines' reports. Admission control turns a queue into an expected wait with it."""

from __future__ import annotations

from collections import deque


class ServiceRate:
    """Rates over the reports of the last `window_s` seconds, taken over the span those reports
    cover (an idle spell before a burst does not dilute the burst's rate); None while they cover
    less than `min_span_s` (a rate taken over a moment says nothing)."""

    def __init__(self, window_s: float = 20.0, min_span_s: float = 1.0) -> None:
        if window_s <= 0 or not 0 < min_span_s <= window_s:
            raise ValueError("need 0 < min_span_s <= window_s")
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._events: deque[tuple[float, int, int]] = deque()  # (time, tokens, completions)
        self._tokens = 0
        self._completions = 0

    def record(self, now: float, tokens: int, completions: int = 0) -> None:
        if tokens <= 0 and completions <= 0:
            return
        self._events.append((now, tokens, completions))
        self._tokens += tokens
        self._completions += completions
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            _, tokens, completions = self._events.popleft()
            self._tokens -= tokens
            self._completions -= completions

    def _span(self, now: float) -> float | None:
        if not self._events:
            return None
        span = now - self._events[0][0]
        return span if span >= self.min_span_s else None

    def tokens_per_s(self, now: float) -> float | None:
        self._trim(now)
        span = self._span(now)
        return self._tokens / span if span and self._tokens else None

    def completions_per_s(self, now: float) -> float | None:
        self._trim(now)
        span = self._span(now)
        return self._completions / span if span and self._completions else None
