from pathlib import Path

import numpy as np
import pytest

from cluster.workload.arrivals import (
    ArrivalSpec,
    ArrivalSpecError,
    arrival_times,
    parse_arrivals,
)


def _rate(t: np.ndarray) -> float:
    return (len(t) - 1) / (t[-1] - t[0])


def test_parse_valid_specs():
    assert parse_arrivals("burst") == ArrivalSpec("burst")
    assert parse_arrivals("poisson:2.5") == ArrivalSpec("poisson", rate=2.5)
    assert parse_arrivals("gamma:4:3") == ArrivalSpec("gamma", rate=4.0, cv=3.0)
    assert parse_arrivals("trace:a/b.csv") == ArrivalSpec("trace", trace_path=Path("a/b.csv"))
    assert parse_arrivals("trace:x.csv@12") == ArrivalSpec(
        "trace", rate=12.0, trace_path=Path("x.csv")
    )
    # an '@' inside a file name is not a rate
    assert parse_arrivals("trace:runs/v@2/t.csv").trace_path == Path("runs/v@2/t.csv")
    for text in ("burst", "poisson:2.5", "gamma:4:3", "trace:x.csv@12"):
        assert str(parse_arrivals(text)) == text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown kind"),
        ("uniform:3", "unknown kind 'uniform'"),
        ("burst:5", "burst takes no arguments"),
        ("poisson", "expected poisson:RATE"),
        ("poisson:fast", "RATE 'fast' is not a number"),
        ("poisson:0", "RATE must be > 0"),
        ("poisson:-1", "RATE must be > 0"),
        ("poisson:1:2", "expected poisson:RATE"),
        ("gamma:3", "expected gamma:RATE:CV"),
        ("gamma:3:0", "CV must be > 0"),
        ("gamma:inf:1", "RATE must be > 0"),
        ("trace:", "expected trace:FILE"),
        ("trace:x.csv@0", "RATE must be > 0"),
    ],
)
def test_parse_errors_are_clear(spec, message):
    with pytest.raises(ArrivalSpecError, match=message):
        parse_arrivals(spec)


def test_burst():
    assert np.array_equal(arrival_times("burst", 5, seed=0), np.zeros(5))
    with pytest.raises(ArrivalSpecError, match="no rate"):
        arrival_times("burst", 5, seed=0, target_rate=3)


@pytest.mark.parametrize("spec", ["poisson:8", "gamma:8:1", "gamma:8:4", "gamma:8:0.5"])
def test_mean_rate_and_determinism(spec):
    n = 20_000
    t = arrival_times(spec, n, seed=3)
    assert t[0] == 0 and np.all(np.diff(t) >= 0) and len(t) == n
    assert _rate(t) == pytest.approx(8, rel=0.05)
    assert np.array_equal(t, arrival_times(spec, n, seed=3))
    assert not np.array_equal(t, arrival_times(spec, n, seed=4))


@pytest.mark.parametrize(
    ("cv", "spec"), [(1.0, "poisson:5"), (3.0, "gamma:5:3"), (0.5, "gamma:5:0.5")]
)
def test_coefficient_of_variation(cv, spec):
    gaps = np.diff(arrival_times(spec, 50_000, seed=1))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)


def test_target_rate_overrides_synthetic_rate():
    t = arrival_times("poisson:1", 20_000, seed=0, target_rate=50)
    assert _rate(t) == pytest.approx(50, rel=0.05)


def test_zero_and_negative_counts():
    assert len(arrival_times("poisson:3", 0, seed=0)) == 0
    with pytest.raises(ValueError, match=">= 0"):
        arrival_times("poisson:3", -1, seed=0)
