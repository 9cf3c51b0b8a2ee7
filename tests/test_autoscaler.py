"""The autoscaling policy (cluster.autoscaler), the scheduler's drain, and the simulator's
autoscaled fleet."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from cluster.autoscaler import Autoscaler, FleetLoad, plan_change
from cluster.clock import VirtualClock
from cluster.config import AutoscalingConfig, EngineConfig, PolicyConfig, SchedulerConfig
from cluster.request import Request
from cluster.scheduler import Scheduler
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.workload import WorkloadItem

CFG = AutoscalingConfig(
    enabled=True,
    min_replicas=1,
    max_replicas=6,
    target_wait_s=5.0,
    target_ongoing_requests=4.0,
    upscale_delay_s=10.0,
    downscale_delay_s=30.0,
    interval_s=5.0,
)


def load(now, queued=0, finished=0, serving=2, starting=0, ongoing=0) -> FleetLoad:
    return FleetLoad(now, queued, finished, serving, starting, ongoing)


def test_a_queue_that_lasts_scales_up_after_the_delay() -> None:
    a = Autoscaler(CFG, 2)
    # 2 replicas finish 1 request/s each; 20 queued: 10 s of wait, 4 replicas bring it to 5 s.
    changes = [a.observe(load(t, queued=20, finished=2 * t)) for t in range(0, 15, 5)]
    assert changes == [None, None, 4]
    assert a.estimated_wait_s == 10.0


def test_a_short_burst_changes_nothing() -> None:
    a = Autoscaler(CFG, 2)
    assert a.observe(load(0, queued=100, finished=0)) is None
    assert a.observe(load(5, queued=0, finished=10, ongoing=8)) is None
    assert a.observe(load(10, queued=0, finished=20, ongoing=8)) is None
    assert a.target == 2


def test_scales_down_only_after_the_long_delay_and_not_below_min() -> None:
    a = Autoscaler(CFG, 4)
    results = [a.observe(load(t, serving=4, ongoing=0)) for t in range(0, 35, 5)]
    assert results[:-1] == [None] * 6 and results[-1] == CFG.min_replicas


def test_starting_replicas_count_as_there() -> None:
    a = Autoscaler(CFG, 2)
    for t in range(0, 15, 5):
        a.observe(load(t, ongoing=16, serving=2, starting=2))
    assert a.target == 4  # 16 ongoing / 4 per replica; the 2 starting make 4 already


@given(
    st.lists(
        st.tuples(st.integers(0, 500), st.integers(0, 50), st.integers(0, 200)),
        min_size=1,
        max_size=40,
    )
)
def test_target_stays_within_bounds_and_moves_only_after_a_delay(steps) -> None:
    a = Autoscaler(CFG, 2)
    finished, last_change = 0, 0.0
    for i, (queued, done, ongoing) in enumerate(steps):
        now = 5.0 * i
        finished += done
        new = a.observe(load(now, queued, finished, a.target, 0, ongoing))
        assert CFG.min_replicas <= a.target <= CFG.max_replicas
        if new is not None:
            assert now - last_change >= min(CFG.upscale_delay_s, CFG.downscale_delay_s)
            last_change = now


def test_plan_change() -> None:
    assert plan_change(5, ["a", "b"], 1, ["c"]).undrain == ("c",)
    assert plan_change(5, ["a", "b"], 1, ["c"]).start == 1
    assert plan_change(1, ["a", "b", "c"], 0, []).drain == ("b", "c")
    assert plan_change(2, ["a", "b"], 0, []) == plan_change(2, ["a", "b"], 0, [])


def test_a_draining_replica_gets_no_new_request() -> None:
    s = Scheduler(SchedulerConfig(policy=PolicyConfig(name="fcfs")), VirtualClock())
    s.add_replica("a", 8, 1000, 16)
    s.add_replica("b", 8, 1000, 16)
    s.drain("b")
    for i in range(4):
        s.submit(Request(f"r{i}", prompt_tokens=10, max_tokens=5, arrival_time=0.0))
    assert {d.replica_id for d in s.schedule()} == {"a"}
    assert s.is_idle("b") and s.ongoing() == 4 and s.draining == ["b"]


def _burst_then_quiet() -> list[WorkloadItem]:
    items = []
    for i in range(400):
        t = i * 0.05 if i < 300 else 300.0 + i
        items.append(WorkloadItem(f"r{i}", t, None, 500, 200, None, None, None, None))
    return items


def test_the_simulated_fleet_grows_under_a_burst_and_shrinks_back_losing_nothing() -> None:
    auto = dataclasses.replace(CFG, max_replicas=4, target_ongoing_requests=8.0)
    config = SimulationConfig(
        SchedulerConfig(policy=PolicyConfig(name="fcfs"), autoscaling=auto),
        EngineConfig(max_num_seqs=16),
        load_profile("a100-llama3-8b"),
        replicas=1,
        replica_startup_s=20.0,
    )
    result = simulate(_burst_then_quiet(), config)
    held = [n for _, n in result.extra["replica_timeline"]]
    assert max(held) > 1 and held[-1] < max(held)
    assert result.metrics.completions == 400 and result.unfinished == 0
    fixed = simulate(
        _burst_then_quiet(),
        dataclasses.replace(config, scheduler=SchedulerConfig(policy=PolicyConfig(name="fcfs"))),
    )
    assert result.extra["replica_seconds"] > fixed.extra["replica_seconds"]
    assert result.metrics.e2e_latency_s.mean < fixed.metrics.e2e_latency_s.mean


FORECAST = dataclasses.replace(CFG, rate_window_s=10.0, forecast_s=20.0, max_replicas=50)


def rising(t: float) -> int:
    """Arrivals so far when the rate is 10 + t per second."""
    return round(10 * t + t * t / 2)


def test_the_arrival_forecast_carries_the_rates_trend_forward() -> None:
    a = Autoscaler(FORECAST, 2)
    forecasts = [a.arrival_forecast(load(t, finished=rising(t))) for t in range(0, 42, 2)]
    assert forecasts[:10] == [None] * 10  # two windows are needed for a trend
    # At 40 s: the rate 20 s ahead, 10 + 60.
    assert forecasts[-1] == 70.0


def test_a_rising_load_is_asked_for_ahead_and_a_falling_one_let_go_of() -> None:
    def wish(cfg: AutoscalingConfig, arrived) -> int:
        """The wish at 40 s: 40 requests in the fleet, finishing as fast as they arrive."""
        a = Autoscaler(cfg, 10)
        for t in range(0, 42, 2):
            w = a.wish(load(t, finished=arrived(t) - 40, ongoing=40, serving=10))
        return w

    steady = lambda t: 20 * t  # noqa: E731
    rising = lambda t: 10 * t + t * t // 4  # noqa: E731  (the rate 10 + t / 2)
    falling = lambda t: 40 * t - t * t // 4  # noqa: E731  (the rate 40 - t / 2)
    now_only = dataclasses.replace(FORECAST, forecast_s=0.0)
    assert [wish(now_only, f) for f in (steady, rising, falling)] == [10] * 3  # 40 / 4
    # Rising: at the rate of 60 s (40/s) against that finishing now (27.5/s), 58 requests.
    assert wish(FORECAST, rising) == 15
    # Falling: 10/s at 60 s against 22.5/s, 18 requests.
    assert wish(FORECAST, falling) == 5
    assert wish(FORECAST, steady) == 10
