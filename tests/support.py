"""What many tests share: where the data is, builders of the core's objects and of engine
events. (Fixtures built on these are in conftest.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.clock import VirtualClock
from cluster.config import PolicyConfig, SchedulerConfig
from cluster.events import EngineEvents, FinishReason
from cluster.replicas import ReplicaLoad
from cluster.request import Request
from cluster.scheduler import Scheduler
from cluster.workload.prompts import DEMO_PROMPT_FILE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATA = Path(__file__).resolve().parent / "data"
# 300 GPTeacher prompts with GPT-4's answers (MIT): the demo prompt file the package ships
FIXTURE = DEMO_PROMPT_FILE
# 240 GPTeacher prompts with answer lengths, for predictor training (data/predictor/README.md)
PREDICTOR_FIXTURE = DATA / "predictor" / "gpteacher_sample.jsonl"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} absent (shared data sets not mounted)"
)


def make_request(
    rid: str, prompt: int = 16, output: int = 8, arrival: float = 0.0, **kw
) -> Request:
    """A request whose true length (and max_tokens) is `output`."""
    return Request(rid, prompt, output, arrival, output_tokens=output, **kw)


def make_scheduler(policy: str = "fcfs", **kw) -> tuple[Scheduler, VirtualClock]:
    clock = VirtualClock()
    return Scheduler(SchedulerConfig(policy=PolicyConfig(name=policy), **kw), clock), clock


def events(
    replica: str = "a",
    *,
    started: tuple[str, ...] | list[str] = (),
    tokens: dict[str, int] | None = None,
    ended: dict[str, FinishReason] | None = None,
    failed: dict[str, str] | None = None,
    preempted: tuple[str, ...] | list[str] = (),
    load: ReplicaLoad | None = None,
) -> EngineEvents:
    return EngineEvents(
        replica,
        load,
        list(preempted),
        list(started),
        dict(tokens or {}),
        dict(ended or {}),
        dict(failed or {}),
    )


def run_through(
    sched: Scheduler, rid: str, tokens: int, reason: FinishReason = FinishReason.LENGTH
) -> list[Request]:
    """The request's replica reports it started, produced `tokens` and ended with `reason`."""
    replica = sched.get(rid).replica_id or "a"
    return sched.apply(events(replica, started=[rid], tokens={rid: tokens}, ended={rid: reason}))


def report_load(sched: Scheduler, replica: str, free: int, total: int, running: int = 0) -> None:
    sched.apply(events(replica, load=ReplicaLoad(replica, running, 0, free, total)))
