"""Calibrated step-time model of one vLLM engine step, and its named profiles.

A step's time follows from what the step computes (prefill tokens, decode sequences, context
tokens read by attention) with coefficients fitted from the Vidur profiling tables
(`scripts/fit_step_time.py`, see `docs/step_time_model.md`). `step_seconds` is called once
per simulated step, millions of times, so it is plain float arithmetic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

PROFILES_PATH = Path(__file__).with_name("profiles.json")
MEASURED_DIR = Path(__file__).with_name("profiles")
GIB = 1024**3


def kv_blocks_from_memory(
    gpu_memory_gib: float,
    gpu_memory_utilization: float,
    weight_bytes: int,
    reserve_gib: float,
    kv_bytes_per_token: int,
    block_size: int,
) -> int:
    """KV blocks one engine gets, as vLLM sizes its cache.

    vLLM takes `gpu_memory_utilization` of the device, subtracts the weights and the peak of
    its profiling forward pass (activations plus non-torch memory), and fills the rest with
    blocks of `block_size` tokens.
    """
    free = gpu_memory_gib * GIB * gpu_memory_utilization - weight_bytes - reserve_gib * GIB
    if free <= 0:
        raise ValueError(
            f"the weights ({weight_bytes / GIB:.1f} GiB) and reserve ({reserve_gib} GiB) do not "
            f"fit in {gpu_memory_utilization} x {gpu_memory_gib} GiB"
        )
    return int(free // (kv_bytes_per_token * block_size))


@dataclass(frozen=True, slots=True)
class StepTimeProfile:
    """Coefficients (milliseconds) of the step-time model and the engine's memory facts.

    t_ms = max(floor_ms, intercept_ms + per_token_ms * (P + D))
           + decode_ctx_ms * K + decode_seq_ms * D
           + prefill_sq_ms * S + prefill_ctx_ms * X + prefill_token_ms * P
           + cpu_base_ms + cpu_per_seq_ms * (D + num_prefills) + lm_head_ms
    with P prefill tokens, D decode sequences, K their summed context, S = sum of chunk^2 and
    X = sum of chunk * cached tokens over the prefill chunks.
    """

    name: str
    description: str
    source: str
    floor_ms: float
    intercept_ms: float
    per_token_ms: float
    decode_ctx_ms: float
    decode_seq_ms: float
    prefill_sq_ms: float
    prefill_ctx_ms: float
    prefill_token_ms: float
    cpu_base_ms: float
    cpu_per_seq_ms: float
    lm_head_ms: float
    num_kv_blocks: int
    block_size: int
    max_model_len: int
    num_layers: int
    tensor_parallel: int
    gpu_memory_gib: float
    gpu_memory_utilization: float
    weight_bytes: int
    reserve_gib: float
    kv_bytes_per_token: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, float):
                continue
            # intercept_ms may be negative: the floor carries the small steps then.
            if not math.isfinite(value) or (value < 0.0 and f.name != "intercept_ms"):
                raise ValueError(f"profile {self.name!r}: {f.name} must be >= 0, got {value}")
        if self.num_kv_blocks < 1 or self.block_size < 1 or self.max_model_len < 1:
            raise ValueError(
                f"profile {self.name!r}: num_kv_blocks, block_size and max_model_len must be >= 1"
            )

    @classmethod
    def from_dict(cls, data: dict) -> StepTimeProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown step-time profile fields: {', '.join(unknown)}")
        values = dict(data)
        if "num_kv_blocks" not in values:
            try:
                values["num_kv_blocks"] = kv_blocks_from_memory(
                    values["gpu_memory_gib"],
                    values["gpu_memory_utilization"],
                    values["weight_bytes"],
                    values["reserve_gib"],
                    values["kv_bytes_per_token"],
                    values["block_size"],
                )
            except KeyError as e:
                raise ValueError(f"profile needs num_kv_blocks or the memory field {e}") from None
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(f"step-time profile lacks fields: {', '.join(missing)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _shipped() -> dict[str, dict]:
    """Fitted profiles (profiles.json) and measured ones (profiles/NAME.json, e.g. cpu-tiny)."""
    shipped = json.loads(PROFILES_PATH.read_text())["profiles"]
    for path in sorted(MEASURED_DIR.glob("*.json")):
        shipped.setdefault(path.stem, json.loads(path.read_text()))
    return shipped


def available_profiles() -> list[str]:
    """Names of the profiles shipped in `cluster/sim/`."""
    return sorted(_shipped())


def load_profile(name_or_path: str) -> StepTimeProfile:
    """A shipped profile by name, or the one profile in a JSON file at a path."""
    shipped = _shipped()
    if name_or_path in shipped:
        return StepTimeProfile.from_dict(shipped[name_or_path])
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"step-time profile file {path} does not exist")
        data = json.loads(path.read_text())
        if "profiles" in data:
            raise ValueError(f"{path} holds several profiles; pass one profile's name instead")
        return StepTimeProfile.from_dict(data)
    raise ValueError(
        f"unknown step-time profile {name_or_path!r}; known: {', '.join(sorted(shipped))} "
        "(or a path to a JSON file with one profile)"
    )


class StepTimeModel:
    """Time of one engine step from what it computes."""

    __slots__ = (
        "profile",
        "_floor",
        "_intercept",
        "_per_token",
        "_decode_ctx",
        "_decode_seq",
        "_prefill_sq",
        "_prefill_ctx",
        "_prefill_token",
        "_fixed",
        "_per_seq",
    )

    def __init__(self, profile: StepTimeProfile) -> None:
        self.profile = profile
        # Stored in seconds on plain attributes so that step_seconds does no conversions.
        ms = 1e-3
        self._floor = profile.floor_ms * ms
        self._intercept = profile.intercept_ms * ms
        self._per_token = profile.per_token_ms * ms
        self._decode_ctx = profile.decode_ctx_ms * ms
        self._decode_seq = profile.decode_seq_ms * ms
        self._prefill_sq = profile.prefill_sq_ms * ms
        self._prefill_ctx = profile.prefill_ctx_ms * ms
        self._prefill_token = profile.prefill_token_ms * ms
        self._fixed = (profile.cpu_base_ms + profile.lm_head_ms) * ms
        self._per_seq = profile.cpu_per_seq_ms * ms

    def step_seconds(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        decode_context_tokens: int,
        prefill_sq_tokens: int = 0,
        prefill_ctx_tokens: int = 0,
        num_prefills: int = 0,
    ) -> float:
        """Seconds one step takes; 0 for an empty step.

        prefill_sq_tokens is the sum of chunk^2 over the step's prefill chunks, and
        prefill_ctx_tokens the sum of chunk * tokens already cached for that request.
        """
        tokens = prefill_tokens + decode_seqs
        if tokens <= 0:
            return 0.0
        linear = self._intercept + self._per_token * tokens
        if linear < self._floor:
            linear = self._floor
        return (
            linear
            + self._decode_ctx * decode_context_tokens
            + self._decode_seq * decode_seqs
            + self._prefill_sq * prefill_sq_tokens
            + self._prefill_ctx * prefill_ctx_tokens
            + self._prefill_token * prefill_tokens
            + self._fixed
            + self._per_seq * (decode_seqs + num_prefills)
        )
