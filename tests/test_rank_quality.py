"""Live ranking quality: the scheduler measures its predictor's scores against the lengths the
engines actually produced, over a sliding window of finished requests."""

from __future__ import annotations

import pytest

from cluster.clock import VirtualClock
from cluster.config import PolicyConfig, SchedulerConfig
from cluster.rank_quality import MIN_SAMPLES, RankQualityMonitor
from cluster.request import Request
from cluster.scheduler import Scheduler
from tests.support import run_through


def serve(sched: Scheduler, answers: list[tuple[str, int, float | None, float | None, int]]):
    """Run (id, produced tokens, score, predicted tokens, max_tokens) requests to the end."""
    for rid, _, score, predicted, cap in answers:
        sched.submit(Request(rid, 16, cap, 0.0, score=score, predicted_tokens=predicted))
    dispatched = sched.schedule()
    assert len(dispatched) == len(answers)
    for rid, produced, *_ in answers:
        run_through(sched, rid, produced)


def make_scheduler(window: int = 1000) -> Scheduler:
    config = SchedulerConfig(policy=PolicyConfig(name="fcfs"), rank_quality_window=window)
    sched = Scheduler(config, VirtualClock())
    sched.add_replica("r0", max_num_seqs=1000, total_kv_blocks=100_000, block_size=16)
    return sched


def test_tau_follows_the_produced_lengths_and_capped_or_unscored_answers_are_left_out():
    sched = make_scheduler()
    answers = [(f"q{i}", 10 + i, float(i), 2.0 * (10 + i), 500) for i in range(MIN_SAMPLES)]
    answers.append(("capped", 500, -100.0, 1.0, 500))  # stopped at max_tokens: length unknown
    answers.append(("unscored", 3, None, None, 500))
    serve(sched, answers)
    quality = sched.rank_quality.summary()
    assert quality.samples == MIN_SAMPLES
    assert quality.kendall_tau == 1.0  # the capped answer would have broken the order
    assert quality.median_length_ratio == 2.0
    assert sched.stats().finished == MIN_SAMPLES + 2


def test_a_reversed_ranking_reads_minus_one_and_too_few_answers_read_none():
    sched = make_scheduler()
    serve(sched, [(f"q{i}", 10 + i, float(-i), None, 500) for i in range(MIN_SAMPLES - 1)])
    few = sched.rank_quality.summary()
    assert (few.samples, few.kendall_tau, few.median_length_ratio) == (MIN_SAMPLES - 1, None, None)
    serve(sched, [("last", 10 + MIN_SAMPLES, float(-MIN_SAMPLES), None, 500)])
    assert sched.rank_quality.summary().kendall_tau == -1.0


def test_the_window_keeps_only_the_most_recent_answers():
    sched = make_scheduler(window=MIN_SAMPLES)
    # an old, perfectly reversed batch, then a perfectly ordered one that replaces it
    serve(sched, [(f"old{i}", 10 + i, float(-i), None, 500) for i in range(MIN_SAMPLES)])
    serve(sched, [(f"new{i}", 10 + i, float(i), None, 500) for i in range(MIN_SAMPLES)])
    quality = sched.rank_quality.summary()
    assert (quality.window, quality.samples, quality.kendall_tau) == (
        MIN_SAMPLES,
        MIN_SAMPLES,
        1.0,
    )


def test_a_window_too_small_to_measure_is_refused():
    with pytest.raises(ValueError, match="window"):
        RankQualityMonitor(MIN_SAMPLES - 1)
