"""Test helpers for the scheduling core and the simulated engine.

`AuditedEngine` is the real SimulatedEngine that checks its invariants after every step (KV
blocks conserved, batch limits kept, the preemption victim the lowest-priority request) and
keeps a ledger of the tokens each request received. `Ledger.engine_factory` is what
`simulate(..., engine_factory=...)` takes to audit whole simulations step by step.
`drive()` runs a Scheduler and engines by hand, as a host of the core does; `assert_conserved`
checks a drained simulation against its ledger.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cluster.clock import VirtualClock
from cluster.config import EngineConfig
from cluster.request import RequestState
from cluster.scheduler import Scheduler
from cluster.sim.engine import SimulatedEngine, StepResult
from cluster.sim.simulator import SimulationResult
from cluster.sim.step_time import StepTimeModel, load_profile
from cluster.workload.workload import WorkloadItem

STEP_TIME = StepTimeModel(load_profile("a100-llama3-8b"))


@dataclass
class Ledger:
    """What the audited engines of one run saw."""

    engines: list[AuditedEngine] = field(default_factory=list)
    tokens: Counter = field(default_factory=Counter)  # request id -> tokens sampled for it
    finishes: Counter = field(default_factory=Counter)  # request id -> dispatches that ended it
    preempted: Counter = field(default_factory=Counter)  # request id -> times preempted
    reacquired: Counter = field(default_factory=Counter)  # request id -> readmissions after one
    steps: int = 0

    def assert_drained(self) -> None:
        """After a run that drained: no engine holds work or a KV block."""
        for e in self.engines:
            assert not e.has_work(), f"{e.replica_id} still has work"
            assert e.kv.free == e.kv.num_blocks, f"{e.replica_id} leaked KV blocks"

    def engine_factory(
        self, replica_id: str, config: EngineConfig, step_time: StepTimeModel, num_kv_blocks: int
    ) -> AuditedEngine:
        """For `simulate(..., engine_factory=ledger.engine_factory)`."""
        engine = AuditedEngine(self, replica_id, config, step_time, num_kv_blocks)
        self.engines.append(engine)
        return engine


class AuditedEngine(SimulatedEngine):
    def __init__(self, ledger: Ledger, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = ledger

    def step(self) -> StepResult:
        before = {id(s): s.num_computed for s in self.running}
        result = super().step()
        ledger, cfg, kv = self.ledger, self.config, self.kv
        ledger.steps += 1

        # A shared block is held once, however many sequences reference it.
        private = sum(s.table.private for s in self.running)
        references = Counter(k for s in self.running for k in s.table.keys)
        assert 0 <= kv.free <= kv.num_blocks
        assert all(s.table.private >= 0 for s in self.running)
        assert kv.free + private + len(references) == kv.num_blocks, (
            "KV blocks neither free nor held by a request"
        )
        assert all(kv.references(k) == n for k, n in references.items()), "reference count off"
        assert all(len(set(s.table.keys)) == len(s.table.keys) for s in self.running)
        assert 0 <= kv.cached <= kv.free, "more cached blocks than free ones"
        if not cfg.enable_prefix_caching:
            assert kv.cached == 0
        assert all(s.blocks == 0 for s in result.preempted + result.done)
        assert len(self.running) <= cfg.max_num_seqs
        assert result.batch_size <= cfg.max_num_seqs

        # Tokens computed this step: progress of those running before (a victim's tokens were
        # given back, its progress reset) plus the progress of those admitted now beyond what
        # they found in the prefix cache.
        preempted = {id(s) for s in result.preempted}
        started = {id(s) for s in result.started}
        progressed = {id(s): s for s in self.running + result.done + result.started}
        tokens = sum(
            s.num_computed - (s.cached_tokens if k in started else before[k])
            for k, s in progressed.items()
            if k not in preempted and (k in before or k in started)
        )
        assert tokens <= cfg.max_num_batched_tokens
        assert result.prefill_tokens <= tokens
        if result.batch_size:
            assert tokens >= result.batch_size and result.duration > 0

        if result.preempted:
            assert not result.started, "admitted new work in a step that preempted"
            survivors = self.running + result.done
            if survivors:
                assert min(s.order for s in result.preempted) > max(s.order for s in survivors)
            for s in result.preempted:
                ledger.preempted[s.request.request_id] += 1
        done = {id(s) for s in result.done}
        for s in result.started:
            rid = s.request.request_id
            assert s.blocks > 0 or id(s) in done, f"{rid} admitted without KV blocks"
            if ledger.preempted[rid] > ledger.reacquired[rid]:
                ledger.reacquired[rid] += 1
        for s in result.sampled:
            rid = s.request.request_id
            ledger.tokens[rid] += 1
            assert ledger.tokens[rid] <= s.request.target_tokens, f"{rid} got too many tokens"
        for s in result.done:
            rid = s.request.request_id
            assert s.new_tokens == s.max_new
            if ledger.tokens[rid] == s.request.target_tokens:
                ledger.finishes[rid] += 1
        return result


def make_engine(
    ledger: Ledger,
    replica_id: str = "r0",
    *,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 512,
    num_kv_blocks: int = 64,
    long_prefill_token_threshold: int = 0,
    enable_prefix_caching: bool = False,
    host_offload_gib: float = 0.0,
) -> AuditedEngine:
    config = EngineConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        num_kv_blocks=num_kv_blocks,
        long_prefill_token_threshold=long_prefill_token_threshold,
        enable_prefix_caching=enable_prefix_caching,
        host_offload_gib=host_offload_gib,
        host_link_gb_s=25.0 if host_offload_gib else None,
    )
    engine = AuditedEngine(ledger, replica_id, config, STEP_TIME, num_kv_blocks)
    ledger.engines.append(engine)
    return engine


def register(scheduler: Scheduler, engine: SimulatedEngine) -> None:
    scheduler.add_replica(
        engine.replica_id, engine.config.max_num_seqs, engine.kv.num_blocks, engine.kv.block_size
    )


def drive(
    scheduler: Scheduler,
    clock: VirtualClock,
    engines: dict[str, SimulatedEngine],
    max_rounds: int | None = None,
    tick: float = 0.01,
) -> int:
    """Schedule and step every engine in lock step (each round `tick` virtual seconds) until
    nothing is left to do, or for `max_rounds` rounds. Returns the rounds run."""
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        for d in scheduler.schedule():
            engines[d.replica_id].add(d)
        for end in scheduler.take_early_ends():
            engines[end.replica_id].end_early(end.request_id)
        active = [e for e in engines.values() if e.has_work()]
        if not active:
            break
        clock.advance_to(clock.now() + tick)
        for e in active:
            scheduler.apply(e.events(e.step()))
        rounds += 1
    return rounds


def assert_conserved(items: list[WorkloadItem], result: SimulationResult, ledger: Ledger) -> None:
    """Every request finished exactly once with exactly its output tokens, nothing leaked."""
    ledger.assert_drained()
    assert result.stopped_by == "drained" and result.unfinished == 0
    assert result.metrics.completions == len(items) and result.metrics.failed == 0
    want = {it.request_id: it.output_tokens for it in items}
    assert {r.request_id for r in result.requests} == set(want)
    for r in result.requests:
        rid = r.request_id
        assert r.state is RequestState.FINISHED
        assert r.generated == want[rid] == ledger.tokens[rid]
        assert ledger.finishes[rid] == 1
        assert r.arrival_time <= r.first_token_time <= r.finish_time
        assert r.last_token_time == r.finish_time
    assert sum(t.output_tokens for t in result.timings) == sum(want.values())
    assert result.engine_preemptions == sum(ledger.preempted.values())
    assert sum(r.num_preemptions for r in result.requests) == result.engine_preemptions
    assert ledger.reacquired == ledger.preempted  # every preempted request came back
