"""A simulated engine replica that schedules like one vLLM v1 engine with the priority policy.

Per step, as vLLM v1's scheduler does: running requests first, in admission order, each taking
what it still needs (a decode token, or the next prefill chunk) from the step's token budget;
when the KV cache cannot grow, the lowest-priority running request is preempted by recompute
(its blocks freed, its tokens recomputed when it is readmitted). Only if nothing was preempted,
waiting requests are admitted in priority order while slots, budget and blocks last (chunked
prefill). With prefix caching on, a (re)admitted request starts from the known blocks of its
prefix, cached or shared with requests running now (`cluster.sim.kv_cache`), and computes only
the rest; the full blocks it schedules are shared from then on. The step's duration comes from
the calibrated step-time model.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from cluster.config import EngineConfig
from cluster.dispatch import Dispatch
from cluster.events import EngineEvents, FinishReason
from cluster.prefix_blocks import block_keys
from cluster.replicas import ReplicaLoad
from cluster.request import Request
from cluster.sim.host_tier import HostKVTier
from cluster.sim.kv_cache import BlockTable, KVBlockPool
from cluster.sim.step_time import StepTimeModel


@dataclass(slots=True, eq=False)
class Sequence:
    """The engine's state of one dispatched request."""

    request: Request
    priority: int
    base_len: int  # prompt + tokens generated before this dispatch
    max_new: int  # tokens this dispatch may generate
    final: bool  # the dispatch's end is the request's end (else a slice)
    new_tokens: int = 0
    num_computed: int = 0
    table: BlockTable = field(default_factory=BlockTable)
    admitted: bool = False  # running since its last (re)admission
    ended_early: bool = False  # the scheduler cut the dispatch short (`end_early`)
    cached_tokens: int = 0  # found in the prefix cache (or host tier) at its last admission
    computed_before: bool = False  # its context was computed once (a resume recomputes it)

    @property
    def blocks(self) -> int:
        return self.table.size

    @property
    def num_tokens(self) -> int:
        return self.base_len + self.new_tokens

    @property
    def order(self) -> tuple[int, int]:
        return (self.priority, self.request.seq)


@dataclass(slots=True)
class StepResult:
    duration: float
    sampled: list[Sequence] = field(default_factory=list)  # one new token each
    started: list[Sequence] = field(default_factory=list)  # admitted (or readmitted) this step
    preempted: list[Sequence] = field(default_factory=list)
    done: list[Sequence] = field(default_factory=list)  # dispatch ended (finished or slice end)
    batch_size: int = 0
    prefill_tokens: int = 0


class SimulatedEngine:
    def __init__(
        self, replica_id: str, config: EngineConfig, step_time: StepTimeModel, num_kv_blocks: int
    ) -> None:
        self.replica_id = replica_id
        self.config = config
        self.step_time = step_time
        self.kv = KVBlockPool(num_kv_blocks, config.block_size)
        self.host: HostKVTier | None = None
        if config.host_offload_gib:
            if config.host_link_gb_s is None:
                raise ValueError("host offload needs host_link_gb_s (see resolve_engine)")
            self.host = HostKVTier.sized(
                config.host_offload_gib,
                config.block_size,
                step_time.profile.kv_bytes_per_token,
                config.host_link_gb_s,
            )
        self.running: list[Sequence] = []
        self._waiting: list[tuple[int, int, Sequence]] = []
        self._by_id: dict[str, Sequence] = {}
        self.steps = 0
        self.busy_time = 0.0
        self.preemptions = 0
        # With prefix caching: context tokens of every (re)admission, and how many of them the
        # cache held.
        self.admitted_tokens = 0
        self.cached_tokens = 0
        # Prefill tokens computed again for context computed once before (resumes after a
        # slice end or preemption, readmissions after the engine's own preemptions).
        self.recomputed_tokens = 0

    def add(self, dispatch: Dispatch) -> None:
        request = dispatch.request
        if request.request_id in self._by_id:
            raise ValueError(f"{request.request_id} is already on replica {self.replica_id}")
        context = request.prompt_tokens + request.generated
        if context + 1 > self.config.max_model_len:
            raise ValueError(f"{request.request_id}: {context} tokens exceed max_model_len")
        # Its last token is sampled from context + max_new - 1 computed tokens; a dispatch the
        # whole pool cannot hold would preempt itself forever (vLLM refuses such a max_model_len).
        peak_blocks = self.kv.blocks_for(context + dispatch.max_new_tokens - 1)
        if peak_blocks > self.kv.num_blocks:
            raise ValueError(
                f"{request.request_id}: {dispatch.max_new_tokens} new tokens after {context} "
                f"need {peak_blocks} KV blocks; replica {self.replica_id} has {self.kv.num_blocks}"
            )
        seq = Sequence(request, dispatch.priority, context, dispatch.max_new_tokens, dispatch.final)
        seq.computed_before = request.generated > 0
        self._by_id[request.request_id] = seq
        heapq.heappush(self._waiting, (seq.priority, request.seq, seq))

    def abort(self, request_id: str) -> None:
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return
        if seq in self.running:
            self.running.remove(seq)
        else:
            self._waiting = [e for e in self._waiting if e[2] is not seq]
            heapq.heapify(self._waiting)
        self._free(seq)

    def end_early(self, request_id: str) -> bool:
        """End the request's dispatch after its next token (the scheduler preempts it): the
        engine reports it ended with PREEMPT, its freed blocks stay in the prefix cache. False
        when the dispatch ends by then anyway (or is not here)."""
        seq = self._by_id.get(request_id)
        if seq is None or seq.new_tokens + 1 >= seq.max_new:
            return False
        seq.max_new = seq.new_tokens + 1
        seq.final = False
        seq.ended_early = True
        return True

    def _free(self, seq: Sequence) -> None:
        """Release the sequence's blocks (its shared ones stay cached once nobody holds them);
        the host tier keeps a copy of its computed full blocks."""
        if self.host is not None and self.config.enable_prefix_caching:
            self.host.store(block_keys(seq.request, seq.num_computed, self.kv.block_size))
        self.kv.release(seq.table)

    def _commit(self, seq: Sequence, scheduled: int) -> None:
        """With prefix caching, share the full blocks this step computes from now on, as
        vLLM registers them when it schedules them."""
        if self.config.enable_prefix_caching:
            full = (seq.num_computed + scheduled) // self.kv.block_size
            self.kv.commit(seq.table, seq.request, full)

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(
            self.replica_id, len(self.running), len(self._waiting), self.kv.free, self.kv.num_blocks
        )

    def events(self, result: StepResult) -> EngineEvents:
        """A step's outcome in the core's vocabulary, with the load as of now."""
        return EngineEvents(
            self.replica_id,
            load=self.load(),
            preempted=[s.request.request_id for s in result.preempted],
            started=[s.request.request_id for s in result.started],
            tokens={s.request.request_id: 1 for s in result.sampled},
            ended={s.request.request_id: _end_reason(s) for s in result.done},
            cached={
                s.request.request_id: s.cached_tokens for s in result.started if s.cached_tokens
            },
        )

    def _preempt(self, seq: Sequence, result: StepResult) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.num_computed = 0
        seq.admitted = False  # its readmission starts it running again
        heapq.heappush(self._waiting, (seq.priority, seq.request.seq, seq))
        result.preempted.append(seq)
        self.preemptions += 1

    def step(self) -> StepResult:
        """Form one batch, advance every scheduled request, and return what happened and how
        long it took. The caller applies the outcome at now + duration."""
        result = StepResult(0.0)
        budget = self.config.max_num_batched_tokens
        chunk_cap = self.config.long_prefill_token_threshold or budget
        kv = self.kv
        scheduled: list[tuple[Sequence, int]] = []

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            want = min(seq.num_tokens - seq.num_computed, chunk_cap, budget)
            while True:
                if kv.try_grow(seq.table, seq.num_computed + want):
                    self._commit(seq, want)
                    break
                victim = max(self.running, key=lambda s: s.order)
                if victim is not seq:
                    for k, (s, n) in enumerate(scheduled):
                        if s is victim:  # it ran earlier in this step: give its budget back
                            budget += n
                            del scheduled[k]
                            break
                    if self.running.index(victim) < i:
                        i -= 1
                self._preempt(victim, result)
                if victim is seq:
                    want = 0
                    break
            if want == 0:
                continue
            scheduled.append((seq, want))
            budget -= want
            i += 1

        load_s = 0.0  # host-tier loads of the admissions
        if not result.preempted:
            waiting = self._waiting
            caching = self.config.enable_prefix_caching
            while waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = waiting[0][2]
                hits = kv.cached_prefix(seq.request, seq.num_tokens) if caching else []
                loaded = 0
                if self.host is not None:
                    loaded = self.host.hits(seq.request, len(hits), seq.num_tokens, kv.block_size)
                computed = (len(hits) + loaded) * kv.block_size  # waiting ones hold no blocks
                want = min(seq.num_tokens - computed, chunk_cap, budget)
                if not kv.try_grow(seq.table, computed + want, hits):
                    break
                heapq.heappop(waiting)
                seq.num_computed = seq.cached_tokens = computed
                self._commit(seq, want)
                if loaded:
                    load_s += self.host.load(loaded)
                if caching:
                    self.admitted_tokens += seq.num_tokens
                    self.cached_tokens += computed
                if seq.computed_before:
                    self.recomputed_tokens += seq.num_tokens - 1 - computed
                seq.computed_before = True
                self.running.append(seq)
                if not seq.admitted:
                    seq.admitted = True
                    result.started.append(seq)
                scheduled.append((seq, want))
                budget -= want

        if not scheduled:
            return result

        prefill = decode = ctx = sq = pctx = nprefill = 0
        for seq, n in scheduled:
            if n == 1 and seq.num_computed >= seq.base_len:
                decode += 1
                ctx += seq.num_computed + 1
            else:
                prefill += n
                sq += n * n
                pctx += n * seq.num_computed
                nprefill += 1
            seq.num_computed += n
            if seq.num_computed == seq.num_tokens:
                seq.new_tokens += 1
                result.sampled.append(seq)
                if seq.new_tokens >= seq.max_new:
                    result.done.append(seq)
        for seq in result.done:
            self.running.remove(seq)
            self._free(seq)
            del self._by_id[seq.request.request_id]

        result.duration = load_s + self.step_time.step_seconds(
            prefill, decode, ctx, sq, pctx, nprefill
        )
        result.batch_size = len(scheduled)
        result.prefill_tokens = prefill
        self.steps += 1
        self.busy_time += result.duration
        return result


def _end_reason(seq: Sequence) -> FinishReason:
    if seq.final:
        return FinishReason.LENGTH
    return FinishReason.PREEMPT if seq.ended_early else FinishReason.SLICE
