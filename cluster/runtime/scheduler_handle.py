"""The cluster's one scheduler actor: created named and detached (it outlives any one ingress
replica), restarted by Ray when it dies, and found by every ingress under its name."""

from __future__ import annotations

from typing import Any

import ray

from cluster.config import SchedulerConfig
from cluster.runtime.log_setup import LogConfig
from cluster.runtime.names import NAMESPACE, SCHEDULER_ACTOR
from cluster.runtime.scheduler_actor import SchedulerActor
from cluster.runtime.spec import ReplicaSpec


def scheduler_actor_options(detached: bool = True) -> dict[str, Any]:
    """Named, one per cluster; detached so that it outlives any one ingress replica; restarted
    by Ray when it dies (it rebuilds its state, see cluster.runtime.scheduler_actor). Calls in flight at
    a death fail and their callers retry: Ray retrying them would run them twice."""
    opts: dict[str, Any] = {
        "name": SCHEDULER_ACTOR,
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_concurrency": 100_000,
        "max_restarts": -1,
        "max_task_retries": 0,
    }
    if detached:
        opts["lifetime"] = "detached"
    return opts


def get_or_create(
    config: SchedulerConfig,
    replicas: list[ReplicaSpec],
    detached: bool = True,
    logs: LogConfig | None = None,
) -> Any:
    """The cluster's scheduler actor: the existing one if any, else a new one (`logs`: its
    log set-up)."""
    return (
        ray.remote(SchedulerActor)
        .options(**scheduler_actor_options(detached))
        .remote(config, replicas, logs=logs)
    )
