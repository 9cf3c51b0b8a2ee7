"""An engine replica: a Ray actor hosting one engine (cluster.runtime.engines), streaming tokens
for the dispatches the scheduler made and reporting its load and its requests' progress back to
the scheduler actor as numbered `ReplicaReport`s.

Tokens stream from here to the caller (the ingress) through a Ray streaming generator; the
scheduler actor only receives coalesced reports (load, token counts, ends). The replica is
detached: it outlives a scheduler actor that dies, keeps reporting to the restarted one (the
same actor handle), and answers its `snapshot()` so that it can rebuild its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ray

from cluster.events import EngineEvents, FinishReason
from cluster.replicas import ReplicaLoad
from cluster.runtime.engines import ENGINES
from cluster.runtime.log_setup import bind_request, configure_logging
from cluster.runtime.protocol import (
    DispatchState,
    Engine,
    GenerateCall,
    ReplicaInfo,
    ReplicaReport,
    ReplicaSnapshot,
    TokenChunk,
)
from cluster.runtime.spec import ReplicaSpec
from cluster.runtime.tracing import Tracer, carrier

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Active:
    call: GenerateCall
    tokens: int = 0  # produced in this dispatch
    started: bool = False
    preempted: bool = False  # the scheduler ended it (`preempt`): its abort ends it as PREEMPT

    def state(self) -> DispatchState:
        return DispatchState(
            self.call.submit,
            self.call.dispatch_no,
            self.call.generated_before + self.tokens,
            self.started,
        )


class EngineReplica:
    """The Ray actor (wrap with `ray.remote(EngineReplica).options(**spec.actor_options())`).

    `scheduler` is the scheduler actor's handle (None when the replica is used on its own);
    reports go to its `report(ReplicaReport)` method. `tracer`: default, from `spec.tracing`.
    """

    # Token-count-only news is coalesced for this long; starts and ends go out at once.
    REPORT_INTERVAL_S = 0.1

    def __init__(
        self, spec: ReplicaSpec, scheduler: Any = None, tracer: Tracer | None = None
    ) -> None:
        configure_logging(spec.logging, "replica", spec.replica_id)
        self.spec = spec
        self._tracer = tracer or Tracer(spec.tracing, "replica")
        self._scheduler = scheduler
        self._engine: Engine = ENGINES[spec.replica.kind](spec, self._on_step)
        self._info: ReplicaInfo | None = None
        self._pending = EngineEvents(spec.replica_id)
        self._seq = 0  # the number of the last report made
        self._snapshot_seq = 0  # reports up to this one are covered by a snapshot taken
        self._wake: asyncio.Event | None = None
        self._reporter: asyncio.Task | None = None
        self._active: dict[str, _Active] = {}
        self._last_load: ReplicaLoad | None = None  # as last delivered to the scheduler

    async def start(self) -> ReplicaInfo:
        """Start the engine (idempotent); returns its capacity."""
        if self._info is None:
            self._info = await self._engine.start()
            self._wake = asyncio.Event()
            if self._scheduler is not None:
                self._reporter = asyncio.create_task(self._report_loop())
        return self._info

    async def snapshot(self) -> ReplicaSnapshot:
        """What this replica is serving now, for a (re)started scheduler: it supersedes every
        report made so far, so the events not yet delivered are dropped here."""
        info = await self.start()
        self._snapshot_seq = self._seq
        self._pending = EngineEvents(self.spec.replica_id)
        return ReplicaSnapshot(
            self.spec.replica_id,
            self.spec,
            info,
            self.load(),
            self._seq,
            tuple(a.state() for a in self._active.values()),
            ray.get_runtime_context().get_node_id(),
        )

    async def generate(self, call: GenerateCall) -> AsyncIterator[TokenChunk]:
        """Stream `call`'s tokens (call with `.options(num_returns="streaming")`). Cancelling
        the stream (the client went away) aborts the request in the engine."""
        if self._info is None:
            raise RuntimeError(f"replica {self.spec.replica_id} is not started")
        rid = call.request_id
        bind_request(rid)
        where = {
            "rankserve.replica": self.spec.replica_id,
            "rankserve.dispatch_no": call.dispatch_no,
        }
        with self._tracer.span("engine.generate", call.trace_context, where) as span:
            if span.is_recording():  # the engine's own spans (vLLM's) continue this one
                call = dataclasses.replace(call, trace_context=carrier(span))
            active = self._active[rid] = _Active(call)
            reason: FinishReason | None = None
            try:
                async for chunk in self._engine.generate(call):
                    if chunk.finish_reason is FinishReason.ABORT and active.preempted:
                        chunk = dataclasses.replace(chunk, finish_reason=FinishReason.PREEMPT)
                    if chunk.cached_tokens is not None:
                        self._pending.cached[rid] = chunk.cached_tokens
                    if chunk.token_ids:
                        if not active.started:
                            active.started = True
                            self._pending.started.append(rid)
                            self._kick()
                        active.tokens += len(chunk.token_ids)
                        tokens = self._pending.tokens
                        tokens[rid] = tokens.get(rid, 0) + len(chunk.token_ids)
                    if chunk.finish_reason is not None:
                        reason = chunk.finish_reason
                    yield chunk
            except asyncio.CancelledError:
                reason = FinishReason.ABORT
                await self._engine.abort(call.engine_request_id)
                raise
            except Exception as exc:
                self._pending.failed[rid] = f"{type(exc).__name__}: {exc}"
                reason = None
                raise
            finally:
                self._active.pop(rid, None)
                if reason is not None:
                    self._pending.ended[rid] = reason
                elif rid not in self._pending.failed:
                    # The stream was closed early by its consumer (client gone): free the slot.
                    await self._engine.abort(call.engine_request_id)
                    self._pending.ended[rid] = FinishReason.ABORT
                self._kick()
                span.set_attributes(
                    {
                        "gen_ai.usage.output_tokens": active.tokens,
                        "rankserve.finish_reason": reason.value if reason else "failed",
                    }
                )

    async def abort(self, request_id: str) -> None:
        """Abort the request's current dispatch here, if it has one."""
        active = self._active.get(request_id)
        if active is not None:
            await self._engine.abort(active.call.engine_request_id)

    async def preempt(self, request_id: str, dispatch_no: int) -> bool:
        """The scheduler gives this dispatch's slot to another request (cluster.swaps): end it
        now. Its stream keeps the tokens produced so far and ends with PREEMPT (the engine's
        abort comes back as its one last chunk); the caller continues the request at its next
        dispatch. False, changing nothing, when that dispatch no longer runs here: it ended
        meanwhile (its own end stands) or a later one runs (a stale decision)."""
        bind_request(request_id)
        active = self._active.get(request_id)
        if active is None or active.call.dispatch_no != dispatch_no or active.preempted:
            return False
        active.preempted = True
        await self._engine.abort(active.call.engine_request_id)
        logger.info("dispatch %d preempted after %d tokens", dispatch_no, active.tokens)
        return True

    def load(self) -> ReplicaLoad:
        running, waiting, free = self._engine.load()
        total = self._info.total_kv_blocks if self._info else 0
        if not self._active:
            # The engine's last stats may predate its last request's end.
            running, waiting, free = 0, 0, total
        return ReplicaLoad(self.spec.replica_id, running, waiting, free, total)

    def ping(self) -> str:
        return self.spec.replica_id

    def engine_metrics(self) -> str:
        """The Prometheus text of this process's registry, where vLLM keeps its own metrics
        (`vllm:*`); the ingress's GET /metrics passes them on, labelled by replica."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()

    def shutdown(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        self._engine.shutdown()
        self._tracer.shutdown()

    # ---- reporting to the scheduler actor --------------------------------------------------

    def _on_step(self) -> None:
        if self._pending.has_events:
            self._kick()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _take_report(self) -> ReplicaReport:
        events, self._pending = self._pending, EngineEvents(self.spec.replica_id)
        events.load = self.load()
        self._seq += 1
        started = tuple(self._active[rid].state() for rid in events.started if rid in self._active)
        return ReplicaReport(events, self._seq, started)

    async def _report_loop(self) -> None:
        assert self._wake is not None
        unacknowledged: ReplicaReport | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.REPORT_INTERVAL_S)
            self._wake.clear()
            if unacknowledged is not None and unacknowledged.seq <= self._snapshot_seq:
                unacknowledged = None  # a snapshot has covered it
            if unacknowledged is None:
                quiet = not (self._pending.has_events or self._pending.tokens) and not self._active
                if quiet and self.load() == self._last_load:
                    continue
            report = unacknowledged or self._take_report()
            try:
                await self._scheduler.report.remote(report)
                unacknowledged = None
                self._last_load = report.events.load
            except Exception as exc:  # noqa: BLE001 - a scheduler hiccup must not kill the replica
                logger.warning("report %d to the scheduler failed (%s); retrying", report.seq, exc)
                # Sent again as it is, under its number: a call that failed may still have been
                # applied (Ray: "may or may not have been executed"), and the scheduler drops a
                # number it has applied, so its events count once (resent merged into a newer
                # report, they were counted twice: tokens duplicated after a scheduler restart).
                unacknowledged = report
                await asyncio.sleep(self.REPORT_INTERVAL_S)
