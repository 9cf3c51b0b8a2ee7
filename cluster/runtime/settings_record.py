"""The scheduler actor's settings, recorded where its death does not take them: Ray's GCS
key-value store.

Ray restarts a dead actor with the arguments it was first created with, here the first
deployment's. Without a record a restarted scheduler would go back to them: a policy switched,
admission bounds changed, replicas scaled down or redeployed since would all be undone (and
replicas removed since started again). The record holds what the scheduler runs by now: its
scheduling settings, the deployment it applied last (so that an ingress re-applying it changes
nothing) and the fleet's replica specs. A scheduler created afresh writes its own; only a
restarted one reads it.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

import ray
from ray.experimental import internal_kv

from cluster.config import SchedulerConfig
from cluster.runtime.names import NAMESPACE, SCHEDULER_ACTOR
from cluster.runtime.spec import ReplicaSpec

logger = logging.getLogger(__name__)

KEY = f"{SCHEDULER_ACTOR}-settings"


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    config: SchedulerConfig  # as applied by now (deployments and switches since)
    deployed: tuple[SchedulerConfig, list[ReplicaSpec]]  # the deployment applied last
    replicas: list[ReplicaSpec]  # the fleet's, with every scale since


def settings_at_start(config: SchedulerConfig, replicas: list[ReplicaSpec]) -> SchedulerSettings:
    """The settings to start with: the record's if Ray restarted this actor and it has one
    that this code can read, else the constructor's (which the caller then records)."""
    given = SchedulerSettings(config, (config, replicas), replicas)
    if not ray.get_runtime_context().was_current_actor_reconstructed:
        return given
    try:
        stored = internal_kv._internal_kv_get(KEY, namespace=NAMESPACE)
        settings = pickle.loads(stored) if stored is not None else None
    except Exception as exc:  # noqa: BLE001 - an unreadable record must not stop the restart
        logger.warning(
            "settings record unreadable (%s): restarting with the first deployment's", exc
        )
        return given
    if not isinstance(settings, SchedulerSettings):
        logger.warning("no settings record: restarting with the first deployment's")
        return given
    logger.info(
        "restarted with the recorded settings: policy %s, %d replicas",
        settings.config.policy.name,
        len(settings.replicas),
    )
    return settings


def record(settings: SchedulerSettings) -> None:
    """Write the record; a failure is logged, not raised (serving goes on, and only a restart
    would miss it)."""
    try:
        internal_kv._internal_kv_put(KEY, pickle.dumps(settings), namespace=NAMESPACE)
    except Exception as exc:  # noqa: BLE001
        logger.warning("settings not recorded (a restart would not keep them): %s", exc)


def forget() -> None:
    """Drop the record (the service is shut down)."""
    try:
        internal_kv._internal_kv_del(KEY, namespace=NAMESPACE)
    except Exception as exc:  # noqa: BLE001
        logger.warning("settings record not removed: %s", exc)
