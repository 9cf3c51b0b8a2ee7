"""The simulator's engine (cluster.sim.engine), stepped in real time: each step sleeps for the
duration the calibrated step-time model gives it. For trying the whole serving path (scheduler,
streaming, failover) on machines that cannot hold a model. Its tokens are placeholders (id 0,
text " tok")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from cluster.dispatch import Dispatch
from cluster.events import FinishReason
from cluster.request import Request
from cluster.runtime.protocol import GenerateCall, ReplicaInfo, TokenChunk
from cluster.runtime.spec import ReplicaSpec
from cluster.sim.engine import SimulatedEngine
from cluster.sim.simulator import resolve_engine
from cluster.sim.step_time import StepTimeModel, load_profile


class SimulatedRealtimeEngine:
    TOKEN_TEXT = " tok"
    IDLE_STEP_S = 0.005

    def __init__(self, spec: ReplicaSpec, on_step: Callable[[], None]) -> None:
        self.spec = spec
        self._on_step = on_step
        profile = load_profile(spec.replica.sim_profile)
        self.config = resolve_engine(spec.engine, profile)
        self._model = StepTimeModel(profile)
        self._engine: SimulatedEngine | None = None
        self._queues: dict[str, asyncio.Queue[TokenChunk]] = {}
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.Task | None = None

    async def start(self) -> ReplicaInfo:
        self._engine = SimulatedEngine(
            self.spec.replica_id, self.config, self._model, self.config.num_kv_blocks
        )
        self._wake = asyncio.Event()
        self._loop = asyncio.create_task(self._run())
        return ReplicaInfo(
            self.spec.replica_id,
            self.config.max_num_seqs,
            self.config.num_kv_blocks,
            self.config.block_size,
            self.config.max_model_len,
            self.config.max_num_batched_tokens,
        )

    async def generate(self, call: GenerateCall) -> AsyncIterator[TokenChunk]:
        engine_id = call.engine_request_id
        self._seq += 1
        request = Request(engine_id, len(call.prompt_token_ids), call.max_new_tokens, 0.0)
        request.seq = self._seq
        queue: asyncio.Queue[TokenChunk] = asyncio.Queue()
        self._queues[engine_id] = queue
        self._engine.add(
            Dispatch(request, self.spec.replica_id, call.priority, call.max_new_tokens, call.final)
        )
        self._wake.set()
        try:
            while True:
                chunk = await queue.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            self._queues.pop(engine_id, None)

    async def _run(self) -> None:
        while True:
            if not self._engine.has_work():
                self._wake.clear()
                await self._wake.wait()
            result = self._engine.step()
            # An empty step (nothing fits in the KV cache yet) must not spin the event loop.
            await asyncio.sleep(result.duration or self.IDLE_STEP_S)
            done = {id(seq) for seq in result.done}
            for seq in result.sampled:
                queue = self._queues.get(seq.request.request_id)
                if queue is None:
                    continue
                reason = None
                if id(seq) in done:
                    reason = FinishReason.LENGTH if seq.final else FinishReason.SLICE
                queue.put_nowait(TokenChunk([0], self.TOKEN_TEXT, reason))
            self._on_step()

    async def abort(self, engine_request_id: str) -> None:
        self._engine.abort(engine_request_id)
        queue = self._queues.get(engine_request_id)
        if queue is not None:
            queue.put_nowait(TokenChunk([], "", FinishReason.ABORT))

    def load(self) -> tuple[int, int, int]:
        load = self._engine.load()
        return load.num_running, load.num_waiting, load.free_kv_blocks

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
