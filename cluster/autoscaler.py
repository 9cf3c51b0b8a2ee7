"""How many engine replicas the global queue needs: a policy on the scheduler's own figures,
shared by the simulator and the live scheduler actor (each starts, drains and removes replicas
its own way, see `plan_change`).

Each look makes a wish, the larger of two counts: the replicas that would each hold
`target_ongoing_requests` of the requests dispatched or running now (a replica's tokens come
slower the more it holds), and, when the wait a request arriving now is estimated to see in the
global queue (queued requests over the rate at which the fleet finishes requests) is above
`target_wait_s`, the replicas that would bring it to the target at the rate each finishes
requests now. While requests queue the wish is never below the fleet it has. Each wish must
last: a change is made when every wish of the last `upscale_delay_s` (`downscale_delay_s`)
wanted at least (at most) that many; replicas started that have not arrived count as there,
so a slow start does not start more."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cluster.config import AutoscalingConfig


@dataclass(frozen=True, slots=True)
class FleetLoad:
    """What the host knows at one instant."""

    now: float
    queued: int
    finished: int  # requests finished so far (the rate comes from its differences)
    serving: int  # replicas up and taking requests (not draining)
    starting: int  # replicas started that are not up yet
    ongoing: int  # requests dispatched to or running on the serving replicas


@dataclass(frozen=True, slots=True)
class ScalePlan:
    """What the host does to go to a new replica count."""

    undrain: tuple[str, ...] = ()  # draining replicas taken back (cheaper than starting one)
    start: int = 0  # new replicas to start
    drain: tuple[str, ...] = ()  # replicas to drain, then remove


class Autoscaler:
    def __init__(self, config: AutoscalingConfig, replicas: int) -> None:
        self.config = config
        self.target = min(max(replicas, config.min_replicas), config.max_replicas)
        self._finished: deque[tuple[float, int]] = deque()
        self._admitted: deque[tuple[float, int]] = deque()  # two rate windows of arrivals
        self._wishes: deque[tuple[float, int]] = deque()
        self._since: float | None = None  # when the wishes began (the last change)
        self.estimated_wait_s = 0.0

    def rate(self, load: FleetLoad) -> float:
        """Requests finished per second over the last `rate_window_s`."""
        window = self._finished
        window.append((load.now, load.finished))
        while len(window) > 1 and window[1][0] <= load.now - self.config.rate_window_s:
            window.popleft()
        t0, n0 = window[0]
        return (load.finished - n0) / (load.now - t0) if load.now > t0 else 0.0

    def arrival_forecast(self, load: FleetLoad) -> float | None:
        """The arrival rate expected `forecast_s` ahead: the rate of the last `rate_window_s`
        and its change from the window before, carried forward (not below 0); None until
        the looks span two windows. Arrivals are what entered the fleet's count (finished,
        queued or ongoing), so the host need not count them."""
        w = self.config.rate_window_s
        window = self._admitted
        window.append((load.now, load.finished + load.queued + load.ongoing))
        while len(window) > 1 and window[1][0] <= load.now - 2 * w:
            window.popleft()
        t0, n0 = window[0]
        if load.now - t0 < 2 * w:
            return None
        # The count a window ago: the last look at or before it.
        t1, n1 = max((p for p in window if p[0] <= load.now - w), key=lambda p: p[0])
        recent = (window[-1][1] - n1) / (load.now - t1)
        before = (n1 - n0) / (t1 - t0) if t1 > t0 else recent
        # Each window's rate is that of its middle, (now - t0) / 2 apart; the forecast is from
        # the recent window's middle to `forecast_s` ahead of now.
        trend = (recent - before) / ((load.now - t0) / 2)
        return max(recent + trend * (self.config.forecast_s + (load.now - t1) / 2), 0.0)

    def wish(self, load: FleetLoad) -> int:
        """The replica count this instant asks for (before the delays)."""
        cfg = self.config
        rate = self.rate(load)
        if load.queued:
            self.estimated_wait_s = load.queued / rate if rate > 0 else math.inf
        else:
            self.estimated_wait_s = 0.0
        ongoing = float(load.ongoing)
        arrivals = self.arrival_forecast(load) if cfg.forecast_s > 0 else None
        if arrivals is not None and rate > 0:
            # Little's law: the requests in the fleet are the arrival rate times the time each
            # spends there (ongoing / rate now); at the rate expected once a replica asked for
            # now is up, they are this many.
            ongoing = load.ongoing * arrivals / rate
        wanted = math.ceil(ongoing / cfg.target_ongoing_requests)
        if load.queued:
            wanted = max(wanted, load.serving + load.starting)
        if self.estimated_wait_s > cfg.target_wait_s:
            if rate > 0 and load.serving:
                per_replica = rate / load.serving
                needed = math.ceil(load.queued / (per_replica * cfg.target_wait_s))
                wanted = max(wanted, needed, load.serving + 1)
            else:
                wanted = cfg.max_replicas
        return min(max(wanted, cfg.min_replicas), cfg.max_replicas)

    def observe(self, load: FleetLoad) -> int | None:
        """Take in one instant; the new replica count when it changes, else None."""
        cfg = self.config
        wish = self.wish(load)
        if self._since is None:
            self._since = load.now
        self._wishes.append((load.now, wish))
        horizon = load.now - max(cfg.upscale_delay_s, cfg.downscale_delay_s)
        while self._wishes and self._wishes[0][0] < horizon:
            self._wishes.popleft()
        new = None
        up = self._lasting(load.now, cfg.upscale_delay_s, min)
        down = self._lasting(load.now, cfg.downscale_delay_s, max)
        if up is not None and up > self.target:
            new = up
        elif down is not None and down < self.target:
            new = down
        if new is not None:
            self.target = new
            self._wishes.clear()
            self._since = load.now
        return new

    def _lasting(
        self, now: float, delay: float, pick: Callable[[Iterable[int]], int]
    ) -> int | None:
        """The count every wish of the last `delay` seconds agrees on (the least of them going
        up, the most going down); None until wishes span that long."""
        if self._since is None or now - self._since < delay:
            return None
        return pick(w for t, w in self._wishes if t >= now - delay)


def plan_change(target: int, serving: list[str], starting: int, draining: list[str]) -> ScalePlan:
    """The steps to `target` replicas from `serving` (oldest first), `starting` ones on their
    way and `draining` ones: going up takes back draining replicas first, then starts new
    ones; going down drains the newest serving replicas."""
    have = len(serving) + starting
    if target > have:
        undrain = tuple(draining[: target - have])
        return ScalePlan(undrain=undrain, start=target - have - len(undrain))
    if target < have:
        excess = min(have - target, len(serving))
        return ScalePlan(drain=tuple(serving[len(serving) - excess :]))
    return ScalePlan()
