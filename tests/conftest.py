"""Fixtures shared across the tests (plain builders are in tests/support.py)."""

from __future__ import annotations

import logging

import pytest

from cluster.runtime.log_setup import PACKAGES


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


@pytest.fixture
def our_loggers():
    """An EngineReplica sets up our loggers (log_setup): put them back afterwards."""
    saved = {n: logging.getLogger(n) for n in PACKAGES}
    state = {n: (list(lg.handlers), lg.level, lg.propagate) for n, lg in saved.items()}
    yield
    for name, (handlers, level, propagate) in state.items():
        lg = saved[name]
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
