"""The simulator prints exactly what it printed before the restructuring of issue 9 (and after
any later change that keeps scheduling decisions): benchmarks/simulate_golden.py's matrix of
every policy, with and without slices, over routings, mixed profiles, a small KV cache,
starvation, the shipped predictor and the Azure trace."""

from __future__ import annotations

import pytest

from benchmarks import simulate_golden
from tests.support import needs_shared

GOLDEN = simulate_golden.read_golden()
CASES = simulate_golden.cases()


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=needs_shared) if simulate_golden.needs_shared(n) else n for n in CASES],
)
def test_simulate_json_is_unchanged(name):
    rows = simulate_golden.run_case(CASES[name])
    assert simulate_golden.canonical(rows) == simulate_golden.canonical(GOLDEN[name])
