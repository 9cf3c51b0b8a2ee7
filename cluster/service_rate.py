"""How fast the cluster can serve: tokens and finished requests per second of the time in the
last `window_s` seconds during which requests waited in the queue. Admission control turns a
queue into an expected wait with it.

Only backlogged time counts: while the queue is empty the engines serve what arrives, so the
rate then measures the demand, not the capacity (a trickle of 2-token requests would otherwise
make the next burst look like minutes of work, and have it refused)."""

from __future__ import annotations

from collections import deque


class ServiceRate:
    """Rates over the backlogged time of the last `window_s` seconds; None while that time is
    under `min_busy_s`, or the completions counted in it fewer than `min_completions` (a rate
    taken over a moment says nothing). The bar is low because a burst into a cold cluster is
    admitted unbounded until the rate is known."""

    def __init__(
        self, window_s: float = 20.0, min_busy_s: float = 0.1, min_completions: int = 3
    ) -> None:
        if window_s <= 0 or not 0 < min_busy_s <= window_s or min_completions < 1:
            raise ValueError("need 0 < min_busy_s <= window_s and min_completions >= 1")
        self.window_s = window_s
        self.min_busy_s = min_busy_s
        self.min_completions = min_completions
        self._events: deque[tuple[float, float, int, int]] = deque()  # (time, busy, tokens, done)
        self._busy = 0.0
        self._tokens = 0
        self._completions = 0
        self._last: tuple[float, bool] | None = None  # the previous record: time, backlogged

    def record(
        self, now: float, tokens: int, completions: int = 0, backlogged: bool = True
    ) -> None:
        """Work reported at `now`, with whether requests were waiting in the queue. The time
        since the previous record counts when they were waiting at both records (an idle
        spell before a burst is not the burst's)."""
        last, self._last = self._last, (now, backlogged)
        if last is not None and last[1] and backlogged:
            self._events.append((now, now - last[0], tokens, completions))
            self._busy += now - last[0]
            self._tokens += tokens
            self._completions += completions
        self._trim(now)

    def tokens_per_s(self, now: float) -> float | None:
        self._trim(now)
        return self._per_busy_s(self._tokens, 1)

    def completions_per_s(self, now: float) -> float | None:
        self._trim(now)
        return self._per_busy_s(self._completions, self.min_completions)

    def _per_busy_s(self, count: int, at_least: int) -> float | None:
        return count / self._busy if count >= at_least and self._busy >= self.min_busy_s else None

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            _, busy, tokens, completions = self._events.popleft()
            self._busy -= busy
            self._tokens -= tokens
            self._completions -= completions
