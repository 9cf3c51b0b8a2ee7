"""Fixtures shared across the tests (plain builders are in tests/support.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster on loopback for the module's tests (no dashboard, 2 CPUs)."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
